"""Lesson 6 (PPO, the reward model as a teacher): the checks of ``kl_penalized_rewards``,
``compute_gae``, ``clipped_policy_loss`` and ``clipped_value_loss``, against ``rlhf_kit.ppo``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .framework import Exercise, Inputs, Mistake, draw_int


# Inputs look like one batch of PPO: B completions of up to T tokens, each a run of real tokens
# (mask 1) followed by padding (mask 0), as ``sampling.generate`` returns them. Values of padding
# are random on purpose: a value model outputs something there too, and GAE must not use it.


def _ppo_pick(generator: torch.Generator, options: Sequence[Any]) -> Any:
    return options[int(torch.randint(len(options), (), generator=generator))]


def _completion_mask(generator: torch.Generator, batch: int, time: int) -> torch.Tensor:
    """(B, T) long: each row 1 on its first 1..T tokens, 0 after; at least one row padded if T > 1."""
    lengths = torch.randint(1, time + 1, (batch,), generator=generator)
    if time > 1:
        lengths[int(torch.randint(batch, (), generator=generator))] = draw_int(generator, 1, time - 1)
    return (torch.arange(time)[None, :] < lengths[:, None]).long()


def _ppo_masked_mean(x, mask):
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


# -- KL-penalised rewards ------------------------------------------------------------------------


def _draw_kl_rewards(generator: torch.Generator) -> Inputs:
    batch, time = draw_int(generator, 1, 4), draw_int(generator, 2, 8)
    return {"scores": torch.randn(batch, generator=generator) * 2,
            "logprobs": -torch.rand(batch, time, generator=generator) * 4,
            "ref_logprobs": -torch.rand(batch, time, generator=generator) * 4,
            "mask": _completion_mask(generator, batch, time),
            "kl_coef": _ppo_pick(generator, (0.02, 0.05, 0.1, 0.2, 0.5))}


def _kl_rewards_edges() -> list[Inputs]:
    generator = torch.Generator().manual_seed(5)
    logprobs = -torch.rand(3, 4, generator=generator) * 3
    return [
        # completions of 2, 1 and 4 tokens
        {"scores": torch.tensor([1.0, -2.0, 0.5]), "logprobs": logprobs,
         "ref_logprobs": -torch.rand(3, 4, generator=generator) * 3,
         "mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]), "kl_coef": 0.1},
        # no penalty: the score alone, on the last real token
        {"scores": torch.tensor([3.0, 1.5]), "logprobs": logprobs[:2], "ref_logprobs": logprobs[:2] - 1,
         "mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]), "kl_coef": 0.0},
        # a one-token completion
        {"scores": torch.tensor([0.7]), "logprobs": torch.tensor([[-1.0]]),
         "ref_logprobs": torch.tensor([[-2.0]]), "mask": torch.tensor([[1]]), "kl_coef": 0.2},
    ]


def _kl_part(logprobs, ref_logprobs, mask, kl_coef):
    return -kl_coef * (logprobs - ref_logprobs) * mask


def _last_index(mask):
    positions = torch.arange(mask.shape[1])
    return torch.where(mask.bool(), positions, -1).max(dim=1).values


def _add_at(rewards, index, scores):
    at = (torch.arange(rewards.shape[1])[None, :] == index[:, None]).to(rewards.dtype)
    return rewards + at * scores[:, None]


def _kl_rewards_last_column(scores, logprobs, ref_logprobs, mask, kl_coef):
    rewards = _kl_part(logprobs, ref_logprobs, mask, kl_coef)
    return _add_at(rewards, torch.full_like(scores, rewards.shape[1] - 1, dtype=torch.long), scores)


def _kl_rewards_first_token(scores, logprobs, ref_logprobs, mask, kl_coef):
    rewards = _kl_part(logprobs, ref_logprobs, mask, kl_coef)
    return _add_at(rewards, torch.zeros_like(scores, dtype=torch.long), scores)


def _kl_rewards_one_late(scores, logprobs, ref_logprobs, mask, kl_coef):
    rewards = _kl_part(logprobs, ref_logprobs, mask, kl_coef)
    rewards[torch.arange(len(scores)), mask.sum(dim=1)] += scores  # IndexError on a full row
    return rewards


def _kl_rewards_every_token(scores, logprobs, ref_logprobs, mask, kl_coef):
    return _kl_part(logprobs, ref_logprobs, mask, kl_coef) + scores[:, None] * mask


def _kl_rewards_every_position(scores, logprobs, ref_logprobs, mask, kl_coef):
    return _kl_part(logprobs, ref_logprobs, mask, kl_coef) + scores[:, None]


def _kl_rewards_plus_kl(scores, logprobs, ref_logprobs, mask, kl_coef):
    return _add_at(-_kl_part(logprobs, ref_logprobs, mask, kl_coef), _last_index(mask), scores)


def _kl_rewards_unmasked_kl(scores, logprobs, ref_logprobs, mask, kl_coef):
    return _add_at(-kl_coef * (logprobs - ref_logprobs), _last_index(mask), scores)


def _kl_rewards_no_coef(scores, logprobs, ref_logprobs, mask, kl_coef):
    return _add_at(_kl_part(logprobs, ref_logprobs, mask, 1.0), _last_index(mask), scores)


KL_PENALIZED_REWARDS = Exercise(
    name="kl_penalized_rewards",
    reference="rlhf_kit.ppo_math:kl_penalized_rewards",
    draw=_draw_kl_rewards,
    edge_cases=_kl_rewards_edges,
    mistakes=(
        Mistake("kl_penalized_rewards puts the score on the last column, which is padding when a "
                "completion stopped early: put it on the last token where mask is 1.",
                _kl_rewards_last_column),
        Mistake("kl_penalized_rewards puts the score one token too late, at index mask.sum() (the "
                "first padding token, or past the end): the last real token is at mask.sum() - 1.",
                _kl_rewards_one_late),
        Mistake("kl_penalized_rewards puts the score on the first token: the reward model judges "
                "the whole completion, so its score arrives with the last token, where mask is 1 "
                "for the last time.",
                _kl_rewards_first_token),
        Mistake("kl_penalized_rewards adds the score to every token: it is one reward for the "
                "whole completion, given once, on its last real token.",
                _kl_rewards_every_token, _kl_rewards_every_position),
        Mistake("kl_penalized_rewards rewards the KL instead of penalising it: each token gets "
                "-kl_coef * (logprobs - ref_logprobs), negative when the policy likes a token more "
                "than the reference does.",
                _kl_rewards_plus_kl),
        Mistake("kl_penalized_rewards charges the KL on padding too: multiply it by mask, so that "
                "the tokens after a completion stopped get reward 0.",
                _kl_rewards_unmasked_kl),
        Mistake("kl_penalized_rewards leaves out kl_coef: the penalty per token is "
                "kl_coef * (logprobs - ref_logprobs), and kl_coef sets how tight the leash is.",
                _kl_rewards_no_coef),
    ),
)


def check_kl_penalized_rewards(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(scores, logprobs, ref_logprobs, mask, kl_coef)`` against
    ``rlhf_kit.ppo.kl_penalized_rewards``."""
    __tracebackhide__ = True
    KL_PENALIZED_REWARDS.check(fn)


# -- GAE -----------------------------------------------------------------------------------------


def _draw_gae(generator: torch.Generator) -> Inputs:
    batch, time = draw_int(generator, 1, 4), draw_int(generator, 2, 8)
    mask = _completion_mask(generator, batch, time)
    return {"rewards": torch.randn(batch, time, generator=generator) * mask,
            "values": torch.randn(batch, time, generator=generator),  # padding too: not to be used
            "mask": mask,
            "gamma": _ppo_pick(generator, (1.0, 0.99, 0.9)),
            "lam": _ppo_pick(generator, (0.95, 0.9, 0.8))}


def _gae_edges() -> list[Inputs]:
    return [
        # gamma = lam = 1: the advantage is the reward still to come minus the value
        {"rewards": torch.tensor([[0.0, 0.0, 1.0], [0.5, -1.0, 0.0]]),
         "values": torch.tensor([[0.2, 0.4, 0.6], [0.1, -0.3, 9.0]]),
         "mask": torch.tensor([[1, 1, 1], [1, 1, 0]]), "gamma": 1.0, "lam": 1.0},
        # lam = 0: the one-step TD error
        {"rewards": torch.tensor([[0.1, -0.2, 0.3, 0.0]]), "values": torch.tensor([[1.0, 0.5, -0.5, 7.0]]),
         "mask": torch.tensor([[1, 1, 1, 0]]), "gamma": 0.9, "lam": 0.0},
        # a one-token completion next to a longer one
        {"rewards": torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]),
         "values": torch.tensor([[0.5, 3.0, 3.0, 3.0], [0.2, 0.1, 0.4, 0.3]]),
         "mask": torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]]), "gamma": 0.99, "lam": 0.95},
    ]


def _gae_loop(rewards, values, gamma, lam, forwards=False, delta_gamma=True, use_lam=True):
    """GAE's recursion written out, with switches for the usual slips; no masking."""
    batch, time = rewards.shape
    advantages = torch.zeros_like(rewards)
    carried = torch.zeros(batch, dtype=rewards.dtype)
    steps = range(time) if forwards else reversed(range(time))
    for t in steps:
        next_values = values[:, t + 1] if t + 1 < time else torch.zeros(batch, dtype=rewards.dtype)
        delta = rewards[:, t] + (gamma if delta_gamma else 1.0) * next_values - values[:, t]
        carried = delta + gamma * (lam if use_lam else 1.0) * carried
        advantages[:, t] = carried
    return advantages


def _gae_masked(mask_values=True, **slips):
    def gae(rewards, values, mask, gamma, lam):
        mask = mask.to(values.dtype)
        used = values * mask if mask_values else values
        advantages = _gae_loop(rewards * mask, used, gamma, lam, **slips) * mask
        return advantages, (advantages + used) * mask
    return gae


_gae_forwards = _gae_masked(forwards=True)
_gae_forwards.__name__ = "_gae_forwards"
_gae_no_lam = _gae_masked(use_lam=False)
_gae_no_lam.__name__ = "_gae_no_lam"
_gae_no_gamma_in_delta = _gae_masked(delta_gamma=False)
_gae_no_gamma_in_delta.__name__ = "_gae_no_gamma_in_delta"
_gae_padding_values = _gae_masked(mask_values=False)
_gae_padding_values.__name__ = "_gae_padding_values"


def _gae_no_mask(rewards, values, mask, gamma, lam):
    advantages = _gae_loop(rewards, values, gamma, lam)
    return advantages, advantages + values


def _gae_returns_are_advantages(rewards, values, mask, gamma, lam):
    mask = mask.to(values.dtype)
    advantages = _gae_loop(rewards * mask, values * mask, gamma, lam) * mask
    return advantages, advantages


COMPUTE_GAE = Exercise(
    name="compute_gae",
    reference="rlhf_kit.ppo_math:compute_gae",
    draw=_draw_gae,
    edge_cases=_gae_edges,
    mistakes=(
        Mistake("compute_gae runs forwards in time: an advantage sums what comes after a token, so "
                "loop from the last token to the first (reversed(range(T))).",
                _gae_forwards),
        Mistake("compute_gae bootstraps from the values of the padding after a completion: it has "
                "ended, so the value after its last real token is 0 (multiply values by mask first).",
                _gae_padding_values, _gae_no_mask),
        Mistake("compute_gae leaves lam out of the recursion: A_t = delta_t + gamma * lam * A_{t+1}.",
                _gae_no_lam),
        Mistake("compute_gae leaves gamma out of the TD error: "
                "delta_t = rewards_t + gamma * V_{t+1} - V_t.",
                _gae_no_gamma_in_delta),
        Mistake("compute_gae returns the advantages as the returns: the value model's target is "
                "returns = advantages + values.",
                _gae_returns_are_advantages),
    ),
)


def check_compute_gae(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Check ``fn(rewards, values, mask, gamma, lam)`` against ``rlhf_kit.ppo.compute_gae``."""
    __tracebackhide__ = True
    COMPUTE_GAE.check(fn)


# -- the clipped policy loss ---------------------------------------------------------------------


def _draw_policy_loss(generator: torch.Generator) -> Inputs:
    batch, time = draw_int(generator, 1, 4), draw_int(generator, 2, 8)
    old_logprobs = -torch.rand(batch, time, generator=generator) * 4
    return {"logprobs": old_logprobs + torch.randn(batch, time, generator=generator) * 0.4,
            "old_logprobs": old_logprobs,
            "advantages": torch.randn(batch, time, generator=generator),
            "mask": _completion_mask(generator, batch, time),
            "clip_eps": _ppo_pick(generator, (0.1, 0.2, 0.3))}


def _policy_loss_edges() -> list[Inputs]:
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.2, -1.5, -2.5, -1.0]])
    advantages = torch.tensor([[1.0, -0.5, 2.0, 0.3], [-1.0, 0.7, 0.0, 1.5]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return [
        # the policy has not moved: every ratio is 1, nothing is clipped
        {"logprobs": old.clone(), "old_logprobs": old, "advantages": advantages, "mask": mask,
         "clip_eps": 0.2},
        # every ratio e^0.5 = 1.65, far outside [0.8, 1.2]
        {"logprobs": old + 0.5, "old_logprobs": old, "advantages": advantages, "mask": mask,
         "clip_eps": 0.2},
        # every ratio e^-0.5 = 0.61, far below
        {"logprobs": old - 0.5, "old_logprobs": old, "advantages": advantages, "mask": mask,
         "clip_eps": 0.1},
    ]


def _ppo_ratio_parts(logprobs, old_logprobs):
    log_ratio = logprobs - old_logprobs
    return log_ratio, torch.exp(log_ratio)


def _policy_loss_with(loss_fn=None, clipfrac_fn=None, kl_fn=None, ratio_fn=None, average=None):
    """The reference with one part replaced by a slip."""
    def policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps):
        log_ratio, ratio = (ratio_fn or _ppo_ratio_parts)(logprobs, old_logprobs)
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
        per_token = (loss_fn or (lambda u, c: torch.maximum(u, c)))(unclipped, clipped)
        clipfrac = (clipfrac_fn or (lambda u, c, r, eps: (c > u).float()))(unclipped, clipped, ratio,
                                                                             clip_eps)
        kl = (kl_fn or (lambda lr, r: (r - 1) - lr))(log_ratio, ratio)
        mean = average or _ppo_masked_mean
        return mean(per_token, mask), mean(clipfrac, mask), mean(kl, mask)
    return policy_loss


def _abs_clipfrac(unclipped, clipped, ratio, clip_eps):
    return ((ratio - 1).abs() > clip_eps).float()


def _named(fn, name):
    fn.__name__ = name
    return fn


_policy_loss_unclipped = _named(_policy_loss_with(loss_fn=lambda u, c: u), "_policy_loss_unclipped")
_policy_loss_min = _named(_policy_loss_with(loss_fn=lambda u, c: torch.minimum(u, c)), "_policy_loss_min")
_policy_loss_objective = _named(_policy_loss_with(loss_fn=lambda u, c: -torch.maximum(u, c)),
                                "_policy_loss_objective")
_policy_loss_log_ratio = _named(
    _policy_loss_with(ratio_fn=lambda new, old: (new - old, new - old)), "_policy_loss_log_ratio")
_policy_loss_inverted = _named(
    _policy_loss_with(ratio_fn=lambda new, old: (old - new, torch.exp(old - new))), "_policy_loss_inverted")
_policy_loss_unmasked = _named(_policy_loss_with(average=lambda x, mask: x.mean()), "_policy_loss_unmasked")
_policy_loss_abs_clipfrac = _named(_policy_loss_with(clipfrac_fn=_abs_clipfrac), "_policy_loss_abs_clipfrac")
_policy_loss_k1 = _named(_policy_loss_with(kl_fn=lambda lr, r: -lr), "_policy_loss_k1")
_policy_loss_k2 = _named(_policy_loss_with(kl_fn=lambda lr, r: 0.5 * lr**2), "_policy_loss_k2")


def _policy_loss_unmasked_loss_only(logprobs, old_logprobs, advantages, mask, clip_eps):
    _, clipfrac, approx_kl = _policy_loss_with()(logprobs, old_logprobs, advantages, mask, clip_eps)
    loss, _, _ = _policy_loss_unmasked(logprobs, old_logprobs, advantages, mask, clip_eps)
    return loss, clipfrac, approx_kl


CLIPPED_POLICY_LOSS = Exercise(
    name="clipped_policy_loss",
    reference="rlhf_kit.ppo_math:clipped_policy_loss",
    grad_inputs=("logprobs",),
    draw=_draw_policy_loss,
    edge_cases=_policy_loss_edges,
    mistakes=(
        Mistake("clipped_policy_loss does not clip: each token's loss is the larger of "
                "-ratio * A and -clamp(ratio, 1 - clip_eps, 1 + clip_eps) * A.",
                _policy_loss_unclipped),
        Mistake("clipped_policy_loss keeps the smaller of the two losses, the optimistic one: PPO "
                "keeps the larger (torch.maximum), so that clipping can only take an incentive away, "
                "never add one.",
                _policy_loss_min),
        Mistake("clipped_policy_loss returns the objective instead of the loss: the optimiser "
                "minimises, so negate it (loss = -min(ratio * A, clip(ratio) * A)).",
                _policy_loss_objective),
        Mistake("clipped_policy_loss uses the difference of log-probabilities as the ratio: "
                "ratio = exp(logprobs - old_logprobs).",
                _policy_loss_log_ratio),
        Mistake("clipped_policy_loss turns the ratio upside down: it is pi_new / pi_old = "
                "exp(logprobs - old_logprobs).",
                _policy_loss_inverted),
        Mistake("clipped_policy_loss averages over padding too: average over the tokens where "
                "mask is 1.",
                _policy_loss_unmasked, _policy_loss_unmasked_loss_only),
        Mistake("clipped_policy_loss counts every token whose ratio left [1 - clip_eps, 1 + clip_eps] "
                "as clipped: count only those where the clipped term is the larger loss (there the "
                "gradient is 0), which depends on the sign of the advantage.",
                _policy_loss_abs_clipfrac),
        Mistake("clipped_policy_loss estimates approx_kl another way: use the mean of "
                "(ratio - 1) - log(ratio), which is never negative.",
                _policy_loss_k1, _policy_loss_k2),
    ),
)


def check_clipped_policy_loss(fn: Callable[..., tuple]) -> None:
    """Check ``fn(logprobs, old_logprobs, advantages, mask, clip_eps)`` against
    ``rlhf_kit.ppo.clipped_policy_loss``."""
    __tracebackhide__ = True
    CLIPPED_POLICY_LOSS.check(fn)


# -- the clipped value loss ----------------------------------------------------------------------


def _draw_value_loss(generator: torch.Generator) -> Inputs:
    batch, time = draw_int(generator, 1, 4), draw_int(generator, 2, 8)
    old_values = torch.randn(batch, time, generator=generator)
    return {"values": old_values + torch.randn(batch, time, generator=generator) * 0.4,
            "old_values": old_values,
            "returns": old_values + torch.randn(batch, time, generator=generator),
            "mask": _completion_mask(generator, batch, time),
            "clip_eps_value": _ppo_pick(generator, (0.1, 0.2, 0.5))}


def _value_loss_edges() -> list[Inputs]:
    old = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]])
    returns = torch.tensor([[1.5, -0.5, 0.0], [1.0, 0.5, 3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return [
        # the value model has not moved: nothing to clip
        {"values": old.clone(), "old_values": old, "returns": returns, "mask": mask, "clip_eps_value": 0.2},
        # every value moved by 1, five times the clip range
        {"values": old + 1.0, "old_values": old, "returns": returns, "mask": mask, "clip_eps_value": 0.2},
    ]


def _value_errors(values, old_values, returns, clip_eps_value):
    clipped = old_values + torch.clamp(values - old_values, -clip_eps_value, clip_eps_value)
    return (values - returns) ** 2, (clipped - returns) ** 2


def _value_loss_unclipped(values, old_values, returns, mask, clip_eps_value):
    return 0.5 * _ppo_masked_mean((values - returns) ** 2, mask)


def _value_loss_clipped_only(values, old_values, returns, mask, clip_eps_value):
    return 0.5 * _ppo_masked_mean(_value_errors(values, old_values, returns, clip_eps_value)[1], mask)


def _value_loss_min(values, old_values, returns, mask, clip_eps_value):
    return 0.5 * _ppo_masked_mean(torch.minimum(*_value_errors(values, old_values, returns, clip_eps_value)),
                                  mask)


def _value_loss_no_half(values, old_values, returns, mask, clip_eps_value):
    return _ppo_masked_mean(torch.maximum(*_value_errors(values, old_values, returns, clip_eps_value)), mask)


def _value_loss_unmasked(values, old_values, returns, mask, clip_eps_value):
    return 0.5 * torch.maximum(*_value_errors(values, old_values, returns, clip_eps_value)).mean()


CLIPPED_VALUE_LOSS = Exercise(
    name="clipped_value_loss",
    reference="rlhf_kit.ppo_math:clipped_value_loss",
    grad_inputs=("values",),
    draw=_draw_value_loss,
    edge_cases=_value_loss_edges,
    mistakes=(
        Mistake("clipped_value_loss does not clip: compare the squared error of values with that "
                "of old_values + clamp(values - old_values, -clip_eps_value, clip_eps_value), and "
                "keep the larger.",
                _value_loss_unclipped),
        Mistake("clipped_value_loss uses only the clipped error: keep the larger of the clipped and "
                "the unclipped squared error at each token.",
                _value_loss_clipped_only),
        Mistake("clipped_value_loss keeps the smaller of the two squared errors: keep the larger "
                "(torch.maximum), the pessimistic one, as the policy loss does.",
                _value_loss_min),
        Mistake("clipped_value_loss leaves out the 1/2: the loss is 0.5 * mean(max(...)), whose "
                "gradient is the plain error.",
                _value_loss_no_half),
        Mistake("clipped_value_loss averages over padding too: average over the tokens where mask is 1.",
                _value_loss_unmasked),
    ),
)


def check_clipped_value_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(values, old_values, returns, mask, clip_eps_value)`` against
    ``rlhf_kit.ppo.clipped_value_loss``."""
    __tracebackhide__ = True
    CLIPPED_VALUE_LOSS.check(fn)


LESSON_EXERCISES = (KL_PENALIZED_REWARDS, COMPUTE_GAE, CLIPPED_POLICY_LOSS, CLIPPED_VALUE_LOSS)
"""This lesson's exercises, in the order its notebook asks for them."""
