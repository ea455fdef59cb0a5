"""Lesson 2 (learning from rewards): the checks of ``sample_average_update``,
``log_policy_gradient`` (∇ log π of a softmax policy), ``reinforce_loss`` (with a baseline) and
``preference_probability`` (the Bradley–Terry probability), against ``rlhf_kit.bandits``.

The lesson's fourth exercise, a prediction (does a baseline that moves with the rewards change the
variance of the gradient estimate?), is checked by ``predictions.check_prediction``, not here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .framework import Exercise, Inputs, Mistake, draw_int


# References live in ``rlhf_kit.bandits``. Inputs are small batches of independent bandits: R
# runs of K arms. Rewards are drawn around an offset of -2 to 5 and baselines are never 0, so a
# forgotten or reversed baseline shows; edge cases hold logits of ±1000 (exp overflows, log of a
# softmax that underflowed is -inf), the first reward of an arm (count 1) and equal scores.


def _l02_scale(generator: torch.Generator) -> float:
    return 0.5 + 2.5 * float(torch.rand((), generator=generator))


# -- the sample-average update -------------------------------------------------------------------


def _draw_sample_average(generator: torch.Generator) -> Inputs:
    runs, arms = draw_int(generator, 1, 8), draw_int(generator, 2, 6)
    shape = [(runs,), (runs, arms)][draw_int(generator, 0, 1)]
    estimate = torch.randn(shape, generator=generator) * 2
    count = torch.randint(2, 60, shape, generator=generator).float()  # rewards seen, this one included
    reward = estimate + torch.randn(shape, generator=generator) * _l02_scale(generator) + 1.0
    return {"estimate": estimate, "count": count, "reward": reward}


def _sample_average_edges() -> list[Inputs]:
    return [
        # the first reward of each arm (count 1) replaces the initial estimate
        {"estimate": torch.tensor([0.0, 5.0, -3.0]), "count": torch.ones(3),
         "reward": torch.tensor([1.5, -0.5, 2.0])},
        # after a million rewards one more barely moves the average
        {"estimate": torch.tensor([[1.0, -2.0], [0.5, 4.0]]), "count": torch.full((2, 2), 1e6),
         "reward": torch.tensor([[9.0, -8.0], [3.0, 0.0]])},
        # one bandit, one arm: tensors holding a single number
        {"estimate": torch.tensor(2.0), "count": torch.tensor(3.0), "reward": torch.tensor(-1.0)},
    ]


def _average_is_reward(estimate, count, reward):
    return reward + 0.0 * estimate


def _average_count_plus_one(estimate, count, reward):
    return estimate + (reward - estimate) / (count + 1)


def _average_count_minus_one(estimate, count, reward):
    return estimate + (reward - estimate) / (count - 1)


def _average_halves(estimate, count, reward):
    return (estimate + reward) / 2


def _average_reversed(estimate, count, reward):
    return estimate - (reward - estimate) / count


def _average_fixed_step(estimate, count, reward):
    return estimate + 0.1 * (reward - estimate)


def _average_total(estimate, count, reward):
    return estimate + reward


def _average_times_count(estimate, count, reward):
    return estimate + (reward - estimate) * count


SAMPLE_AVERAGE_UPDATE = Exercise(
    name="sample_average_update",
    reference="rlhf_kit.bandits:sample_average_update",
    draw=_draw_sample_average,
    edge_cases=_sample_average_edges,
    hint_in_place="return `estimate + (reward - estimate) / count`, a new tensor, rather than "
                  "`estimate += ...`",
    mistakes=(
        Mistake("sample_average_update returns the new reward and forgets the old estimate: "
                "move the estimate only 1/count of the way towards the reward, "
                "estimate + (reward - estimate) / count.",
                _average_is_reward),
        Mistake("sample_average_update divides by the wrong count: count already includes the "
                "new reward, so divide by count itself (the first reward, count 1, replaces the "
                "estimate).",
                _average_count_plus_one, _average_count_minus_one),
        Mistake("sample_average_update averages the old estimate and the new reward as equals: "
                "the old estimate stands for count - 1 rewards, so the new one gets weight "
                "1/count, estimate + (reward - estimate) / count.",
                _average_halves),
        Mistake("sample_average_update moves the estimate away from the reward: the error is "
                "reward - estimate, and it is added, estimate + (reward - estimate) / count.",
                _average_reversed),
        Mistake("sample_average_update uses a fixed step size: a sample average moves by 1/count, "
                "a step that shrinks as rewards accumulate.",
                _average_fixed_step),
        Mistake("sample_average_update adds the reward to a running total: keep an average, "
                "estimate + (reward - estimate) / count, so it stays on the scale of one reward.",
                _average_total),
        Mistake("sample_average_update multiplies the error by count: divide by it, so that "
                "each new reward moves the average less.",
                _average_times_count),
    ),
)


def check_sample_average_update(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(estimate, count, reward)`` against ``rlhf_kit.bandits.sample_average_update``."""
    __tracebackhide__ = True
    SAMPLE_AVERAGE_UPDATE.check(fn)


# -- ∇ log π of a softmax policy -----------------------------------------------------------------


def _draw_policy_gradient(generator: torch.Generator) -> Inputs:
    runs, arms = draw_int(generator, 1, 8), draw_int(generator, 2, 10)
    logits = torch.randn(runs, arms, generator=generator) * _l02_scale(generator)
    return {"logits": logits, "actions": torch.randint(arms, (runs,), generator=generator)}


def _policy_gradient_edges() -> list[Inputs]:
    return [
        # every arm equally likely: the taken arm gets 1 - 1/K, the others -1/K
        {"logits": torch.zeros(2, 4), "actions": torch.tensor([3, 0])},
        # logits of ±1000: exp() overflows to inf, unless the largest logit is subtracted first
        {"logits": torch.tensor([[1000.0, 999.0, 990.0], [-1000.0, -1001.0, -995.0]]),
         "actions": torch.tensor([1, 2])},
        # two arms, one run
        {"logits": torch.tensor([[0.3, -0.8]]), "actions": torch.tensor([1])},
    ]


def _onehot(logits, actions):
    return F.one_hot(actions, logits.shape[-1]).to(logits.dtype)


def _grad_reversed(logits, actions):
    return torch.softmax(logits, dim=-1) - _onehot(logits, actions)


def _grad_onehot_only(logits, actions):
    return _onehot(logits, actions)


def _grad_minus_probs_only(logits, actions):
    return -torch.softmax(logits, dim=-1)


def _grad_of_probability(logits, actions):
    probs = torch.softmax(logits, dim=-1)
    taken = probs.gather(-1, actions[:, None])  # (R, 1): π(a)
    return taken * (_onehot(logits, actions) - probs)


def _grad_raw_logits(logits, actions):
    return _onehot(logits, actions) - logits


def _grad_softmax_dim0(logits, actions):
    return _onehot(logits, actions) - torch.softmax(logits, dim=0)


def _grad_unstable(logits, actions):
    weights = torch.exp(logits)
    return _onehot(logits, actions) - weights / weights.sum(dim=-1, keepdim=True)


LOG_POLICY_GRADIENT = Exercise(
    name="log_policy_gradient",
    reference="rlhf_kit.bandits:log_policy_gradient",
    draw=_draw_policy_gradient,
    edge_cases=_policy_gradient_edges,
    mistakes=(
        Mistake("log_policy_gradient has the wrong sign: taking an arm raises its own logit, so "
                "the gradient is onehot(a) - π, not π - onehot(a).",
                _grad_reversed),
        Mistake("log_policy_gradient returns onehot(a) alone: log π(a) also depends on every "
                "other logit through the softmax's sum, which subtracts π: onehot(a) - π.",
                _grad_onehot_only),
        Mistake("log_policy_gradient leaves out onehot(a): the taken arm's own logit gets +1, "
                "so the gradient is onehot(a) - π.",
                _grad_minus_probs_only),
        Mistake("log_policy_gradient gives the gradient of π(a), not of log π(a): that is π(a) "
                "times too small; the gradient of the log-probability is onehot(a) - π.",
                _grad_of_probability),
        Mistake("log_policy_gradient subtracts the logits: subtract the probabilities, "
                "π = softmax(logits), from onehot(a).",
                _grad_raw_logits),
        Mistake("log_policy_gradient takes the softmax over the wrong dimension: the arms are "
                "the last one, so use softmax(logits, dim=-1).",
                _grad_softmax_dim0),
        Mistake("log_policy_gradient overflows on large logits (exp of more than about 88 is "
                "inf in float32): use torch.softmax, or subtract each row's largest logit "
                "before exp.",
                _grad_unstable),
    ),
)


def check_log_policy_gradient(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(logits, actions)`` against ``rlhf_kit.bandits.log_policy_gradient``."""
    __tracebackhide__ = True
    LOG_POLICY_GRADIENT.check(fn)


# -- the REINFORCE loss with a baseline ----------------------------------------------------------


def _draw_reinforce(generator: torch.Generator) -> Inputs:
    runs, arms = draw_int(generator, 2, 16), draw_int(generator, 2, 8)
    offset = -2.0 + 7.0 * float(torch.rand((), generator=generator))
    rewards = offset + torch.randn(runs, generator=generator) * _l02_scale(generator)
    if float(torch.rand((), generator=generator)) < 0.7:  # a number: the average reward so far
        baseline = round(offset + float(torch.randn((), generator=generator)) * 0.5, 2) or 0.5
    else:  # one per run, as a value model would give
        baseline = offset + torch.randn(runs, generator=generator) * 0.5
    return {"logits": torch.randn(runs, arms, generator=generator) * _l02_scale(generator),
            "actions": torch.randint(arms, (runs,), generator=generator),
            "rewards": rewards, "baseline": baseline}


def _reinforce_edges() -> list[Inputs]:
    return [
        # no baseline: plain REINFORCE
        {"logits": torch.tensor([[0.5, -0.5, 1.0], [0.0, 0.2, -1.0]]), "actions": torch.tensor([2, 0]),
         "rewards": torch.tensor([1.0, -2.0]), "baseline": 0.0},
        # logits of ±1000: the softmax of an unlikely arm underflows to 0, and log(0) is -inf
        {"logits": torch.tensor([[1000.0, 0.0, -1000.0], [5.0, 1000.0, 0.0]]),
         "actions": torch.tensor([2, 0]),
         "rewards": torch.tensor([3.0, 1.0]), "baseline": 2.5},
        # one run
        {"logits": torch.tensor([[0.1, 0.4, -0.3, 0.0]]), "actions": torch.tensor([1]),
         "rewards": torch.tensor([4.0]), "baseline": 3.0},
    ]


def _taken_logprobs(logits, actions):
    return torch.log_softmax(logits, dim=-1).gather(-1, actions[:, None]).squeeze(-1)


def _reinforce_no_baseline(logits, actions, rewards, baseline):
    return -(rewards * _taken_logprobs(logits, actions)).mean()


def _reinforce_adds_baseline(logits, actions, rewards, baseline):
    return -((rewards + baseline) * _taken_logprobs(logits, actions)).mean()


def _reinforce_no_minus(logits, actions, rewards, baseline):
    return ((rewards - baseline) * _taken_logprobs(logits, actions)).mean()


def _reinforce_probabilities(logits, actions, rewards, baseline):
    probs = torch.softmax(logits, dim=-1).gather(-1, actions[:, None]).squeeze(-1)
    return -((rewards - baseline) * probs).mean()


def _reinforce_raw_logits(logits, actions, rewards, baseline):
    return -((rewards - baseline) * logits.gather(-1, actions[:, None]).squeeze(-1)).mean()


def _reinforce_every_action(logits, actions, rewards, baseline):
    advantages = torch.as_tensor(rewards - baseline)
    return -(advantages[..., None] * torch.log_softmax(logits, dim=-1)).mean()


def _reinforce_sum(logits, actions, rewards, baseline):
    return -((rewards - baseline) * _taken_logprobs(logits, actions)).sum()


def _reinforce_unstable(logits, actions, rewards, baseline):
    taken = torch.log(torch.softmax(logits, dim=-1)).gather(-1, actions[:, None]).squeeze(-1)
    return -((rewards - baseline) * taken).mean()


REINFORCE_LOSS = Exercise(
    name="reinforce_loss",
    reference="rlhf_kit.bandits:reinforce_loss",
    grad_inputs=("logits",),
    draw=_draw_reinforce,
    edge_cases=_reinforce_edges,
    mistakes=(
        Mistake("reinforce_loss ignores the baseline: weigh each log-probability by the "
                "advantage, rewards - baseline, so that only better-than-usual actions are pushed up.",
                _reinforce_no_baseline),
        Mistake("reinforce_loss adds the baseline: subtract it, rewards - baseline, so that an "
                "action is pushed up only when it did better than usual.",
                _reinforce_adds_baseline),
        Mistake("reinforce_loss has the wrong sign: training minimises the loss, so it is "
                "-mean((rewards - baseline) * log π(a)); without the minus, good actions become rarer.",
                _reinforce_no_minus),
        Mistake("reinforce_loss uses probabilities instead of log-probabilities: the policy "
                "gradient is the gradient of log π(a) (torch.log_softmax, then gather).",
                _reinforce_probabilities),
        Mistake("reinforce_loss uses the raw logits as log-probabilities: take "
                "torch.log_softmax(logits, dim=-1) first, then gather the taken actions.",
                _reinforce_raw_logits),
        Mistake("reinforce_loss weighs the log-probability of every arm, not only of the one "
                "taken: gather log π at `actions` (logprobs.gather(-1, actions[:, None])).",
                _reinforce_every_action),
        Mistake("reinforce_loss adds up the runs' losses instead of averaging them: take the "
                "mean, so that the step size does not grow with the number of runs.",
                _reinforce_sum),
        Mistake("reinforce_loss takes the log of a softmax that underflowed to 0 (log 0 is "
                "-inf): use torch.log_softmax, which computes log π without forming π.",
                _reinforce_unstable),
    ),
)


def check_reinforce_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(logits, actions, rewards, baseline)`` against ``rlhf_kit.bandits.reinforce_loss``."""
    __tracebackhide__ = True
    REINFORCE_LOSS.check(fn)


# -- the Bradley–Terry probability ---------------------------------------------------------------


def _draw_preference(generator: torch.Generator) -> Inputs:
    n = draw_int(generator, 1, 10)
    shape = [(n,), (draw_int(generator, 2, 4), n)][draw_int(generator, 0, 1)]
    scale = _l02_scale(generator)
    return {"score_a": torch.randn(shape, generator=generator) * scale,
            "score_b": torch.randn(shape, generator=generator) * scale}


def _preference_edges() -> list[Inputs]:
    return [
        # equal scores: a coin flip
        {"score_a": torch.tensor([0.0, 1.5, -2.0]), "score_b": torch.tensor([0.0, 1.5, -2.0])},
        # large scores: exp(100) is inf in float32, the difference of 10 is harmless
        {"score_a": torch.tensor([100.0, 90.0, -95.0]), "score_b": torch.tensor([90.0, 100.0, -100.0])},
        # far apart: a certain verdict either way
        {"score_a": torch.tensor([-100.0, 100.0]), "score_b": torch.tensor([100.0, -100.0])},
    ]


def _preference_reversed(score_a, score_b):
    return torch.sigmoid(score_b - score_a)


def _preference_difference(score_a, score_b):
    return score_a - score_b


def _preference_ratio(score_a, score_b):
    return score_a / (score_a + score_b)


def _preference_unstable(score_a, score_b):
    return torch.exp(score_a) / (torch.exp(score_a) + torch.exp(score_b))


def _preference_odds(score_a, score_b):
    return torch.exp(score_a - score_b)


PREFERENCE_PROBABILITY = Exercise(
    name="preference_probability",
    reference="rlhf_kit.bandits:preference_probability",
    draw=_draw_preference,
    edge_cases=_preference_edges,
    mistakes=(
        Mistake("preference_probability gives the probability that b wins: a is preferred with "
                "probability σ(score_a - score_b), a's score minus b's.",
                _preference_reversed),
        Mistake("preference_probability returns the score difference, not a probability: pass "
                "it through the sigmoid, σ(score_a - score_b), which maps any number into (0, 1).",
                _preference_difference),
        Mistake("preference_probability divides the raw scores, score_a / (score_a + score_b): "
                "scores can be negative; the model is σ(score_a - score_b) = e^a / (e^a + e^b).",
                _preference_ratio),
        Mistake("preference_probability overflows on large scores (exp of more than about 88 "
                "is inf in float32, and inf / inf is nan): compute torch.sigmoid(score_a - "
                "score_b), which only sees the difference.",
                _preference_unstable),
        Mistake("preference_probability returns the odds exp(score_a - score_b), which can "
                "exceed 1: the probability is odds / (1 + odds) = σ(score_a - score_b).",
                _preference_odds),
    ),
)


def check_preference_probability(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(score_a, score_b)`` against ``rlhf_kit.bandits.preference_probability``."""
    __tracebackhide__ = True
    PREFERENCE_PROBABILITY.check(fn)


LESSON_EXERCISES = (SAMPLE_AVERAGE_UPDATE, LOG_POLICY_GRADIENT, REINFORCE_LOSS, PREFERENCE_PROBABILITY)
"""This lesson's exercises, in the order its notebook asks for them."""
