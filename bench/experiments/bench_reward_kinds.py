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

With ``--new-facts`` it also asks the questions of the ``ppo`` split, whose facts no ranking
mentioned (``--sets`` sets of K SFT replies each, sampled with seed + 1 and ranked by the same
labeler, as lesson 5's section 8 does), and prints the same table for those pairs, the reward
model's accuracies on them and, with ``--dpo FOLDER``, how often DPO's implicit reward
β·log π/π_ref orders them as the labeler and as the rubric do. Held-out prompts of the feedback
split mostly have a paraphrase twin in training; new facts do not.

Run: ``python bench/experiments/bench_reward_kinds.py`` (the embedded ``sft`` and ``reward`` stages; about a
minute), or ``--source FOLDER --reward FOLDER`` for another SFT model and its reward model;
``--new-facts --dpo dpo`` for the new facts and the embedded DPO stage.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from rlhf_kit import alternatives, feedback, reward
from rlhf_kit.artifacts import read_metadata
from rlhf_kit.stages import ensure_stage
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


def print_table(columns: dict[str, dict[str, tuple[int, int]]]) -> None:
    """One row per kind of pair: its pairs and the share the reward model orders as the rubric does."""
    header = f"{'pair (rubric prefers the first)':<32}" + "".join(f" {name + ' pairs':>16} {'agree':>6}" for name in columns)
    print(header)
    first = next(iter(columns.values()))
    for key in sorted(set().union(*columns.values()), key=lambda k: -first.get(k, (0, 0))[1]):
        row = f"{key:<32}"
        for table in columns.values():
            ok, n = table.get(key, (0, 0))
            row += f" {n:>16} {ok / n if n else float('nan'):>6.2f}"
        print(row)
    for name, table in columns.items():
        ok, n = sum(v[0] for v in table.values()), sum(v[1] for v in table.values())
        print(f"all {name}: {n} pairs, agreement with the rubric {ok / n:.3f}")


def rubric_oriented(world: World, rows: list[dict], questions: dict) -> list[dict]:
    """The pairs the rubric separates, each with the rubric's preferred reply as "chosen"."""
    oriented = []
    for row in rows:
        question = questions[row["prompt"]]
        a = world.judge(question, row["chosen"]).score
        b = world.judge(question, row["rejected"]).score
        if a != b:
            oriented.append(row if a > b else {**row, "chosen": row["rejected"], "rejected": row["chosen"]})
    return oriented


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="the SFT model folder (default: the embedded sft stage)")
    parser.add_argument("--reward", help="the reward model folder (default: the embedded reward stage)")
    parser.add_argument("--new-facts", action="store_true", help="also the ppo split's facts, never ranked")
    parser.add_argument("--sets", type=int, default=4, help="with --new-facts: sets of K replies per question")
    parser.add_argument("--dpo", help="with --new-facts: a DPO stage or folder whose implicit reward to measure")
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
    print_table({"train": train, "held-out": heldout})
    if not args.new_facts:
        return
    policy = load_model(source)
    labeler = feedback.SimulatedLabeler(world, noise=config.noise, seed=config.seed)
    asked = [q.text for q in world.questions("ppo") for _ in range(args.sets)]
    sets = reward.sample_completions(policy, tokenizer, asked, config.k, config.max_new_tokens,
                                     config.temperature, seed=config.seed + 1)
    new_rankings = [feedback.Ranking(p, tuple(s), *labeler.rank(p, s, f"ppo/{n}"))
                    for n, (p, s) in enumerate(zip(asked, sets)) if len(s) >= 2]
    new_rows = reward.as_pairs(new_rankings)
    new_questions = {q.text: q for q in world.questions("ppo")}
    report = reward.evaluate_reward(model, tokenizer, new_rankings, labeler)
    print(f"\nnew facts (ppo split, {len(new_rankings)} rankings): {report.n_pairs} pairs, accuracy "
          f"{report.accuracy:.3f} (noise ceiling {report.ceiling:.3f}), vs the rubric {report.ideal_accuracy:.3f}")
    print_table({"new-fact": by_kind(model, tokenizer, world, new_rows, new_questions)})
    if args.dpo:
        dpo_dir = ensure_stage(args.dpo) if args.dpo in ("dpo",) else args.dpo
        dpo = load_model(dpo_dir)
        judged = rubric_oriented(world, new_rows, new_questions)
        # The sign of β·(log π − log π_ref) decides the order; any β > 0 gives the same accuracy.
        print(f"DPO's implicit reward on the new facts: {alternatives.implicit_accuracy(dpo, policy, tokenizer, new_rows, 1.0):.3f} "
              f"as the labeler, {alternatives.implicit_accuracy(dpo, policy, tokenizer, judged, 1.0):.3f} "
              f"of {len(judged)} pairs as the rubric")


if __name__ == "__main__":
    main()
