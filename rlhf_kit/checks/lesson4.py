"""Lesson 4 (human feedback): the checks of ``ranking_to_pairs`` (a labeler's ranking, ties
included, as the (chosen, rejected) pairs a reward model learns from) and ``agreement_rate`` (how
often two labelers order a pair alike), against ``rlhf_kit.feedback``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

import torch

from .framework import DataExercise, Inputs, Mistake, draw_int


# The answers here are plain Python data (pairs of indices, counts, a share), not tensors, and
# the inputs are tuples, so that no function can change them in place. A ranking lists completion
# indices best first; ties are pairs (i, j) with i < j joining two neighbours of the ranking, as
# ``feedback.Ranking`` stores them. Rankings have 2 to 9 completions, as InstructGPT's had 4 to 9.


def _draw_ties(generator: torch.Generator, ranking: tuple[int, ...], share: float = 0.3) -> tuple:
    """Some neighbours of ``ranking`` marked as ties, each written (i, j) with i < j."""
    return tuple(sorted((min(a, b), max(a, b)) for a, b in zip(ranking, ranking[1:])
                        if float(torch.rand((), generator=generator)) < share))


def _draw_ranking_with_ties(generator: torch.Generator, k: int) -> tuple[tuple[int, ...], tuple]:
    ranking = tuple(torch.randperm(k, generator=generator).tolist())
    return ranking, _draw_ties(generator, ranking)


# -- rankings to pairs ---------------------------------------------------------------------------


def kit_ranking_pairs(ranking: Sequence[int], ties: Sequence[tuple[int, int]] = ()) -> tuple[list, int]:
    """The reference for ``ranking_to_pairs``: ``feedback.ranking_pairs`` of a bare ranking."""
    from ..feedback import Ranking, ranking_pairs

    record = Ranking("prompt", tuple(f"completion {i}" for i in range(len(ranking))),
                     tuple(ranking), tuple(tuple(t) for t in ties))
    return ranking_pairs(record)


def _sorted_pairs(result: Any) -> Any:
    """(pairs, dropped) with the pairs as sorted tuples: any order of the pairs is right."""
    try:
        pairs, dropped = result
        return sorted(tuple(pair) for pair in pairs), dropped
    except (TypeError, ValueError):  # not two values, or not pairs: compared as it is
        return result


def _draw_pairs(generator: torch.Generator) -> Inputs:
    ranking, ties = _draw_ranking_with_ties(generator, draw_int(generator, 2, 9))
    return {"ranking": ranking, "ties": ties}


def _pairs_edges() -> list[Inputs]:
    return [
        # two completions: one pair
        {"ranking": (1, 0), "ties": ()},
        # two completions marked equally good: no pair, one tie dropped
        {"ranking": (1, 0), "ties": ((0, 1),)},
        # the tie (1, 3) joins 3 (ranked third) and 1 (last): written smaller index first
        {"ranking": (2, 0, 3, 1), "ties": ((1, 3),)},
        # a run of ties: 0 = 1 and 1 = 2, so 0 = 2 as well
        {"ranking": (0, 1, 2, 3), "ties": ((0, 1), (1, 2))},
        # nine completions, as many as InstructGPT's labelers ranked at once: 36 pairs
        {"ranking": (8, 3, 5, 0, 7, 1, 6, 2, 4), "ties": ()},
    ]


def _tie_groups_of(order: Sequence[int], ties: Sequence[tuple[int, int]]) -> dict[int, int]:
    """Completion -> group: a completion tied with the one before it in ``order`` joins its group."""
    tied = {frozenset(t) for t in ties}
    group, number, previous = {}, -1, None
    for c in order:
        if previous is None or frozenset((previous, c)) not in tied:
            number += 1
        group[c], previous = number, c
    return group


def _pairs_with(name: str, pairing: str = "all", ties_mode: str = "groups", places: bool = False,
                flip: bool = False, count: bool = True, pairs_only: bool = False):
    """A ``ranking_to_pairs`` that differs from the kit's in the ways named by its arguments."""
    def ranking_to_pairs(ranking, ties):
        order = tuple(sorted(range(len(ranking)), key=lambda i: ranking[i])) if places else tuple(ranking)
        candidates = {
            "all": list(combinations(order, 2)),
            "adjacent": list(zip(order, order[1:])),
            "best": [(order[0], c) for c in order[1:]],
            "both_orders": [(a, b) for a in order for b in order if a != b],
            "square": [(a, b) for a in order for b in order],
        }[pairing]
        group = _tie_groups_of(order, ties)
        marked = {frozenset(t) for t in ties}
        written = {tuple(t) for t in ties}
        tied = {
            "groups": lambda a, b: group[a] == group[b],
            "direct": lambda a, b: frozenset((a, b)) in marked,
            "one_way": lambda a, b: (a, b) in written,
            "keep": lambda a, b: False,
        }[ties_mode]
        kept = [(b, a) if flip else (a, b) for a, b in candidates if not tied(a, b)]
        if pairs_only:
            return kept
        return kept, (len(candidates) - len(kept) if count else 0)

    ranking_to_pairs.__name__ = f"_pairs_{name}"
    return ranking_to_pairs


RANKING_TO_PAIRS = DataExercise(
    name="ranking_to_pairs",
    reference="rlhf_kit.checks.lesson4:kit_ranking_pairs",
    draw=_draw_pairs,
    edge_cases=_pairs_edges,
    normalise=_sorted_pairs,
    mistakes=(
        Mistake("ranking_to_pairs returns only the pairs: return two values, the list of "
                "(chosen, rejected) pairs and the number of tied pairs it dropped.",
                _pairs_with("only", pairs_only=True)),
        Mistake("ranking_to_pairs keeps the pairs marked as ties: two completions marked equally "
                "good say nothing about which is better, so drop each tied pair and count it.",
                _pairs_with("keeps_ties", ties_mode="keep")),
        Mistake("ranking_to_pairs drops the tied pairs but does not count them: return how many "
                "it dropped as the second value (pairs + dropped = K·(K-1)/2).",
                _pairs_with("uncounted", count=False)),
        Mistake("ranking_to_pairs makes a pair of every two completions in both orders (K² or "
                "K·(K-1) pairs): each two completions give one pair, the one ranked higher "
                "first, K·(K-1)/2 pairs in all.",
                _pairs_with("square", pairing="square", ties_mode="keep"),
                _pairs_with("both_orders", pairing="both_orders", ties_mode="keep"),
                _pairs_with("both_orders_without_ties", pairing="both_orders")),
        Mistake("ranking_to_pairs pairs only neighbours of the ranking: every completion beats "
                "each one ranked below it, not only the next one, so make all K·(K-1)/2 pairs.",
                _pairs_with("adjacent", pairing="adjacent")),
        Mistake("ranking_to_pairs pairs only the best completion with the others: the second "
                "best also beats the ones below it, and so on, so make all K·(K-1)/2 pairs.",
                _pairs_with("best_only", pairing="best")),
        Mistake("ranking_to_pairs puts the worse completion first: a pair is (chosen, rejected), "
                "the completion ranked higher first.",
                _pairs_with("flipped", flip=True)),
        Mistake("ranking_to_pairs reads ranking[i] as the place of completion i: a ranking lists "
                "completion indices best first, so ranking[0] is the best completion.",
                _pairs_with("places", places=True)),
        Mistake("ranking_to_pairs misses a tie when the completion ranked higher has the larger "
                "index: a tie is written (i, j) with i < j whatever the ranking says, so look for "
                "both (a, b) and (b, a).",
                _pairs_with("ties_one_way", ties_mode="one_way")),
        Mistake("ranking_to_pairs drops only the pairs marked as ties: in a run of ties (a = b "
                "and b = c) a and c are equal too, so drop (a, c) as well.",
                _pairs_with("ties_not_chained", ties_mode="direct")),
    ),
)


def check_ranking_to_pairs(fn: Callable[..., tuple]) -> None:
    """Check ``fn(ranking, ties)`` against ``rlhf_kit.feedback.ranking_pairs``."""
    __tracebackhide__ = True
    RANKING_TO_PAIRS.check(fn)


# -- agreement between two labelers --------------------------------------------------------------


def _second_opinion(generator: torch.Generator, ranking: tuple[int, ...]) -> tuple[tuple[int, ...], tuple]:
    """Another labeler's ranking of the same completions: mostly alike, as people's are."""
    if float(torch.rand((), generator=generator)) < 0.2:  # sometimes a different view altogether
        return _draw_ranking_with_ties(generator, len(ranking))
    order = list(ranking)
    for p in range(len(order) - 1):  # swap some neighbours
        if float(torch.rand((), generator=generator)) < 0.3:
            order[p], order[p + 1] = order[p + 1], order[p]
    return tuple(order), _draw_ties(generator, tuple(order), share=0.2)


def _draw_agreement(generator: torch.Generator) -> Inputs:
    first, second = [], []
    for _ in range(draw_int(generator, 1, 5)):
        ranking, ties = _draw_ranking_with_ties(generator, draw_int(generator, 2, 7))
        first.append((ranking, ties))
        second.append(_second_opinion(generator, ranking))
    return {"first": tuple(first), "second": tuple(second)}


def _agreement_edges() -> list[Inputs]:
    return [
        # the same rankings: they agree on every pair
        {"first": (((2, 0, 1), ()), ((1, 0), ())), "second": (((2, 0, 1), ()), ((1, 0), ()))},
        # opposite rankings: they agree on none
        {"first": (((0, 1, 2, 3), ()),), "second": (((3, 2, 1, 0), ()),)},
        # a tie by both (agreement), a tie by one only (disagreement)
        {"first": (((0, 1, 2), ((0, 1),)), ((3, 0, 2, 1), ((0, 3),))),
         "second": (((1, 0, 2), ((0, 1),)), ((3, 0, 2, 1), ()))},
        # a ranking of 9 (36 pairs) and one of 2 (1 pair): every pair counts once
        {"first": (((0, 1, 2, 3, 4, 5, 6, 7, 8), ()), ((0, 1), ())),
         "second": (((1, 0, 2, 3, 4, 5, 6, 8, 7), ()), ((1, 0), ()))},
    ]


def _relations(ranking: Sequence[int], ties: Sequence[tuple[int, int]], square: bool = False) -> dict:
    """(i, j) -> +1 if i is above j, -1 if below, 0 if tied; pairs i < j (or all i, j)."""
    group, place = _tie_groups_of(ranking, ties), {c: p for p, c in enumerate(ranking)}
    k = len(ranking)
    pairs = [(i, j) for i in range(k) for j in range(k)] if square else list(combinations(range(k), 2))
    return {(i, j): 0 if group[i] == group[j] else (1 if place[i] < place[j] else -1) for i, j in pairs}


def _agreement_counts(first, second, square=False, ignore_ties=False) -> list[tuple[int, int]]:
    """(pairs ordered alike, pairs) for each completion set."""
    counts = []
    for (r1, t1), (r2, t2) in zip(first, second):
        a = _relations(r1, () if ignore_ties else t1, square)
        b = _relations(r2, () if ignore_ties else t2, square)
        counts.append((sum(a[p] == b[p] for p in a), len(a)))
    return counts


def _pooled(counts):
    return sum(s for s, _ in counts) / sum(n for _, n in counts)


def _agreement_with_itself(first, second):
    return _pooled(_agreement_counts(first, first))


def _agreement_second_with_itself(first, second):
    return _pooled(_agreement_counts(second, second))


def _agreement_whole_rankings(first, second):
    same = [r1 == r2 and sorted(t1) == sorted(t2) for (r1, t1), (r2, t2) in zip(first, second)]
    return sum(same) / len(same)


def _agreement_positions(first, second):
    same = [a == b for (r1, _), (r2, _) in zip(first, second) for a, b in zip(r1, r2)]
    return sum(same) / len(same)


def _agreement_ignores_ties(first, second):
    return _pooled(_agreement_counts(first, second, ignore_ties=True))


def _agreement_mean_of_sets(first, second):
    counts = _agreement_counts(first, second)
    return sum(s / n for s, n in counts) / len(counts)


def _agreement_square(first, second):
    return _pooled(_agreement_counts(first, second, square=True))


def _agreement_count(first, second):
    return sum(s for s, _ in _agreement_counts(first, second))


AGREEMENT_RATE = DataExercise(
    name="agreement_rate",
    reference="rlhf_kit.feedback:agreement",
    draw=_draw_agreement,
    edge_cases=_agreement_edges,
    mistakes=(
        Mistake("agreement_rate compares a labeler's rankings with themselves, which always "
                "agree: compare first[n] with second[n], the two labelers' rankings of the same "
                "completions.",
                _agreement_with_itself, _agreement_second_with_itself),
        Mistake("agreement_rate counts the completion sets ranked identically: compare pair by "
                "pair, since two rankings of 4 that swap one neighbour still agree on 5 of their 6 "
                "pairs.",
                _agreement_whole_rankings),
        Mistake("agreement_rate compares places (the same completion at the same place): compare "
                "pairs, whether both labelers put i above j, j above i, or tie them.",
                _agreement_positions),
        Mistake("agreement_rate ignores the ties: a pair both labelers tied is an agreement, and "
                "a pair one tied and the other ordered is a disagreement.",
                _agreement_ignores_ties),
        Mistake("agreement_rate averages the rate of each completion set: pool the pairs of all "
                "sets, so that a ranking of 9 (36 pairs) counts more than a ranking of 2 (1 pair).",
                _agreement_mean_of_sets),
        Mistake("agreement_rate counts K² pairs per ranking, each completion with itself too: "
                "use the K·(K-1)/2 pairs i < j.",
                _agreement_square),
        Mistake("agreement_rate returns how many pairs agree: divide by the number of pairs to "
                "get a share between 0 and 1.",
                _agreement_count),
    ),
)


def check_agreement_rate(fn: Callable[..., float]) -> None:
    """Check ``fn(first, second)`` against ``rlhf_kit.feedback.agreement``."""
    __tracebackhide__ = True
    AGREEMENT_RATE.check(fn)


LESSON_EXERCISES = (RANKING_TO_PAIRS, AGREEMENT_RATE)
"""This lesson's exercises, in the order its notebook asks for them."""
