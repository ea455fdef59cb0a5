"""Benchmark: where a reward model agrees with the rubric, by kind of pair.

The reward stage's rankings are made again (the same sampling and labeler seeds as ``build_reward``,
so the same pairs), split by prompt as the stage split them, and every pair whose two replies the
noise-free rubric scores differently is sorted by what each reply is, as the world judges it:

* ``true``: answers the question with the true fact (and states nothing false);
* ``false``: states something false (the asked fact or another);
* ``off-topic``: answers nothing that was asked, e.g. a true fact about another person;
* ``rude``: insults the person who asked.

For each kind of pair ("true > false": the rubric prefers the true reply to the false one) it prints
how many pairs there are and how often the reward model orders them as the rubric does, for the
training prompts and the held-out prompts apart. The gap between the two columns is what the reward
model memorised rather than learned.

Run: ``python bench/bench_reward_kinds.py`` (the embedded ``sft`` and ``reward`` stages; about a
minute), or ``--source FOLDER --reward FOLDER`` for another SFT model and its reward model.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from rlhf_kit import reward
from rlhf_kit.artifacts import ensure_stage, read_metadata
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.world import World


def kind(judgement) -> str:
    if judgement.rude:
        return "rude"
    if judgement.false:
        return "false"
    return "true" if judgement.correct else "off-topic"


def by_kind(model, tokenizer, world: World, rows: list[dict], questions: dict) -> dict[str, tuple[int, int]]:
    """{"true > false": (pairs the reward model orders as the rubric does, pairs), ...}."""
    chosen = reward.score(model, tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = reward.score(model, tokenizer, [r["prompt"] for r in rows], [r["rejected"] for r in rows])
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row, a, b in zip(rows, chosen.tolist(), rejected.tolist()):
        question = questions[row["prompt"]]
        ja, jb = world.judge(question, row["chosen"]), world.judge(question, row["rejected"])
        if ja.score == jb.score:
            continue  # the rubric has no preference
        better, worse, agrees = (ja, jb, a > b) if ja.score > jb.score else (jb, ja, b > a)
        entry = counts[f"{kind(better)} > {kind(worse)}"]
        entry[0] += int(agrees)
        entry[1] += 1
    return {key: (ok, n) for key, (ok, n) in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="the SFT model folder (default: the embedded sft stage)")
    parser.add_argument("--reward", help="the reward model folder (default: the embedded reward stage)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = args.source or ensure_stage("sft")
    reward_dir = args.reward or ensure_stage("reward")
    config = reward.RewardConfig(**{k: v for k, v in read_metadata(reward_dir).get("config", {}).items()
                                    if k in reward.RewardConfig.__dataclass_fields__})
    world = World(seed=read_metadata(source).get("seed", 0))
    tokenizer = load_tokenizer(source)
    rankings = reward.simulated_rankings(load_model(source), tokenizer, world, config)
    train_rows, heldout_rows = reward.split_by_prompt(rankings, config.heldout_share, config.seed)
    questions = {q.text: q for q in world.questions("feedback")}
    model = load_model(reward_dir, kind="reward")
    train = by_kind(model, tokenizer, world, train_rows, questions)
    heldout = by_kind(model, tokenizer, world, heldout_rows, questions)
    print(f"{'pair (rubric prefers the first)':<24} {'train pairs':>11} {'agree':>6} {'held-out pairs':>14} {'agree':>6}")
    for key in sorted(set(train) | set(heldout), key=lambda k: -(train.get(k, (0, 0))[1])):
        t_ok, t_n = train.get(key, (0, 0))
        h_ok, h_n = heldout.get(key, (0, 0))
        print(f"{key:<24} {t_n:>11} {t_ok / t_n if t_n else float('nan'):>6.2f} "
              f"{h_n:>14} {h_ok / h_n if h_n else float('nan'):>6.2f}")
    for name, table in (("train", train), ("held-out", heldout)):
        ok, n = sum(v[0] for v in table.values()), sum(v[1] for v in table.values())
        print(f"all {name}: {n} pairs, agreement with the rubric {ok / n:.3f}")


if __name__ == "__main__":
    main()
