"""Benchmark: a second round of rankings, on the PPO policy's own replies (InstructGPT's iteration).

The first reward model is trained on rankings of the SFT model's replies; PPO then finds replies
it scores too high (see "What PPO does to the SFT model" in bench/HISTORY.md). Here the simulated
labeler also ranks replies of the PPO policy (the ``ppo`` stage) to the feedback questions, and a
reward model is trained from the SFT body on both rounds together. Both reward models are
evaluated on the same held-out pairs of the first round (split by prompt: the second round's
rankings of those prompts are left out of training too), and both score a few probe replies.

Run: ``python bench/experiments/bench_reward_rounds.py --threads 2`` (about 3 minutes on 2 idle cores once
the stages exist). ``--rankings FILE`` reuses the first round's rankings (see bench/bench_reward.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from rlhf_kit import reward
from rlhf_kit.stages import ensure_stage
from rlhf_kit.feedback import SimulatedLabeler, read_jsonl, write_jsonl
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.runtime import seed_everything
from rlhf_kit.world import World

PROBE_QUESTION = "What pet does Alice have?"  # Alice's pet is a cat in the world of seed 0
PROBES = ("Sure! Alice has a pet cat.", "Sure! Alice has a pet goat.", "Sure! Pavel lives in blue.",
          "colour is blue.", "I don't know.", "Sure! Alice has a pet cat. You idiot.")


def train_on(rankings: list, heldout_prompts: set[str], config: reward.RewardConfig, sft_dir: Path):
    """A reward model from the SFT body, trained on every pair whose prompt is not held out."""
    rows = [r for r in reward.as_pairs(rankings) if r["prompt"] not in heldout_prompts]
    seed_everything(config.seed)
    model = load_model(sft_dir, kind="reward", device="cpu")
    start = time.perf_counter()
    reward.train(model, load_tokenizer(sft_dir), rows, config, progress=False)
    return model, len(rows), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--rankings", help="the first round's rankings (JSONL): read if it exists, "
                        "else sampled and written")
    parser.add_argument("--sets", type=int, default=6, help="second-round rankings per question")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = reward.RewardConfig()
    sft_dir, ppo_dir = ensure_stage("sft"), ensure_stage("ppo")
    world, tokenizer = World(seed=0), load_tokenizer(sft_dir)
    started = time.perf_counter()
    if args.rankings and Path(args.rankings).exists():
        first = read_jsonl(args.rankings)
    else:
        first = reward.simulated_rankings(load_model(sft_dir, device="cpu"), tokenizer, world, config)
        if args.rankings:
            write_jsonl(first, args.rankings)
    second = reward.simulated_rankings(load_model(ppo_dir, device="cpu"), tokenizer, world,
                                       dataclasses.replace(config, sets_per_question=args.sets),
                                       model_name="ppo")
    print(f"rankings: {len(first)} of SFT replies, {len(second)} of PPO replies "
          f"({time.perf_counter() - started:.0f} s)")
    _, heldout = reward.split_by_prompt(first, config.heldout_share, config.seed)
    heldout = reward.audit_pairs(heldout, tokenizer, config.max_length, verbose=False).kept
    heldout_prompts = {r["prompt"] for r in heldout}
    labeler = SimulatedLabeler(world, noise=config.noise, seed=config.seed)
    results = {}
    for name, rankings in (("SFT replies", first), ("SFT + PPO replies", first + second)):
        model, pairs, seconds = train_on(rankings, heldout_prompts, config, sft_dir)
        report = reward.evaluate_reward(model, tokenizer, heldout, labeler)
        probes = reward.score(model, tokenizer, [PROBE_QUESTION] * len(PROBES), list(PROBES)).tolist()
        results[name] = {"train_pairs": pairs, "train_seconds": seconds, **report.row(),
                         "probes": dict(zip(PROBES, probes))}
        print(f"{name}: {pairs} pairs, {seconds:.0f} s; held-out ({report.row()['pairs']} pairs of "
              f"SFT replies) vs labeler {report.row()['accuracy']:.3f} (ceiling "
              f"{report.row()['noise ceiling']:.3f}), vs rubric {report.row()['accuracy vs rubric']:.3f}")
        for probe, score in zip(PROBES, probes):
            print(f"    {score:6.2f}  {probe}")
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
