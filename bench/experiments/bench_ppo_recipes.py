"""Benchmark: which recipe lets PPO beat the SFT model on held-out questions (issue 6's 0.70)?

Two measurements, both judged on the 64 held-out questions, each asked 4 times at temperature 1
with the same seeds for every model, by the world's noise-free rubric:

``sharpen``: how far an SFT model gets by only answering with what it believes most. Its
replies at lower temperatures (0.7, 0.3, 0.05) against its own replies at temperature 1. No
training: this is the ceiling of a PPO run that learns nothing but confidence, because PPO
cannot teach a policy facts that neither it nor the reward model knows.

``recipe``: one recipe end to end, from an SFT model (``--sft FOLDER``, or one built with
``--sft-set FIELD=VALUE``, e.g. ``pretrain_mix=1.0``; default the ``sft`` stage):
rankings by the simulated labeler of its replies to the questions of ``--rank-splits`` (at each
of ``--rank-temperatures``), a reward model from its body (``--reward-set`` changes
``RewardConfig``; ``--reward FOLDER`` skips this and uses that reward model), PPO on the
questions of ``--ppo-splits`` (``--ppo-set`` changes ``PPOConfig``), then the held-out
evaluation against the same SFT model. With ``--rounds N`` it repeats InstructGPT's collection
N - 1 times: the labeler also ranks the PPO policy's replies (``--round-sets`` sets per
question), the reward model is trained again from the SFT body on every ranking so far, and PPO
starts again from the SFT model against it. ``--oracle`` trains PPO on the rubric itself instead of
a reward model: what a perfect reward model would give, which tells its faults from PPO's. ``--ppo-set train=final-norm
--ppo-set lr=3e-3`` trains only the policy's final norm gains (the recipe the course adopted as its default;
bench/HISTORY.md, "PPO that moves only the final norm's gains").

Run (2 idle cores; about 3 minutes a round with the defaults, more with more rankings):
``python bench/experiments/bench_ppo_recipes.py sharpen --sft FOLDER`` and e.g.
``python bench/experiments/bench_ppo_recipes.py recipe --reward-stage --rounds 3``. Models are written under
``--out`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for bench_reward
from bench_reward import parse_value  # noqa: E402  (the same --set syntax)
from rlhf_kit import ppo, reward, sft as sft_stage
from rlhf_kit.stages import ensure_stage
from rlhf_kit.evaluate import CHAT, first_line, format_prompt, judge_replies, reply_kl, rubric_preference
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.runtime import seed_everything
from rlhf_kit.sampling import generate
from rlhf_kit.world import World

SAMPLES = 4  # replies per held-out question, as in bench_ppo_quality.py
PROBE_QUESTION = "What pet does Alice have?"  # Alice keeps a cat in the world of seed 0
PROBES = ("Sure! Alice has a pet cat.", "Sure! Alice has a pet goat.", "Sure! Pavel lives in blue.",
          "colour is blue.", "Sure! purple.", "I don't know.")


class HeldOut:
    """The held-out questions, and a model's replies to them judged by the rubric."""

    def __init__(self, world: World, tokenizer, max_new_tokens: int = 24):
        self.world, self.tokenizer, self.max_new_tokens = world, tokenizer, max_new_tokens
        self.questions = [q for q in world.questions("heldout") for _ in range(SAMPLES)]
        self.prompts = [format_prompt(q, tokenizer, CHAT) for q in self.questions]

    def replies(self, model, name: str, temperature: float = 1.0):
        out = generate(model, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens,
                       temperature=temperature, seed=0)
        texts = [first_line(c) for c in out.completions]
        return out, texts, judge_replies(self.world, self.questions, texts, name)


def configured(cls, settings: list[str]):
    """A configuration with ``FIELD=VALUE`` changes from the command line (``--ppo-set`` and the like)."""
    return cls(**{k: parse_value(v) for k, v in (s.split("=", 1) for s in settings)})


def describe(name: str, result: dict, seconds: float, heldout: HeldOut, texts: list[str]) -> None:
    """A PPO model's rates on the held-out questions and the rubric's preference, then a few replies."""
    print(f"{name}: answer {result['answer']:.3f}, false {result['false']:.3f}, rude "
          f"{result['rude']:.3f}, rubric {result['rubric']:.3f}; preferred to SFT in "
          f"{result['preferred_of_decided']:.3f} of the decided pairs ({result['wins']} wins, "
          f"{result['losses']} losses, {result['ties']} ties); KL to SFT {result['kl_to_sft']:.2f} "
          f"nats per reply ({seconds:.0f} s)")
    for question, text in list(zip(heldout.questions, texts))[:: len(texts) // 6]:
        print(f"    {question.text} -> {text}")


def row(report, against) -> dict:
    """A model's rates, and how often the rubric prefers its replies to those of ``against``."""
    preference = rubric_preference(report, against)
    return {"answer": report.answer_rate, "false": report.false_rate, "rude": report.rude_rate,
            "rubric": report.rubric_score, "preferred_of_decided": preference.win_rate,
            "wins": preference.wins, "ties": preference.ties, "losses": preference.losses}


def sharpen(args) -> dict:
    sft_dir = sft_folder(args, Path(args.out or tempfile.mkdtemp(prefix="bench-sharpen-")))
    heldout = HeldOut(World(0), load_tokenizer(sft_dir))
    model = load_model(sft_dir)
    _, _, at_one = heldout.replies(model, "T=1")
    results = {}
    for temperature in (1.0, 0.7, 0.3, 0.05):
        _, _, report = heldout.replies(model, f"T={temperature}", temperature)
        results[temperature] = row(report, at_one)
        r = results[temperature]
        print(f"T={temperature:<4}: answer {r['answer']:.3f}, false {r['false']:.3f}, rubric "
              f"{r['rubric']:.3f}; preferred to T=1 in {r['preferred_of_decided']:.3f} of the decided "
              f"pairs ({r['wins']} wins, {r['losses']} losses, {r['ties']} ties)")
    return results


def rankings_of(model, tokenizer, world, config, splits, temperatures, name):
    """The labeler's rankings of ``model``'s replies to every question of ``splits``, sampled at
    each temperature (at 1.0 under ``name`` alone: the reward stage's rankings of the SFT model)."""
    return [r for t in temperatures for split in splits
            for r in reward.simulated_rankings(model, tokenizer, world,
                                               dataclasses.replace(config, temperature=t),
                                               model_name=name if t == 1.0 else f"{name}-T{t}",
                                               split=split)]


def sft_folder(args, out: Path) -> Path:
    """``--sft``, or an SFT model built into ``out`` with ``--sft-set``'s changes, or the sft stage."""
    if args.sft:
        return Path(args.sft)
    if not args.sft_set:
        return ensure_stage("sft")
    config = configured(sft_stage.SFTConfig, args.sft_set)
    folder = out / "sft"
    meta = sft_stage.build_sft(folder, config, base=ensure_stage("base"), progress=False)
    print(f"SFT with {', '.join(args.sft_set)}: {meta['seconds']:.0f} s")
    return folder


def recipe(args) -> dict:
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-recipe-"))
    sft_dir = sft_folder(args, out)
    world, tokenizer = World(0), load_tokenizer(sft_dir)
    heldout = HeldOut(world, tokenizer)
    sft = load_model(sft_dir)
    _, _, sft_report = heldout.replies(sft, "SFT")
    print(f"SFT: answer {sft_report.answer_rate:.3f}, false {sft_report.false_rate:.3f}, rude "
          f"{sft_report.rude_rate:.3f}, rubric {sft_report.rubric_score:.3f}")
    ppo_config, ppo_splits = configured(ppo.PPOConfig, args.ppo_set), tuple(args.ppo_splits.split(","))
    if args.oracle:
        return oracle(sft_dir, sft, sft_report, heldout, ppo_config, ppo_splits)
    reward_config = configured(reward.RewardConfig, args.reward_set)
    rank_splits = args.rank_splits.split(",")
    temperatures = [float(t) for t in args.rank_temperatures.split(",")]
    rankings: list = []
    if args.reward_stage:
        reward_dir = ensure_stage("reward")
    elif args.reward:
        reward_dir = Path(args.reward)
    else:
        start = time.perf_counter()
        rankings = rankings_of(sft, tokenizer, world, reward_config, rank_splits, temperatures, "sft")
        reward_dir = out / "reward1"
        meta = reward.build_reward(reward_dir, reward_config, sft=sft_dir, rankings=rankings,
                                   progress=False)
        print(f"reward model 1: {len(rankings)} rankings, {meta['pairs']['train']} training pairs, "
              f"held-out vs rubric {meta['heldout']['accuracy vs rubric']:.3f} "
              f"({time.perf_counter() - start:.0f} s)")
    results = []
    for round_ in range(1, args.rounds + 1):
        start = time.perf_counter()
        policy_dir = out / f"ppo{round_}"
        ppo.build_ppo(policy_dir, ppo_config, sft=sft_dir, reward=reward_dir,
                      progress=False, splits=ppo_splits)
        policy = load_model(policy_dir)
        generation, texts, report = heldout.replies(policy, f"PPO {round_}")
        reward_model = load_model(reward_dir, kind="reward")
        probes = reward.score(reward_model, tokenizer, [PROBE_QUESTION] * len(PROBES), list(PROBES))
        result = {"round": round_, **row(report, sft_report),
                  "kl_to_sft": reply_kl(policy, sft, tokenizer, generation).mean().item(),
                  "reward_model_probes": dict(zip(PROBES, probes.tolist()))}
        results.append(result)
        describe(f"round {round_}, PPO", result, time.perf_counter() - start, heldout, texts)
        print("    its reward model on probes: " + "; ".join(f"{p!r} {s:+.2f}" for p, s in zip(PROBES, probes.tolist())))
        if round_ == args.rounds:
            break
        start = time.perf_counter()
        if not rankings:  # a given reward model: start the collection from the SFT model's replies
            rankings = rankings_of(sft, tokenizer, world, reward_config, rank_splits, temperatures, "sft")
        rankings += rankings_of(policy, tokenizer, world,
                                dataclasses.replace(reward_config, sets_per_question=args.round_sets),
                                rank_splits, [1.0], f"ppo{round_}")
        reward_dir = out / f"reward{round_ + 1}"
        meta = reward.build_reward(reward_dir, reward_config, sft=sft_dir, rankings=rankings,
                                   progress=False)
        print(f"reward model {round_ + 1}: {len(rankings)} rankings, held-out vs rubric "
              f"{meta['heldout']['accuracy vs rubric']:.3f} ({time.perf_counter() - start:.0f} s)")
    return {"sft": row(sft_report, sft_report), "rounds": results}


def oracle(sft_dir, sft, sft_report, heldout, config, splits) -> dict:
    """PPO with the rubric itself as the reward (no reward model): what a perfect reward model would
    give, to tell the reward model's faults from PPO's. A diagnosis only: a person's taste is never
    available as a function."""
    world, tokenizer = heldout.world, heldout.tokenizer
    start = time.perf_counter()
    seed_everything(config.seed)  # as build_ppo: the value model's new head is drawn from it
    policy, ref_policy = load_model(sft_dir), load_model(sft_dir)
    value_model = load_model(sft_dir, kind="reward")
    prompts = [q.text for split in splits for q in world.questions(split)]
    history = ppo.train_ppo(policy, ref_policy, None, value_model, tokenizer, prompts, config,
                            reward_fn=ppo.rubric_watch(world), progress=False)
    tenth = max(1, len(history) // 10)
    first, last = (sum(h["ppo/score"] for h in part) / len(part) for part in (history[:tenth], history[-tenth:]))
    print(f"rubric score of the training replies: {first:.3f} in the first tenth of the batches, "
          f"{last:.3f} in the last")
    generation, texts, report = heldout.replies(policy, "PPO on the rubric")
    result = {**row(report, sft_report), "kl_to_sft": reply_kl(policy, sft, tokenizer, generation).mean().item(),
              "training_rubric_first_tenth": first, "training_rubric_last_tenth": last}
    describe("PPO on the rubric", result, time.perf_counter() - start, heldout, texts)
    return {"sft": row(sft_report, sft_report), "oracle": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("sharpen", "recipe"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    parser.add_argument("--sft", help="the SFT model's folder (default: the sft stage)")
    parser.add_argument("--sft-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="build an SFT model with this SFTConfig change instead, e.g. "
                        "--sft-set pretrain_mix=1.0 (into --out)")
    parser.add_argument("--reward", help="recipe: use this reward model instead of training one")
    parser.add_argument("--reward-stage", action="store_true", help="recipe: use the reward stage")
    parser.add_argument("--oracle", action="store_true", help="recipe: PPO on the rubric itself, "
                        "no reward model (a diagnosis: what a perfect reward model would give)")
    parser.add_argument("--rank-splits", default="feedback", help="recipe: splits the labeler ranks")
    parser.add_argument("--rank-temperatures", default="1.0", help="recipe: sampling temperatures "
                        "of the ranked replies, each giving RewardConfig.sets_per_question sets")
    parser.add_argument("--reward-set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--ppo-splits", default="feedback", help="recipe: splits PPO practises on "
                        "(build_ppo's default: feedback)")
    parser.add_argument("--ppo-set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--rounds", type=int, default=1, help="recipe: PPO runs, with new rankings "
                        "of each one's replies between them")
    parser.add_argument("--round-sets", type=int, default=6, help="recipe: sets per question of "
                        "each later round's rankings")
    parser.add_argument("--out", help="where the models go (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = sharpen(args) if args.what == "sharpen" else recipe(args)
    print("RESULT " + json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
