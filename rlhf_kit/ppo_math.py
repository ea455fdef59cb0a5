"""PPO's per-token maths: rewards with the KL penalty, whitening, GAE, the clipped losses, the KL coefficient.

Small pure functions of tensors, one per step of a PPO batch that computes something (the steps
are numbered in ``ppo.train_ppo`` and in lesson 6): the per-token rewards of step 4, the whitening
of step 5, the advantages and returns of step 6 and the losses of step 7. Shapes: B completions of
C tokens, with a mask that is 1 on a completion's tokens and 0 on the padding after it. The
exercises of lesson 6 ask you to write four of them and check your answers against these.
"""

from __future__ import annotations

import torch


# ----------------------------------------------------------------------------------------------
# 1. Per-token rewards (step 4) and whitening (step 5)
# ----------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (0 when there are none)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards (B, T): −kl_coef·KL on every completion token, plus the score on the last.

    scores (B,): one reward-model score per completion. logprobs, ref_logprobs (B, T): the
    log-probability of each completion token under the policy and the reference. mask (B, T): 1 on
    completion tokens, 0 on the padding after a completion stops. The per-token KL is the
    single-sample estimate log π − log π_ref. The score goes on the last token where mask is 1,
    never on padding; padding gets reward 0.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask  # (B, T): 0 on padding
    rewards = -kl_coef * kl
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    # (B,): index of the last real token of each row (-1 for a row without any)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values
    at_last = (positions[None, :] == last[:, None]).to(rewards.dtype)  # (B, T): one 1 per row
    return rewards + at_last * scores[:, None].to(rewards.dtype)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``x`` (B, T) scaled to unit variance over the masked positions, and centred unless not
    ``shift_mean``; padding stays 0. Rewards are whitened without shifting their mean (a shift adds
    a constant to every token, which would pay for long or for short completions); advantages are
    centred too."""
    mean = masked_mean(x, mask)
    centred = x - mean
    count = mask.sum()
    variance = masked_mean(centred**2, mask) * count / (count - 1).clamp(min=1)  # unbiased
    out = centred * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# ----------------------------------------------------------------------------------------------
# 2. Advantages and returns by GAE (step 6)
# ----------------------------------------------------------------------------------------------


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (both (B, T)) by generalised advantage estimation (Schulman et al., 2016).

    Runs backwards over the tokens:  δ_t = rewards_t + gamma·V_{t+1} − V_t  and
    A_t = δ_t + gamma·lam·A_{t+1}, with V and A taken as 0 after the last real token (the
    completion has ended: nothing more will come). returns_t = A_t + V_t is the target of the
    value model. mask (B, T) marks real tokens (1s, then padding 0s); padding gets 0 in both.
    """
    mask = mask.to(values.dtype)
    values = values * mask  # the value of padding is not a prediction: 0
    rewards = rewards * mask
    batch, length = rewards.shape
    advantage = torch.zeros(batch, dtype=values.dtype, device=values.device)  # A_{t+1}, (B,)
    reversed_advantages = []
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t + 1 < length else torch.zeros_like(advantage)
        delta = rewards[:, t] + gamma * next_values - values[:, t]  # (B,)
        advantage = delta + gamma * lam * advantage
        reversed_advantages.append(advantage)
    advantages = torch.stack(reversed_advantages[::-1], dim=1) * mask  # (B, T)
    returns = advantages + values
    return advantages, returns


# ----------------------------------------------------------------------------------------------
# 3. The losses (step 7)
# ----------------------------------------------------------------------------------------------


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_eps: float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss, and two numbers to watch: (loss, clipfrac, approx_kl).

    logprobs (B, T): under the policy being trained (with gradients); old_logprobs (B, T): under
    the policy that sampled the batch; advantages, mask (B, T). With ratio = exp(logprobs −
    old_logprobs), each token's loss is the larger (more pessimistic) of −ratio·A and
    −clip(ratio, 1 − clip_eps, 1 + clip_eps)·A, averaged over the tokens where mask is 1.

    clipfrac: share of tokens where the clipped term is the larger one (their gradient is 0).
    approx_kl: mean of (ratio − 1) − log ratio, an estimate of KL(π_old ‖ π) that is never
    negative. Both are detached.
    """
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(loss.dtype), mask)
    approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip_eps_value: float) -> torch.Tensor:
    """The value model's clipped squared error: ½·mean_t max((V − R)², (V_clipped − R)²).

    values (B, T): the value model now (with gradients); old_values (B, T): when the batch was
    sampled; returns (B, T): GAE's targets. V_clipped = old_values + clip(values − old_values,
    −clip_eps_value, clip_eps_value) keeps one batch from moving a value far; the max keeps the
    larger error, as the policy loss keeps the more pessimistic objective. Averaged over the tokens
    where mask is 1.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_eps_value, clip_eps_value)
    errors = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)  # (B, T)
    return 0.5 * masked_mean(errors, mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(returns − values) / Var(returns) over masked tokens: 1 is a perfect value model,
    0 no better than a constant, below 0 worse."""
    variance = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    residual_variance = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float("nan") if variance.item() == 0 else (1 - residual_variance / variance).item()


# ----------------------------------------------------------------------------------------------
# 4. The KL coefficient: fixed, or adapted to a target KL
# ----------------------------------------------------------------------------------------------


class AdaptiveKLController:
    """The KL coefficient, fixed (``target=None``) or adapted as in Ziegler et al. (2019):

        error = clip(KL / target − 1, −0.2, 0.2) ,    kl_coef ← kl_coef · (1 + error · n / horizon)

    after each batch of n completions whose mean KL (per completion, in nats) is KL. A policy that
    drifts too far pays more for it; one that stays too close is let go.
    """

    def __init__(self, kl_coef: float, target: float | None = None, horizon: int = 10_000):
        self.value = kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n: int) -> float:
        """Adapt to one batch of ``n`` completions of mean KL ``kl``; returns the new coefficient."""
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], state["horizon"]
