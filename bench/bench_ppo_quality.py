"""Benchmark: what PPO did to the SFT model, on held-out questions (issue 6's quality figures).

For every held-out question, asked ``--samples`` times through the chat template at temperature
1 with the same seeds, the SFT model and the PPO model each write a reply. Printed:

* the scoreboard of both (answer, false-statement and rudeness rates with 95 % intervals, mean
  rubric score) and the reward model's mean score of their replies;
* how often the noise-free rubric prefers the PPO reply to the SFT reply of the same question and
  sample (wins, ties, losses);
* the KL of the PPO model to the SFT model on PPO's own replies (nats per reply, at temperature
  1: the sum over the reply's tokens of log pi_ppo - log pi_sft);
* the default PPO run's time, from the ``ppo`` stage's metadata, or from a fresh build with
  ``--build`` (into a temporary folder; the stage itself is not touched).

Run: ``python bench/bench_ppo_quality.py --threads 2`` (about a minute once the stages exist;
``--build`` adds the PPO run, about 3 minutes). Nothing else should run when timing.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench_reward import parse_value  # the same --set syntax (this folder is on sys.path)
from rlhf_kit import ppo, reward
from rlhf_kit.artifacts import read_metadata
from rlhf_kit.stages import ensure_stage
from rlhf_kit.evaluate import CHAT, first_line, format_prompt, judge_replies, reply_kl, rubric_preference
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.sampling import generate
from rlhf_kit.world import World


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--samples", type=int, default=4, help="replies per held-out question")
    parser.add_argument("--build", action="store_true", help="time a fresh default PPO build")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="with --build: change a PPOConfig field, e.g. --set kl_coef=0.1")
    parser.add_argument("--reward", help="with --build: a reward model folder instead of the "
                        "reward stage (it also scores the replies)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
          f"threads, torch {torch.__version__}")
    sft_dir = ensure_stage("sft")
    reward_dir = Path(args.reward) if args.reward else ensure_stage("reward")
    results: dict = {"threads": torch.get_num_threads(), "samples_per_question": args.samples}
    if args.build:
        changes = {name: parse_value(text) for name, text in (i.split("=", 1) for i in args.set)}
        config = ppo.PPOConfig(**changes)
        ppo_dir = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
        metadata = ppo.build_ppo(ppo_dir, config, sft=sft_dir, reward=reward_dir, progress=True)
        results["build_seconds"] = metadata["seconds"]
    else:
        ppo_dir = ensure_stage("ppo")
        metadata = read_metadata(ppo_dir)
        results["build_seconds"] = metadata.get("seconds")
    results["config"] = metadata["config"]
    final = metadata["final"]
    results["training_final"] = {k: final[k] for k in ("ppo/score", "ppo/kl", "ppo/rubric_score")
                                 if k in final}

    world = World(seed=read_metadata(sft_dir).get("seed", 0))
    tokenizer = load_tokenizer(sft_dir)
    questions = [q for q in world.questions("heldout") for _ in range(args.samples)]
    prompts = [format_prompt(q, tokenizer, CHAT) for q in questions]
    sft, policy = load_model(sft_dir), load_model(ppo_dir)
    reward_model = load_model(reward_dir, kind="reward")
    reports, replies = {}, {}
    start = time.perf_counter()
    for name, model in (("SFT", sft), ("PPO", policy)):
        out = generate(model, tokenizer, prompts, max_new_tokens=metadata["config"]["max_new_tokens"],
                       temperature=1.0, seed=0)
        replies[name] = [first_line(c) for c in out.completions]
        reports[name] = judge_replies(world, questions, replies[name], name)
        scores = reward.score(reward_model, tokenizer, [q.text for q in questions], replies[name])
        reports[name].reward_score = scores.mean().item()
        if name == "PPO":
            results["kl_to_sft_per_reply"] = reply_kl(policy, sft, tokenizer, out).mean().item()
    results["evaluation_seconds"] = time.perf_counter() - start

    n = len(questions)
    preference = rubric_preference(reports["PPO"], reports["SFT"])
    results["rubric_preference"] = {"ppo_wins": preference.wins / n, "ties": preference.ties / n,
                                    "sft_wins": preference.losses / n,
                                    "ppo_wins_of_decided": preference.win_rate, "pairs": n}
    results["scoreboard"] = [{**r.row(), "reward-model score": r.reward_score,
                              "intervals": r.intervals} for r in reports.values()]

    print(f"PPO run: {results['build_seconds']:.1f} s" if results["build_seconds"] else "PPO run: n/a")
    print(f"{'model':5s} {'answer':>8s} {'false':>8s} {'rude':>8s} {'rubric':>8s} {'RM score':>9s}")
    for r in reports.values():
        print(f"{r.name:5s} {r.answer_rate:8.3f} {r.false_rate:8.3f} {r.rude_rate:8.3f} "
              f"{r.rubric_score:8.3f} {r.reward_score:9.3f}")
    pref = results["rubric_preference"]
    print(f"rubric prefers PPO over SFT: {pref['ppo_wins']:.3f} of {n} pairs (ties {pref['ties']:.3f}, "
          f"SFT {pref['sft_wins']:.3f}; of the decided pairs {pref['ppo_wins_of_decided']:.3f}); "
          f"KL to SFT {results['kl_to_sft_per_reply']:.2f} nats per reply")
    for q, a, b in list(zip(questions, replies["SFT"], replies["PPO"]))[:: max(1, n // 8)]:
        print(f"  {q.text}\n    SFT: {a}\n    PPO: {b}")
    print("RESULT " + json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
