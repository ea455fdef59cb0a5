"""Lesson 5 (the reward model): the checks of ``bradley_terry_loss``, ``ranking_loss`` (the loss of
one whole ranking) and ``pairwise_accuracy``, against ``rlhf_kit.reward``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .framework import Exercise, Inputs, Mistake


# Scores are drawn at scales from 0.5 to 4, so that a wrong sign, a missing log or a missing
# mean all show; the edge cases hold equal scores (the loss is ln 2), margins of 200 (σ(-200) is
# 0 in float32, so log(σ(·)) overflows where logsigmoid does not) and, for the accuracy, ties.


def _scores(generator: torch.Generator, n: int) -> torch.Tensor:
    scale = 0.5 + 3.5 * float(torch.rand((), generator=generator))
    return torch.randn(n, generator=generator) * scale


def _draw_bradley_terry(generator: torch.Generator) -> Inputs:
    batch = int(torch.randint(1, 9, (), generator=generator))
    chosen, rejected = _scores(generator, batch), _scores(generator, batch)
    weights = None
    if float(torch.rand((), generator=generator)) < 0.6:  # weights 1/C(K,2) of rankings of 2 to 9
        k = torch.randint(2, 10, (batch,), generator=generator).float()
        weights = 2.0 / (k * (k - 1))
    return {"chosen_scores": chosen, "rejected_scores": rejected, "weights": weights}


def _bradley_terry_edges() -> list[Inputs]:
    return [
        # equal scores: a coin flip, the loss is ln 2
        {"chosen_scores": torch.tensor([0.5, -1.0, 2.0]), "rejected_scores": torch.tensor([0.5, -1.0, 2.0]),
         "weights": None},
        # margins of ±200: σ(-200) is 0 in float32, and log(0) is -inf
        {"chosen_scores": torch.tensor([-100.0, 100.0, 1.0]),
         "rejected_scores": torch.tensor([100.0, -100.0, 0.0]),
         "weights": torch.tensor([0.5, 0.25, 0.25])},
        # one pair of a ranking of 9 and six of a ranking of 4: each ranking counts once
        {"chosen_scores": torch.tensor([0.3, 1.2, -0.4, 0.9, 2.0, -1.5, 0.1]),
         "rejected_scores": torch.tensor([-0.2, 0.4, -1.0, 1.5, 0.3, -0.5, 0.6]),
         "weights": torch.tensor([1 / 36] + [1 / 6] * 6)},
    ]


def _bt_reduce(losses, weights):
    return losses.mean() if weights is None else (weights * losses).sum() / weights.sum()


def _bt_reversed(chosen_scores, rejected_scores, weights=None):
    return _bt_reduce(-F.logsigmoid(rejected_scores - chosen_scores), weights)


def _bt_no_minus(chosen_scores, rejected_scores, weights=None):
    return _bt_reduce(F.logsigmoid(chosen_scores - rejected_scores), weights)


def _bt_no_log(chosen_scores, rejected_scores, weights=None):
    return _bt_reduce(-torch.sigmoid(chosen_scores - rejected_scores), weights)


def _bt_probability(chosen_scores, rejected_scores, weights=None):
    return _bt_reduce(torch.sigmoid(chosen_scores - rejected_scores), weights)


def _bt_unstable(chosen_scores, rejected_scores, weights=None):
    return _bt_reduce(-torch.log(torch.sigmoid(chosen_scores - rejected_scores)), weights)


def _bt_ignores_weights(chosen_scores, rejected_scores, weights=None):
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def _bt_divides_by_count(chosen_scores, rejected_scores, weights=None):
    losses = -F.logsigmoid(chosen_scores - rejected_scores)
    return losses.mean() if weights is None else (weights * losses).mean()


def _bt_sum(chosen_scores, rejected_scores, weights=None):
    losses = -F.logsigmoid(chosen_scores - rejected_scores)
    return losses.sum() if weights is None else (weights * losses).sum()


BRADLEY_TERRY_LOSS = Exercise(
    name="bradley_terry_loss",
    reference="rlhf_kit.reward:bradley_terry_loss",
    grad_inputs=("chosen_scores", "rejected_scores"),
    draw=_draw_bradley_terry,
    edge_cases=_bradley_terry_edges,
    mistakes=(
        Mistake("bradley_terry_loss rewards the rejected side: the loss is -log σ(r_chosen - "
                "r_rejected), chosen minus rejected, so that it falls as the chosen side pulls ahead.",
                _bt_reversed),
        Mistake("bradley_terry_loss returns the log-likelihood, not the loss: put a minus sign "
                "in front, -log σ(r_chosen - r_rejected), so that training minimises it.",
                _bt_no_minus),
        Mistake("bradley_terry_loss leaves out the log: the loss is -log σ(r_chosen - "
                "r_rejected), the negative log-probability of the person's choice.",
                _bt_no_log),
        Mistake("bradley_terry_loss returns the probability of the person's choice, σ(r_chosen - "
                "r_rejected), which training would push down: the loss is its negative log, "
                "-log σ(r_chosen - r_rejected).",
                _bt_probability),
        Mistake("bradley_terry_loss overflows when a rejected score is far above its chosen "
                "one: σ(-200) is 0 in float32 and log(0) is -inf; use F.logsigmoid, which "
                "computes log σ(x) without forming σ(x).",
                _bt_unstable),
        Mistake("bradley_terry_loss ignores the weights: multiply each pair's loss by its "
                "weight, then divide by the sum of the weights (with weights=None, take the mean).",
                _bt_ignores_weights),
        Mistake("bradley_terry_loss divides the weighted losses by the number of pairs: divide "
                "by the sum of the weights, so that every ranking in the batch counts once.",
                _bt_divides_by_count),
        Mistake("bradley_terry_loss adds the losses up instead of averaging them: divide by the "
                "sum of the weights (or take the mean), so the loss does not grow with the batch.",
                _bt_sum),
    ),
)


def check_bradley_terry_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(chosen_scores, rejected_scores, weights)`` against
    ``rlhf_kit.reward.bradley_terry_loss``."""
    __tracebackhide__ = True
    BRADLEY_TERRY_LOSS.check(fn)


def _draw_ranking(generator: torch.Generator) -> Inputs:
    k = int(torch.randint(3, 10, (), generator=generator))
    return {"scores": _scores(generator, k), "ranking": torch.randperm(k, generator=generator)}


def _ranking_edges() -> list[Inputs]:
    return [
        # two completions: one pair
        {"scores": torch.tensor([0.2, 1.5]), "ranking": torch.tensor([1, 0])},
        # equal scores: every pair is a coin flip, the loss is ln 2
        {"scores": torch.full((5,), 0.7), "ranking": torch.tensor([3, 0, 4, 1, 2])},
        # the best completion scored 200 below the worst: log(σ(-200)) overflows
        {"scores": torch.tensor([100.0, 0.0, -100.0, 5.0]), "ranking": torch.tensor([2, 3, 1, 0])},
    ]


def _ranked_pairs(ordered):
    better, worse = torch.triu_indices(len(ordered), len(ordered), offset=1)
    return ordered[better], ordered[worse]


def _rank_loss_of(ordered, log_sigmoid=F.logsigmoid, reduce=torch.mean):
    better, worse = _ranked_pairs(ordered)
    return reduce(-log_sigmoid(better - worse))


def _ranking_adjacent(scores, ranking):
    ordered = scores[ranking]
    return -F.logsigmoid(ordered[:-1] - ordered[1:]).mean()


def _ranking_best_only(scores, ranking):
    ordered = scores[ranking]
    return -F.logsigmoid(ordered[0] - ordered[1:]).mean()


def _ranking_sum(scores, ranking):
    return _rank_loss_of(scores[ranking], reduce=torch.sum)


def _ranking_backwards(scores, ranking):
    return _rank_loss_of(scores[ranking.flip(0)])


def _ranking_as_places(scores, ranking):
    return _rank_loss_of(scores[torch.argsort(ranking)])


def _ranking_ignored(scores, ranking):
    return _rank_loss_of(scores)


def _ranking_unstable(scores, ranking):
    return _rank_loss_of(scores[ranking], log_sigmoid=lambda x: torch.log(torch.sigmoid(x)))


RANKING_LOSS = Exercise(
    name="ranking_loss",
    reference="rlhf_kit.reward:ranking_loss",
    grad_inputs=("scores",),
    draw=_draw_ranking,
    edge_cases=_ranking_edges,
    mistakes=(
        Mistake("ranking_loss compares only neighbours of the ranking: every completion beats "
                "every one ranked below it, so use all K·(K-1)/2 pairs.",
                _ranking_adjacent),
        Mistake("ranking_loss compares only the best completion with the others: every "
                "completion also beats the ones ranked below it, so use all K·(K-1)/2 pairs.",
                _ranking_best_only),
        Mistake("ranking_loss adds up the pair losses instead of averaging them: divide by "
                "K·(K-1)/2, so that a ranking of 9 does not weigh six times a ranking of 4.",
                _ranking_sum),
        Mistake("ranking_loss reads the ranking backwards: it lists completion indices best "
                "first, so ranking[0] is the one that beats all the others.",
                _ranking_backwards),
        Mistake("ranking_loss reads ranking[i] as the place of completion i: it is the other "
                "way round, ranking[0] is the index of the best completion, so order the scores "
                "with scores[ranking].",
                _ranking_as_places),
        Mistake("ranking_loss ignores the ranking and pairs the scores in index order: order "
                "them best first with scores[ranking] before pairing.",
                _ranking_ignored),
        Mistake("ranking_loss overflows when a better completion scores far below a worse one: "
                "σ(-200) is 0 in float32 and log(0) is -inf; use F.logsigmoid.",
                _ranking_unstable),
    ),
)


def check_ranking_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(scores, ranking)`` against ``rlhf_kit.reward.ranking_loss``."""
    __tracebackhide__ = True
    RANKING_LOSS.check(fn)


def _draw_accuracy(generator: torch.Generator) -> Inputs:
    batch = int(torch.randint(2, 17, (), generator=generator))
    if float(torch.rand((), generator=generator)) < 0.5:  # whole-number scores: some pairs tie
        chosen = torch.randint(-2, 3, (batch,), generator=generator).float()
        rejected = torch.randint(-2, 3, (batch,), generator=generator).float()
        rejected[0] = chosen[0]  # at least one tie
    else:
        chosen, rejected = _scores(generator, batch), _scores(generator, batch)
    return {"chosen_scores": chosen, "rejected_scores": rejected}


def _accuracy_edges() -> list[Inputs]:
    return [
        # every pair tied: nothing is told apart
        {"chosen_scores": torch.tensor([1.0, -0.5, 0.0]), "rejected_scores": torch.tensor([1.0, -0.5, 0.0])},
        # one pair, right
        {"chosen_scores": torch.tensor([0.3]), "rejected_scores": torch.tensor([-0.3])},
        # all right but one tie
        {"chosen_scores": torch.tensor([2.0, 1.0, 0.5, 3.0]),
         "rejected_scores": torch.tensor([1.0, 0.0, 0.5, -1.0])},
    ]


def _accuracy_ties_count(chosen_scores, rejected_scores):
    return (chosen_scores >= rejected_scores).float().mean()


def _accuracy_reversed(chosen_scores, rejected_scores):
    return (chosen_scores < rejected_scores).float().mean()


def _accuracy_count(chosen_scores, rejected_scores):
    return (chosen_scores > rejected_scores).float().sum()


def _accuracy_half_ties(chosen_scores, rejected_scores):
    return ((chosen_scores > rejected_scores).float()
            + 0.5 * (chosen_scores == rejected_scores).float()).mean()


PAIRWISE_ACCURACY = Exercise(
    name="pairwise_accuracy",
    reference="rlhf_kit.reward:pairwise_accuracy",
    draw=_draw_accuracy,
    edge_cases=_accuracy_edges,
    mistakes=(
        Mistake("pairwise_accuracy counts a tie as a success: use >, since a model that gives "
                "both sides the same score has not told them apart.",
                _accuracy_ties_count),
        Mistake("pairwise_accuracy counts the pairs where the rejected side scores higher: a "
                "pair is right when chosen_scores > rejected_scores.",
                _accuracy_reversed),
        Mistake("pairwise_accuracy counts the right pairs instead of giving their share: divide "
                "by the number of pairs (or take .float().mean()).",
                _accuracy_count),
        Mistake("pairwise_accuracy gives a tie half a point: count only strict wins, as the kit "
                "and TRL's RewardTrainer do, so that a tie counts as not told apart.",
                _accuracy_half_ties),
    ),
)


def check_pairwise_accuracy(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(chosen_scores, rejected_scores)`` against ``rlhf_kit.reward.pairwise_accuracy``."""
    __tracebackhide__ = True
    PAIRWISE_ACCURACY.check(fn)


LESSON_EXERCISES = (BRADLEY_TERRY_LOSS, RANKING_LOSS, PAIRWISE_ACCURACY)
"""This lesson's exercises, in the order its notebook asks for them."""
