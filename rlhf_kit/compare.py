"""Comparing two models blind (lesson 7): pairs of replies, judges, and win rates.

InstructGPT's headline result was a win rate: how often people preferred one model's reply to
another's on the same prompt, shown side by side without the model names. Here the judges are

* **you**, in ``widgets.ComparisonWidget`` (what you skip, a simulated stand-in judges);
* **a simulated person**: the world's rubric plus noise, a different one from the labeler whose
  rankings trained the reward model;
* **the reward model**: the reply it scores higher wins;
* **the rubric** itself, without noise: the judgement the reward model was trying to learn.

A judge's verdict on a pair is 0 (the first reply is better), 1 (the second) or None (a tie). The
win rate of the second model counts a tie as half a win, as InstructGPT did, so 0.5 means "no
better, no worse".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .evaluate import wilson_interval, win_share
from .feedback import ComparisonItem, RankingStore, SimulatedLabeler


def comparison_items(prompts: Sequence[str], replies_a: Sequence[str], replies_b: Sequence[str],
                     models: tuple[str, str]) -> list[ComparisonItem]:
    """One blind pair per prompt: (reply of model a, reply of model b).

    Pairs whose replies are the same text are left out: there is nothing to choose between them.
    A prompt asked twice keeps its first pair only (a store holds one verdict per pair and judge).
    """
    if not len(prompts) == len(replies_a) == len(replies_b):
        raise ValueError(f"Got {len(prompts)} prompts, {len(replies_a)} and {len(replies_b)} replies: "
                         "give one reply of each model per prompt.")
    items, seen = [], set()
    for prompt, a, b in zip(prompts, replies_a, replies_b):
        if a.strip() and b.strip() and a.strip() != b.strip() and prompt not in seen:
            seen.add(prompt)
            items.append(ComparisonItem(prompt, (a.strip(), b.strip()), tuple(models)))
    return items


@dataclass
class WinRate:
    """How often one model's reply was preferred: wins, ties, losses, and the rate with ties as half."""

    judge: str
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float:
        return win_share(self.wins, self.ties, self.losses)

    @property
    def interval(self) -> tuple[float, float]:
        """A 95 % Wilson interval, treating each tie as half a win."""
        return wilson_interval(round(self.wins + 0.5 * self.ties), self.n)

    def row(self) -> dict:
        low, high = self.interval
        return {"judge": self.judge, "pairs": self.n, "wins": self.wins, "ties": self.ties,
                "losses": self.losses, "win rate": self.rate, "low": low, "high": high}


def win_rate(verdicts: Sequence[int | None], judge: str = "", side: int = 1) -> WinRate:
    """The win rate of the reply at position ``side`` (0 or 1) over ``verdicts`` (0, 1 or None)."""
    if side not in (0, 1):
        raise ValueError(f"side must be 0 or 1, not {side!r}.")
    bad = [v for v in verdicts if v not in (0, 1, None)]
    if bad:
        raise ValueError(f"A verdict is 0, 1 or None (a tie), not {bad[0]!r}.")
    wins = sum(v == side for v in verdicts)
    ties = sum(v is None for v in verdicts)
    return WinRate(judge, wins, ties, len(verdicts) - wins - ties)


def stored_verdicts(store: RankingStore, items: Sequence[ComparisonItem], labelers: Sequence[str]
                    ) -> tuple[list[int | None], list[str]]:
    """For each item, the stored verdict of the first of ``labelers`` who judged it, and who that was.

    Items no one in ``labelers`` has judged are left out of both lists.
    """
    stored = {}
    for record in store.comparisons():
        stored.setdefault((record.labeler, record.prompt, record.completions), record.winner)
    verdicts, judges = [], []
    for item in items:
        for name in labelers:
            key = (name, item.prompt, tuple(item.completions))
            if key in stored:
                verdicts.append(stored[key])
                judges.append(name)
                break
    return verdicts, judges


def labeler_verdicts(labeler: SimulatedLabeler, items: Sequence[ComparisonItem]) -> list[int | None]:
    """The simulated labeler's verdict on every item (its noise seeded by the item, as in a store)."""
    return [labeler.compare(i.prompt, i.completions, i.key(labeler.name)) for i in items]


def score_verdicts(scores_a: Sequence[float], scores_b: Sequence[float]) -> list[int | None]:
    """0 where the first score is higher, 1 where the second is, None where they are equal."""
    return [None if a == b else int(b > a) for a, b in zip(scores_a, scores_b)]


def best_of_n_indices(scores, n: int):
    """Best-of-n: ``scores`` (N,) holds n replies per prompt, one prompt after another; returns the
    (N / n,) indices, into the flat list, of the best-scored reply of each prompt (the first of
    equal best scores)."""
    import torch

    if scores.dim() != 1 or n < 1 or scores.numel() % n:
        raise ValueError(f"scores must be one row of n = {n} replies per prompt; got shape "
                         f"{tuple(scores.shape)}.")
    groups = scores.view(-1, n)  # (prompts, n)
    return groups.argmax(dim=1) + n * torch.arange(groups.shape[0])
