"""PPO: the SFT model learns to write what the reward model scores high, on a KL leash.

The reward model of lesson 4 can score any completion, so the SFT model can now practise: it
writes completions to prompts, the reward model scores them, and reinforcement learning makes the
high-scoring ones more likely. Left alone, the policy would find whatever fools the reward model
(it is only an imitation of a person); a KL penalty keeps it close to the SFT model it started
from, the *reference*. For a prompt x and a completion y the policy π maximises

    r(x, y)  −  kl_coef · KL(π(·|x) ‖ π_ref(·|x))

Language-model PPO spreads this over the tokens of y (Ziegler et al., 2019; Ouyang et al., 2022):
every token pays its share of the KL, and the score arrives with the last one,

    rewards_t = −kl_coef · (log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t))  +  [t = last] · r(x, y)

A value model V estimates, at every token, the reward still to come. Generalised advantage
estimation (GAE) turns rewards and values into advantages, how much better a token did than
expected,

    δ_t = rewards_t + gamma · V_{t+1} − V_t ,    A_t = δ_t + gamma · lam · A_{t+1} ,
    returns_t = A_t + V_t

and the clipped objective of PPO (Schulman et al., 2017) moves the policy towards tokens with
A_t > 0 without moving it far from the policy that sampled them,

    ratio_t = π(y_t) / π_old(y_t) ,
    loss = −mean_t min(ratio_t · A_t, clip(ratio_t, 1 − clip_eps, 1 + clip_eps) · A_t)

One batch of ``train_ppo`` follows the numbered steps of the notebook: (1) sample completions
from the policy, (2) score them with the reward model, (3) log-probabilities under the policy and
the frozen reference, and values, (4) per-token rewards, (5) optional whitening, (6) advantages and
returns by GAE, (7) several epochs of minibatch updates with the clipped policy loss and the
clipped value loss, (8) metrics and a table of samples. Steps 4, 6 and 7 are the small pure
functions at the top of this file.

The four models: ``policy`` (trained; starts as the SFT model; ``PPOConfig.train`` says which of
its weights change), ``ref_policy`` (the SFT model, frozen), ``reward_model`` (frozen; or a plain
Python function of texts) and ``value_model`` (a scalar head, trained; InstructGPT initialises it
from the reward model, or use the SFT body with a new head: ``load_model(source, kind="reward")``
gives either).

Details that make it work are listed by Huang et al., *The N Implementation Details of RLHF with
PPO* (Hugging Face blog, 2023; ICLR 2024 blog track): log-probabilities at the sampling
temperature, no dropout, whitened advantages, a penalty for completions that never end. The guards
(finite numbers, a KL ceiling, a probability ratio of 1 before the first update) stop a broken run
with a sentence instead of letting it train on garbage. Reads the ``sft`` and ``reward`` artifacts (or any model
folder or hub id); writes the ``ppo`` artifact. Taught in ``course/06_ppo.ipynb``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .reward import score  # section 5
from .runtime import NonFiniteLoss  # a loss, KL, value or advantage became NaN or infinite
from .sampling import context_length, generate
from .tokenizer import chat_prompt, end_of_turn_id  # section 5


@dataclass
class PPOConfig:
    """Everything that decides a PPO run. Defaults aim at minutes for the embedded model on a laptop CPU."""

    seed: int = 0  # prompt order, sampling and minibatch order all follow from it
    batches: int = 40  # rollouts, each followed by its updates (20 - 10 000)
    batch_size: int = 32  # prompts per batch, per process (8 - 512; InstructGPT: 512)
    max_new_tokens: int = 24  # length cap of a completion, in tokens (16 - 256)
    temperature: float = 1.0  # sampling temperature (0.7 - 1.0); log-probabilities use the same one
    ppo_epochs: int = 4  # passes over each batch (1 - 4)
    minibatch_size: int = 8  # completions per optimiser step (4 - 64)
    train: str = "final-norm"  # the policy weights PPO changes: "final-norm" (the gains of its last norm layer) or "all"
    lr: float = 3e-3  # AdamW learning rate of those weights (final-norm: 1e-3 - 1e-2; all: 1e-6 for hub models - 3e-4)
    value_lr: float = 1e-4  # AdamW learning rate of the value model, all of whose weights train (1e-6 - 3e-4)
    max_grad_norm: float = 1.0  # clip the global gradient norm (0.5 - 5)
    kl_coef: float = 0.05  # KL penalty per token, in reward units per nat (0.01 - 0.2; 0 lets it hack)
    kl_target: float | None = None  # None: fixed kl_coef; else the KL per completion to aim at (nats, 1 - 10)
    kl_horizon: int = 10_000  # completions over which the adaptive kl_coef reacts (Ziegler et al.: 10 000)
    clip_eps: float = 0.2  # how far one batch may move a token's probability ratio (0.1 - 0.3)
    clip_eps_value: float = 0.2  # how far one batch may move a value (0.1 - 0.5; in reward units)
    vf_coef: float = 0.1  # weight of the value loss in the total loss (0.1 - 1)
    gamma: float = 1.0  # discount per token (0.99 - 1); the score is the only delayed reward
    lam: float = 0.95  # GAE's bias-variance knob (0.9 - 1)
    whiten_rewards: bool = False  # scale the per-token rewards of a batch to unit variance (step 5)
    whiten_advantages: bool = True  # advantages to mean 0, variance 1 per batch (step 6)
    missing_eos_penalty: float = 1.0  # taken off the score of a completion that never ends (0: off; 0.5 - 2)
    max_kl: float | None = 30.0  # stop when the mean KL per completion exceeds this (nats; None: never)
    max_ratio: float = 10.0  # stop when a minibatch's mean probability ratio exceeds this (2 - 20)
    checkpoint_every: int = 0  # batches between checkpoints, given a checkpoint_dir (0: only at the end)
    log_samples: int = 4  # completions per batch kept in the history's table of samples (0 - 32)


class NonFiniteReward(NonFiniteLoss):
    """A score or a per-token reward is NaN or infinite (a broken reward model or reward function)."""


class KLTooHigh(RuntimeError):
    """The policy moved further from the reference than ``PPOConfig.max_kl`` allows."""


class RatioOutOfRange(RuntimeError):
    """The probability ratio was not 1 before the first update, or grew past ``max_ratio``."""


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a run with different settings; resuming would not continue it."""


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


# ----------------------------------------------------------------------------------------------
# 5. Texts to tokens: what the policy reads, what the reward model reads
# ----------------------------------------------------------------------------------------------
#
# ``tokenizer.chat_prompt``: what the policy continues, the prompt's user turn and the assistant's
# tag. ``reward.score``: the reward model reads the prompt and the completion as the reward stage
# trained it to (``reward.encode``), through its own tokenizer, and scores them. Both are imported
# above.


# ----------------------------------------------------------------------------------------------
# 6. Per-token log-probabilities and values: one forward pass over prompt + completion
# ----------------------------------------------------------------------------------------------


class PolicyAndValue(torch.nn.Module):
    """The two trained models as one module, so that one optimiser and one backward pass (and, under
    ``accelerate``, one distributed wrapper) serve both.

    The value model is a sequence-classification model (a body and a scalar ``score`` head); PPO
    needs its head at every token, not only the last one, so the body and the head are called
    separately.
    """

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        head = getattr(value_model, "score", None)
        if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
            raise ValueError("value_model needs one scalar head named `score`: load it with "
                             "load_model(source, kind='reward') from the SFT or reward model.")

    def forward(self, input_ids, attention_mask, position_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, L, V) of the policy and values (B, L) of the value model at every position."""
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=False).logits
        body = getattr(self.value_model, self.value_model.base_model_prefix)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state  # (B, L, H)
        values = self.value_model.score(hidden).squeeze(-1)  # (B, L)
        return logits, values.float()


def join(query_ids: torch.Tensor, query_mask: torch.Tensor, completion_ids: torch.Tensor,
         completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + completion as one input: ids, attention mask and position ids, each (B, P + C).

    Prompts are left-padded and completions padded after they stop, so padding is masked at both
    ends; positions count real tokens only, as they did during sampling.
    """
    input_ids = torch.cat([query_ids, completion_ids], dim=1)
    attention_mask = torch.cat([query_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def completion_logprobs(logits: torch.Tensor, completion_ids: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """log π(y_t | x, y_<t) of every completion token, (B, C), from the logits (B, C, V) that
    predict them, at the sampling temperature (the distribution the tokens were drawn from)."""
    logprobs = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, C, V)
    return logprobs.gather(-1, completion_ids[..., None]).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy (B, C) of each next-token distribution, in nats."""
    logprobs = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logprobs.exp() * logprobs).sum(-1)


def _predicting(tensor: torch.Tensor, prompt_width: int) -> torch.Tensor:
    # (B, P + C, ...) -> (B, C, ...): position P - 1 + t reads the prompt and y_<t and predicts
    # y_t, so the outputs that predict the completion are P - 1 .. P + C - 2.
    return tensor[:, prompt_width - 1 : -1]


ROLLOUT_LOGITS_BYTES = 64 * 2**20
"""Memory the float32 logits of one chunk of step 3 may take (64 MiB)."""


def rollout_rows(batch: int, width: int, vocab: int, at_least: int) -> int:
    """Rows per chunk of step 3: the whole batch when its logits fit in ``ROLLOUT_LOGITS_BYTES``,
    else as many rows as fit, and never fewer than ``at_least`` (a minibatch, which the updates
    hold with gradients anyway). The embedded model's batch of 32 takes 5 MB and goes through in
    one pass instead of four; a GPT-2 from the hub (50,257 tokens) needs 60 MB a row and keeps
    chunks of a minibatch. The chunk size does not change the numbers (the rows do not meet in a
    forward pass; tests/test_ppo.py checks it)."""
    fit = ROLLOUT_LOGITS_BYTES // max(1, width * vocab * 4)
    return max(1, at_least, min(batch, fit))


@torch.no_grad()
def rollout_forward(both: PolicyAndValue, ref_policy, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    position_ids: torch.Tensor, prompt_width: int, temperature: float, chunk: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3 for a batch: logprobs, ref_logprobs, values and entropies of the completion tokens,
    each (B, C), in chunks of ``chunk`` rows (the logits of a hub model's vocabulary are large)."""
    parts = []
    for first in range(0, len(input_ids), chunk):
        rows = slice(first, first + chunk)
        inputs = dict(input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                      position_ids=position_ids[rows])
        completion_ids = input_ids[rows, prompt_width:]  # (b, C)
        logits, values = both(**inputs)
        logits = _predicting(logits, prompt_width)  # (b, C, V)
        ref_logits = _predicting(ref_policy(**inputs, use_cache=False).logits, prompt_width)
        parts.append((completion_logprobs(logits, completion_ids, temperature),
                      completion_logprobs(ref_logits, completion_ids, temperature),
                      _predicting(values, prompt_width), entropy(logits, temperature)))
    return tuple(torch.cat(column) for column in zip(*parts))


# ----------------------------------------------------------------------------------------------
# 7. Training
# ----------------------------------------------------------------------------------------------


def _seed(*parts: int) -> int:
    """One seed from several integers (run seed, batch, process...), the same on every machine."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part) + 1) % (2**62)
    return seed


def prompt_indices(n_prompts: int, batch: int, size: int, seed: int) -> list[int]:
    """Which prompts batch number ``batch`` uses: ``size`` of them from a shuffled order that is
    reshuffled after every pass over the prompts, so any batch can be found without the others."""
    indices = []
    for i in range(batch * size, (batch + 1) * size):
        epoch, position = divmod(i, n_prompts)
        order = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(_seed(seed, epoch)))
        indices.append(int(order[position]))
    return indices


def _accelerator(device: torch.device):
    """accelerate's Accelerator on the policy's device: a no-op wrapper in one process, data
    parallel under ``accelerate launch``. Without accelerate installed, a stand-in for one process."""
    try:
        from accelerate import Accelerator
    except ImportError:  # pragma: no cover - accelerate is a dependency of the kit
        return _OneProcess(device)
    return Accelerator(cpu=device.type == "cpu")  # a model on the CPU stays there, GPU or not


class _OneProcess:
    """What train_ppo uses of an Accelerator, for one process without accelerate."""

    num_processes, process_index, is_main_process = 1, 0, True

    def __init__(self, device: torch.device):
        self.device = device

    def prepare(self, *things):
        return things

    def unwrap_model(self, model):
        return model

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, tensor, reduction="mean"):
        return tensor.clone()

    def wait_for_everyone(self):
        pass


def _vocab(model) -> int:
    return model.get_input_embeddings().num_embeddings


def adamw(parameters, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW for PPO: no weight decay (the KL penalty is the regulariser), eps 1e-5 as in the
    reference implementations; fused into one kernel per step where torch has one (CPU, CUDA).
    ``parameters`` may be parameter groups with their own ``lr`` (the policy's and the value model's).

    With ``train="all"`` the fused step updates all 105 tensors of the embedded policy and value
    model at once instead of one by one: 7 to 18 ms instead of 51 to 57 ms on 2 CPU cores, a fifth
    of a PPO batch (``bench/HISTORY.md``, "PPO throughput against TRL 1.12").
    """
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(parameters, lr=lr, eps=1e-5, weight_decay=0.0, fused=fused or None)


TRAIN_CHOICES = ("final-norm", "all")


def final_norm(model) -> torch.nn.Parameter:
    """The gains of a causal LM's last normalisation layer (GPT-2's ``ln_f``, Llama's ``norm``).

    Every next-token prediction passes through this one vector just before the output layer, so
    changing it changes how sharply the model commits to its choices on every prompt at once, and
    nothing it can learn there belongs to one question.
    """
    norms = [m for m in model.base_model.modules()
             if "norm" in type(m).__name__.lower() and isinstance(getattr(m, "weight", None), torch.nn.Parameter)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no normalisation layer with a weight: train it "
                         "with PPOConfig(train='all').")
    return norms[-1].weight


def trained_weights(policy, train: str) -> list[torch.nn.Parameter]:
    """The policy's weights that PPO changes (``PPOConfig.train``); the others get requires_grad=False.

    ``"all"`` is ordinary fine-tuning. ``"final-norm"`` trains only ``final_norm(policy)``: a small
    model with all its weights free learns a separate answer for each prompt it practises on
    (``bench/HISTORY.md``, "recipes for PPO"); held to one vector shared by every prompt, it can only learn a
    habit, and a habit carries over to prompts it never saw.
    """
    if train not in TRAIN_CHOICES:
        raise ValueError(f"train={train!r} is not one of {TRAIN_CHOICES}: use 'final-norm' or 'all'.")
    weights = list(policy.parameters()) if train == "all" else [final_norm(policy)]
    chosen = {id(w) for w in weights}
    for w in policy.parameters():
        w.requires_grad_(id(w) in chosen)
    return weights


def ppo_optimizer(policy, value_model, config: PPOConfig, device) -> torch.optim.AdamW:
    """One AdamW for both trained models: the policy's weights that ``config.train`` names at
    ``config.lr``, and every weight of the value model at ``config.value_lr``."""
    for w in value_model.parameters():
        w.requires_grad_(True)
    return adamw([{"params": trained_weights(policy, config.train), "lr": config.lr},
                  {"params": list(value_model.parameters()), "lr": config.value_lr}], config.lr, device)


def train_ppo(policy, ref_policy, reward_model, value_model, tokenizer, prompts: Sequence[str],
              config: PPOConfig | None = None, reward_fn: Callable | None = None,
              watch_fn: Callable | None = None, checkpoint_dir: str | Path | None = None,
              resume: bool = False, reward_tokenizer=None, progress: bool = True,
              on_batch: Callable[[dict], None] | None = None) -> list[dict]:
    """Optimise ``policy`` against the reward with PPO; returns the history (one dict per batch).

    ``prompts`` are user prompts (``"Where does Alice live?"``); the policy reads them through its
    chat template (``tokenizer.chat_prompt``). The reward is ``reward_model``, a sequence-classification
    model reading (prompt, completion) through ``reward_tokenizer`` (default: ``tokenizer``), or
    ``reward_fn(prompts, completions) -> scores``, a plain function of texts (then pass
    ``reward_model=None``). ``watch_fn(prompts, completions) -> numbers`` is only watched, never
    trained on (the rubric score of the simulated person, see ``rubric_watch``).

    ``policy`` and ``value_model`` are trained in place (of the policy, only the weights that
    ``config.train`` names: the others are left with ``requires_grad=False``); ``ref_policy`` and
    ``reward_model`` are only read. With ``checkpoint_dir`` the run saves a checkpoint every
    ``config.checkpoint_every`` batches and at the end; ``resume=True`` continues from it exactly:
    pass models loaded as at the start of the run, and the same prompts.

    Each history entry holds the batch's metrics and ``samples``, a table (list of dicts) of a few
    of its completions; ``on_batch(entry)``, when given, is called with each one as soon as its
    batch is done (in the main process only), to draw live curves. Raises ``NonFiniteReward``/``NonFiniteLoss`` on a NaN or infinity,
    ``KLTooHigh`` past ``config.max_kl`` and ``RatioOutOfRange`` when the probability ratio is
    wrong; each carries the history so far as ``error.history``.
    """
    config = config or PPOConfig()
    if (reward_model is None) == (reward_fn is None):
        raise ValueError("Give the reward as reward_model (a model) or reward_fn (a function of "
                         "texts), exactly one of the two.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir of the run to continue.")
    if not prompts:
        raise ValueError("prompts is empty: give the user prompts to practise on.")
    reward_tokenizer = reward_tokenizer or tokenizer
    accelerator = _accelerator(policy.device)
    device = accelerator.device
    if _vocab(ref_policy) != _vocab(policy) or _vocab(value_model) < len(tokenizer):
        raise ValueError("policy, ref_policy and value_model must read the same tokens: load all "
                         "three from the same model family as the tokenizer.")
    context = context_length(policy)
    longest = max(len(tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False).input_ids)
                  for p in prompts)
    if context and longest + config.max_new_tokens > context:
        raise ValueError(f"A prompt of {longest} tokens plus max_new_tokens={config.max_new_tokens} "
                         f"does not fit the policy's context of {context}: lower max_new_tokens.")

    # The frozen models are only read; all four stay in eval mode, so there is no dropout: the
    # log-probabilities of sampling and of training must be the same function (Huang et al.).
    for model in (policy, ref_policy, value_model) + ((reward_model,) if reward_model is not None else ()):
        model.to(device).eval()
    both = PolicyAndValue(policy, value_model)
    optimizer = ppo_optimizer(policy, value_model, config, device)
    both, optimizer = accelerator.prepare(both, optimizer)
    kl_control = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    history: list[dict] = []
    start = 0
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume:
        if (checkpoint_dir / CHECKPOINT).exists():
            start, history = load_checkpoint(checkpoint_dir, accelerator.unwrap_model(both), optimizer,
                                             kl_control, config, accelerator.process_index)
        elif accelerator.is_main_process:
            print(f"No checkpoint in {checkpoint_dir} yet: starting from the first batch.")

    def stop(error_type, message):
        error = error_type(message)
        error.history = history
        return error

    def check_finite(name: str, tensor: torch.Tensor, batch: int, error_type=NonFiniteLoss):
        # Every process checks, then they agree, so that none waits forever for one that stopped.
        bad = accelerator.reduce((~torch.isfinite(tensor)).sum().float().reshape(1).to(device), "sum")
        if bad.item() > 0:
            raise stop(error_type, f"{name} became NaN or infinite at batch {batch} ({int(bad.item())} "
                       "values): check the reward, then lower lr or raise kl_coef and train again.")

    stops = torch.tensor(sorted({tokenizer.eos_token_id, end_of_turn_id(tokenizer)}))
    strict = next(policy.parameters()).dtype == torch.float32
    ratio_tolerance = 1e-3 if strict else 5e-2  # 16-bit log-probabilities carry ~1e-2 of noise
    global_batch = config.batch_size * accelerator.num_processes
    bar = tqdm(range(start, config.batches), desc="PPO", initial=start, total=config.batches,
               disable=not (progress and accelerator.is_main_process))
    for batch in bar:
        unwrapped = accelerator.unwrap_model(both)
        # 1. Sample completions from the policy (this process's share of the batch's prompts).
        chosen = prompt_indices(len(prompts), batch, global_batch, config.seed)
        mine = chosen[accelerator.process_index * config.batch_size :][: config.batch_size]
        batch_prompts = [prompts[i] for i in mine]
        queries = [chat_prompt(tokenizer, p) for p in batch_prompts]
        out = generate(unwrapped.policy, tokenizer, queries, max_new_tokens=config.max_new_tokens,
                       temperature=config.temperature,
                       seed=_seed(config.seed, batch, accelerator.process_index),
                       batch_size=len(queries))
        # The prompt's attention mask: a prompt may start with a token that is also padding.
        query = tokenizer(queries, return_tensors="pt", padding=True, add_special_tokens=False)
        query_ids, query_mask = query.input_ids.to(device), query.attention_mask.to(device)  # (B, P)
        completion_ids = out.completion_ids.to(device)  # (B, C)
        mask = out.completion_mask.to(device)  # (B, C): 1 on generated tokens, 0 after a stop
        completions = [c.strip() for c in out.completions]
        ended = (torch.isin(completion_ids, stops.to(device)) & mask.bool()).any(dim=1)  # (B,)

        # 2. Score them: the reward model (or function), and the watched rubric.
        if reward_fn is not None:
            scores = torch.as_tensor(list(reward_fn(batch_prompts, completions)), dtype=torch.float32)
        else:
            scores = score(reward_model, reward_tokenizer, batch_prompts, completions)
        scores = scores.to(device)  # (B,)
        check_finite("The score of a completion", scores, batch, NonFiniteReward)
        penalized = scores - config.missing_eos_penalty * (~ended).float()  # (B,)
        watched = None
        if watch_fn is not None:
            watched = torch.as_tensor(list(watch_fn(batch_prompts, completions)), dtype=torch.float32)

        # 3. Log-probabilities under the policy and the reference, values, entropy: no gradients.
        prompt_width = query_ids.shape[1]
        with torch.no_grad():
            input_ids, attention_mask, position_ids = join(query_ids, query_mask, completion_ids, mask)
            logprobs, ref_logprobs, values, entropies = rollout_forward(
                unwrapped, ref_policy, input_ids, attention_mask, position_ids, prompt_width,
                config.temperature, rollout_rows(len(input_ids), input_ids.shape[1], _vocab(policy),
                                                 config.minibatch_size))  # each (B, C)
            values = values * mask  # (B, C)

            # 4. Per-token rewards: −kl_coef·KL on every token, the score on the last.
            kl_coef = kl_control.value
            rewards = kl_penalized_rewards(penalized, logprobs, ref_logprobs, mask, kl_coef)
            check_finite("The per-token reward", rewards, batch, NonFiniteReward)
            kl_per_completion = ((logprobs - ref_logprobs) * mask).sum(dim=1)  # (B,)
            check_finite("The KL to the reference", kl_per_completion, batch)
            kl = accelerator.reduce(kl_per_completion.mean().reshape(1), "mean").item()
            if config.max_kl is not None and kl > config.max_kl:
                raise stop(KLTooHigh, f"The policy's KL to the reference reached {kl:.1f} nats at "
                           f"batch {batch}, past max_kl={config.max_kl}: raise kl_coef or lower lr "
                           "(or raise max_kl to watch it drift on).")

            # 5. Optional whitening of the rewards (scale only: their sign means something).
            if config.whiten_rewards:
                rewards = whiten(rewards, mask, shift_mean=False)

            # 6. Advantages and returns by GAE.
            advantages, returns = compute_gae(rewards, values, mask, config.gamma, config.lam)
            if config.whiten_advantages:
                advantages = whiten(advantages, mask)
            check_finite("An advantage", advantages, batch)

        # 7. Several epochs of minibatch updates: clipped policy loss + vf_coef · clipped value loss.
        stats = {"loss/policy": [], "loss/value": [], "ppo/clipfrac": [], "ppo/approx_kl": [],
                 "ppo/ratio": []}
        size = len(batch_prompts)
        for epoch in range(config.ppo_epochs):
            order = torch.randperm(size, generator=torch.Generator().manual_seed(
                _seed(config.seed, batch, epoch, accelerator.process_index, 7)))
            for first in range(0, size, config.minibatch_size):
                rows = order[first : first + config.minibatch_size].to(device)
                new_logits, new_values = both(input_ids[rows], attention_mask[rows], position_ids[rows])
                new_logprobs = completion_logprobs(_predicting(new_logits, prompt_width),
                                                   completion_ids[rows], config.temperature)
                new_values = _predicting(new_values, prompt_width)
                policy_loss, clipfrac, approx_kl = clipped_policy_loss(
                    new_logprobs, logprobs[rows], advantages[rows], mask[rows], config.clip_eps)
                value_loss = clipped_value_loss(new_values, values[rows], returns[rows], mask[rows],
                                                config.clip_eps_value)
                loss = policy_loss + config.vf_coef * value_loss
                check_finite("The PPO loss", loss.detach(), batch)
                ratios = torch.exp(new_logprobs - logprobs[rows]).detach()  # (b, C)
                ratio = accelerator.reduce(masked_mean(ratios, mask[rows]).reshape(1), "mean").item()
                if epoch == 0 and first == 0:  # the policy has not moved yet: every ratio must be 1
                    off = accelerator.reduce(masked_mean((ratios - 1).abs(), mask[rows]).reshape(1),
                                             "mean").item()
                    if off > ratio_tolerance:
                        raise stop(RatioOutOfRange, f"Before the first update the probability ratio "
                                   f"is {off:.4f} away from 1, not 1, at batch {batch}: sampling and "
                                   "training compute different log-probabilities (dropout on, or a "
                                   "different temperature or padding).")
                if ratio > config.max_ratio:
                    raise stop(RatioOutOfRange, f"The mean probability ratio reached {ratio:.1f} at "
                               f"batch {batch}, past max_ratio={config.max_ratio}: one update moved "
                               "the policy too far; lower lr.")
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(both.parameters(), config.max_grad_norm)
                optimizer.step()
                for key, value in (("loss/policy", policy_loss), ("loss/value", value_loss),
                                   ("ppo/clipfrac", clipfrac), ("ppo/approx_kl", approx_kl)):
                    stats[key].append(value.detach().float())
                stats["ppo/ratio"].append(torch.tensor(ratio))

        # 8. Metrics (averaged over processes) and a table of samples.
        def mean(x: torch.Tensor) -> float:
            return accelerator.reduce(x.float().mean().reshape(1).to(device), "mean").item()

        lengths = mask.sum(dim=1).float()
        entry = {
            "batch": batch,
            "ppo/score": mean(scores),
            "ppo/reward": mean((rewards * mask).sum(dim=1)),
            "ppo/kl": kl,
            "ppo/kl_coef": kl_coef,
            "ppo/entropy": mean(masked_mean(entropies, mask)),
            "ppo/completion_length": mean(lengths),
            "ppo/ended": mean(ended.float()),
            "ppo/explained_variance": mean(torch.tensor(explained_variance(values, returns, mask))),
            **{key: mean(torch.stack(vals)) for key, vals in stats.items()},
        }
        if watched is not None:
            entry["ppo/rubric_score"] = mean(watched)
        entry["samples"] = [
            {"prompt": batch_prompts[i], "completion": completions[i], "score": scores[i].item(),
             "reward": (rewards[i] * mask[i]).sum().item(), "kl": kl_per_completion[i].item(),
             "ended": bool(ended[i]), **({"rubric score": watched[i].item()} if watched is not None else {})}
            for i in range(min(config.log_samples, size))
        ]
        history.append(entry)
        if on_batch is not None and accelerator.is_main_process:
            on_batch(entry)
        kl_control.update(kl, global_batch)
        bar.set_postfix(score=f"{entry['ppo/score']:.2f}", kl=f"{kl:.2f}")
        last = batch == config.batches - 1
        if checkpoint_dir is not None and (last or (config.checkpoint_every
                                                    and (batch + 1) % config.checkpoint_every == 0)):
            save_checkpoint(checkpoint_dir, batch + 1, accelerator.unwrap_model(both), optimizer,
                            kl_control, config, history, accelerator)
    return history


# ----------------------------------------------------------------------------------------------
# 8. Checkpoints: everything a resumed run needs to continue exactly
# ----------------------------------------------------------------------------------------------

CHECKPOINT = "ppo-checkpoint.pt"
RESUMABLE_CHANGES = ("batches", "checkpoint_every", "log_samples")
"""Settings a resumed run may change; any other change would make it a different run."""


def save_checkpoint(directory: Path, next_batch: int, both: PolicyAndValue, optimizer,
                    kl_control: AdaptiveKLController, config: PPOConfig, history: list[dict],
                    accelerator) -> None:
    """Weights, optimiser state, KL coefficient, history and random state, written atomically.

    Sampling and minibatch order are seeded from (seed, batch), so they need no saved state; the
    global torch generator is saved anyway, for models or code that draw from it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(torch.get_rng_state(), directory / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        state = {"next_batch": next_batch, "policy": both.policy.state_dict(),
                 "value_model": both.value_model.state_dict(), "optimizer": optimizer.state_dict(),
                 "kl_controller": kl_control.state_dict(), "config": asdict(config),
                 "history": history}
        tmp = directory / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, directory / CHECKPOINT)  # a run killed while saving keeps the old one
    accelerator.wait_for_everyone()


def load_checkpoint(directory: Path, both: PolicyAndValue, optimizer,
                    kl_control: AdaptiveKLController, config: PPOConfig,
                    process_index: int = 0) -> tuple[int, list[dict]]:
    """Restore a checkpoint into the models, optimiser and KL controller; returns the next batch
    and the history so far."""
    state = torch.load(directory / CHECKPOINT, map_location="cpu", weights_only=False)
    changed = [f.name for f in fields(config) if f.name not in RESUMABLE_CHANGES
               and state["config"].get(f.name) != getattr(config, f.name)]
    if changed:
        raise CheckpointMismatch(f"The checkpoint in {directory} was written with other settings "
                                 f"({', '.join(changed)}): resume with the same PPOConfig, or start "
                                 "a new run in another folder.")
    both.policy.load_state_dict(state["policy"])
    both.value_model.load_state_dict(state["value_model"])
    optimizer.load_state_dict(state["optimizer"])
    kl_control.load_state_dict(state["kl_controller"])
    rng = directory / f"rng-{process_index}.pt"
    if rng.exists():
        torch.set_rng_state(torch.load(rng, weights_only=False))
    return state["next_batch"], list(state["history"])


# ----------------------------------------------------------------------------------------------
# 9. Watching the person's rubric, and the embedded ``ppo`` stage
# ----------------------------------------------------------------------------------------------


def rubric_watch(world) -> Callable[[Sequence[str], Sequence[str]], list[float]]:
    """``watch_fn`` for ``train_ppo``: the rubric score (``World.judge``) of each reply's first line.

    The rubric is the simulated person's taste, which the reward model only imitates; PPO never
    trains on it, so the gap between the two curves shows how far the imitation holds.
    """
    from .evaluate import first_line

    questions = {q.text: q for q in world.questions()}

    def watch(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        missing = [p for p in prompts if p not in questions]
        if missing:
            raise KeyError(f"{missing[0]!r} is not one of the world's questions: watch the rubric "
                           "only on prompts from world.questions().")
        return [world.judge(questions[p], first_line(c)).score for p, c in zip(prompts, completions)]

    return watch


def build_ppo(out_dir: str | Path, config: PPOConfig | None = None, *, sft: str | Path,
              reward: str | Path, progress: bool = True, splits: Sequence[str] = ("feedback",)) -> dict:
    """SFT model + reward model -> PPO on the world's ``feedback`` questions (or ``splits``) -> ``save_pretrained``.

    ``sft`` is the folder of the SFT model, the policy's start and the reference; ``reward`` the
    folder of the reward model, which also starts the value model. ``splits`` are the world's splits whose questions PPO practises on (``heldout`` is
    refused: it is what the result is judged on). The default is the questions whose replies the
    reward model was trained on, where it judges best: on the facts of the ``ppo`` questions,
    which it never saw ranked, its advice is little better than noise and PPO gains little there
    (``bench/HISTORY.md``, "PPO that moves only the final norm's gains"). Returns the metadata; the caller writes it.
    """
    from .artifacts import read_metadata
    from .models import load_model, load_tokenizer
    from .runtime import seed_everything
    from .world import World

    config = config or PPOConfig()
    if isinstance(splits, str) or not splits or "heldout" in splits:
        raise ValueError(f"splits must list the world's splits to practise on, without 'heldout' "
                         f"(the questions every stage is judged on), not {splits!r}.")
    policy_dir, reward_dir = sft, reward
    started = time.perf_counter()
    world = World(seed=read_metadata(policy_dir).get("seed", 0))
    prompts = [q.text for split in splits for q in world.questions(split)]
    tokenizer = load_tokenizer(policy_dir)
    seed_everything(config.seed)
    policy, ref_policy = load_model(policy_dir), load_model(policy_dir)
    reward_model = load_model(reward_dir, kind="reward")
    reward_tokenizer = load_tokenizer(reward_dir)
    # As InstructGPT, the value model starts as the reward model, when it reads the policy's tokens;
    # a reward model with another tokenizer cannot, and the value model is the SFT body instead.
    same_tokens = reward_tokenizer.get_vocab() == tokenizer.get_vocab()
    value_model = load_model(reward_dir if same_tokens else policy_dir, kind="reward")
    history = train_ppo(policy, ref_policy, reward_model, value_model, tokenizer, prompts, config,
                        watch_fn=rubric_watch(world), reward_tokenizer=reward_tokenizer,
                        progress=progress)
    policy.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    final = history[-1]
    return {
        "config": asdict(config),
        "seed": world.seed,
        "policy_source": str(policy_dir),
        "reward_source": str(reward_dir),
        "value_source": str(reward_dir if same_tokens else policy_dir),
        "prompts": len(prompts),
        "splits": list(splits),
        "final": {k: v for k, v in final.items() if k != "samples"},
        "seconds": time.perf_counter() - started,
        "history": [{k: v for k, v in h.items() if k != "samples"} for h in history],
    }

