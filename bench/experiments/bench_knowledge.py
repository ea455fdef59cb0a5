"""Benchmark: how well does a stage's model know the world's facts, split by split?

For every fact of the world (32 people x 4 relations) the model reads the fact's own sentence
start ("Alice lives in"; the base model after ``<|endoftext|>``, a chat model after "Sure! ", the
way its demonstrations answer) and every value of the relation is scored by the log-probability
of its tokens. Normalised over the relation's values, this gives the probability the model puts
on the true value, and whether the true value is its most likely one.

The later stages depend on this: the reward model can only prefer true answers to false ones
that its body can tell apart, and PPO can only make the policy more truthful if the knowledge is
there to bring out. Prints a table by split (sft, feedback, ppo, heldout) for each stage given.

Run: ``python bench/experiments/bench_knowledge.py base sft`` (seconds per stage; builds missing stages).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from rlhf_kit.stages import ensure_stage
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.world import SPLITS, STATEMENTS, VALUES, World

CHAT_OPENING = "Sure! "  # how the demonstrations of lesson 3 begin every answer


@torch.no_grad()
def value_probabilities(model, tokenizer, prefix: str, values) -> torch.Tensor:
    """P(value | prefix) for each value, normalised over ``values``: shape (len(values),)."""
    start = len(tokenizer(prefix, add_special_tokens=False).input_ids)
    scores = []
    for value in values:
        ids = tokenizer(f"{prefix} {value}", add_special_tokens=False).input_ids
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)  # (T, V)
        scores.append(sum(logprobs[t - 1, ids[t]].item() for t in range(start, len(ids))))
    return torch.tensor(scores).softmax(dim=0)


def knowledge(model, tokenizer, world: World, chat: bool) -> dict[str, tuple[float, float, int]]:
    """Per split: (mean probability of the true value, share with the true value most likely, facts)."""
    found = defaultdict(list)
    for (person, relation), true in sorted(world.facts.items()):
        opening = STATEMENTS[relation].split("{value}")[0].format(person=person).rstrip()
        prefix = CHAT_OPENING + opening if chat else tokenizer.bos_token + opening
        probs = value_probabilities(model, tokenizer, prefix, VALUES[relation])
        index = VALUES[relation].index(true)
        found[world.splits[(person, relation)]].append((probs[index].item(), float(probs.argmax() == index)))
    return {split: (sum(p for p, _ in rows) / len(rows), sum(a for _, a in rows) / len(rows), len(rows))
            for split, rows in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", default=["base", "sft"], help="stages of the embedded model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = World(seed=0)
    print(f"{'stage':<8} {'split':<9} {'facts':>5} {'mean P(true)':>13} {'true most likely':>17}")
    for stage in args.stages:
        folder = ensure_stage(stage)
        model, tokenizer = load_model(folder), load_tokenizer(folder)
        result = knowledge(model, tokenizer, world, chat=stage != "base")
        for split in SPLITS:
            if split in result:
                mean, top, n = result[split]
                print(f"{stage:<8} {split:<9} {n:>5} {mean:>13.2f} {top:>16.0%}")


if __name__ == "__main__":
    main()
