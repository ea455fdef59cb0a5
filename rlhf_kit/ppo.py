"""PPO: the SFT model learns to write what the reward model scores high, on a KL leash.

The reward model of lesson 5 can score any completion, so the SFT model can now practise: it
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
clipped value loss, (8) metrics and a table of samples: each step is one method of ``_Run``. The
maths of steps 4 to 7 are small pure functions in ``ppo_math.py``; the forward pass of step 3,
which weights train and their optimiser are in ``ppo_model.py``.

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

from .ppo_math import (AdaptiveKLController, clipped_policy_loss, clipped_value_loss, compute_gae,
                       explained_variance, kl_penalized_rewards, masked_mean, whiten)
from .ppo_model import (PolicyAndValue, accelerator_for, completion_logprobs, join, ppo_optimizer, predicting,
                        rollout_forward, rollout_rows, vocab_size)
from .ppo_model import final_norm  # noqa: F401 (lesson 6 reads it as ppo.final_norm)
from .reward_eval import score  # section 5
from .runtime import NonFiniteLoss, progress_bar  # a loss, KL, value or advantage became NaN or infinite
from .sampling import context_length, generate
from .tokenizer import chat_prompt, end_of_turn_id  # section 5


@dataclass
class PPOConfig:
    """Everything that decides a PPO run. Defaults aim at minutes for the embedded model on a laptop CPU."""

    seed: int = 0  # prompt order, sampling and minibatch order all follow from it
    batches: int = 40  # rollouts, each followed by its updates (20 - 10 000)
    batch_size: int = 32  # prompts per batch, per process (8 - 512; InstructGPT: 512)
    max_new_tokens: int = 32  # length cap of a completion, in tokens (16 - 256)
    temperature: float = 1.0  # sampling temperature (0.7 - 1.0); log-probabilities use the same one
    ppo_epochs: int = 4  # passes over each batch (1 - 4)
    minibatch_size: int = 8  # completions per optimiser step (4 - 64)
    train: str = "all"  # the policy weights PPO changes: "all", as InstructGPT, or "final-norm" (the gains of its last norm layer)
    lr: float = 1e-5  # AdamW learning rate of those weights (all: 1e-6 for hub models - 3e-5; final-norm: 1e-3 - 1e-2)
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
# 1. Texts to tokens: what the policy reads, what the reward model reads
# ----------------------------------------------------------------------------------------------
#
# ``tokenizer.chat_prompt``: what the policy continues, the prompt's user turn and the assistant's
# tag. ``reward_eval.score``: the reward model reads the prompt and the completion as the reward stage
# trained it to (``pairs.encode``), through its own tokenizer, and scores them. Both are imported
# above.


# ----------------------------------------------------------------------------------------------
# 2. Training: one batch in eight steps
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


@dataclass
class Rollout:
    """Step 1 of one batch: the prompts, what the policy wrote, and the tensors the later steps read."""

    prompts: list[str]
    completions: list[str]  # stripped of spaces at both ends, as they are scored
    query_ids: torch.Tensor  # (B, P), left-padded
    query_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, C)
    mask: torch.Tensor  # (B, C): 1 on generated tokens, 0 after a stop
    ended: torch.Tensor  # (B,): the completion stopped by itself (EOS or end of turn)


@dataclass
class Experience:
    """Steps 3 to 6 of one batch, computed without gradients: what the updates of step 7 learn from."""

    input_ids: torch.Tensor  # (B, P + C): prompt and completion as one input
    attention_mask: torch.Tensor  # (B, P + C)
    position_ids: torch.Tensor  # (B, P + C)
    logprobs: torch.Tensor  # (B, C): under the policy that sampled, the "old" policy of the ratio
    ref_logprobs: torch.Tensor  # (B, C): under the frozen reference
    values: torch.Tensor  # (B, C): the value model's, 0 on padding
    entropies: torch.Tensor  # (B, C)
    rewards: torch.Tensor  # (B, C): per token, after the optional whitening
    kl_per_completion: torch.Tensor  # (B,): summed over each completion's tokens
    kl: float  # the batch's mean KL, over every process
    kl_coef: float  # the coefficient this batch paid
    advantages: torch.Tensor  # (B, C)
    returns: torch.Tensor  # (B, C)


class _Run:
    """What each step of one ``train_ppo`` run reads: the models, the settings and the accelerator,
    and the guards that stop the run with a sentence (the history so far goes with the error)."""

    def __init__(self, config: PPOConfig, accelerator, both, optimizer, ref_policy, tokenizer,
                 reward_model, reward_tokenizer, reward_fn, watch_fn, history: list[dict]):
        self.config, self.accelerator, self.device = config, accelerator, accelerator.device
        self.both, self.optimizer, self.ref_policy, self.tokenizer = both, optimizer, ref_policy, tokenizer
        self.reward_model, self.reward_tokenizer = reward_model, reward_tokenizer
        self.reward_fn, self.watch_fn, self.history = reward_fn, watch_fn, history
        self.stops = torch.tensor(sorted({tokenizer.eos_token_id, end_of_turn_id(tokenizer)}))
        strict = next(accelerator.unwrap_model(both).policy.parameters()).dtype == torch.float32
        self.ratio_tolerance = 1e-3 if strict else 5e-2  # 16-bit log-probabilities carry ~1e-2 of noise
        self.global_batch = config.batch_size * accelerator.num_processes

    def stop(self, error_type, message):
        error = error_type(message)
        error.history = self.history
        return error

    def check_finite(self, name: str, tensor: torch.Tensor, batch: int, error_type=NonFiniteLoss):
        # Every process checks, then they agree, so that none waits forever for one that stopped.
        bad = self.accelerator.reduce((~torch.isfinite(tensor)).sum().float().reshape(1).to(self.device), "sum")
        if bad.item() > 0:
            raise self.stop(error_type, f"{name} became NaN or infinite at batch {batch} ({int(bad.item())} "
                            "values): check the reward, then lower lr or raise kl_coef and train again.")

    def mean(self, x: torch.Tensor) -> float:
        """The mean of ``x`` over this process's rows and every process's."""
        return self.accelerator.reduce(x.float().mean().reshape(1).to(self.device), "mean").item()

    def sample(self, prompts: Sequence[str], batch: int) -> Rollout:
        """Step 1: this process's share of the batch's prompts, and the policy's completions."""
        config, accelerator, tokenizer, device = self.config, self.accelerator, self.tokenizer, self.device
        chosen = prompt_indices(len(prompts), batch, self.global_batch, config.seed)
        mine = chosen[accelerator.process_index * config.batch_size :][: config.batch_size]
        batch_prompts = [prompts[i] for i in mine]
        queries = [chat_prompt(tokenizer, p) for p in batch_prompts]
        out = generate(accelerator.unwrap_model(self.both).policy, tokenizer, queries,
                       max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                       seed=_seed(config.seed, batch, accelerator.process_index), batch_size=len(queries))
        # The prompt's attention mask: a prompt may start with a token that is also padding.
        query = tokenizer(queries, return_tensors="pt", padding=True, add_special_tokens=False)
        completion_ids, mask = out.completion_ids.to(device), out.completion_mask.to(device)
        ended = (torch.isin(completion_ids, self.stops.to(device)) & mask.bool()).any(dim=1)
        return Rollout(batch_prompts, [c.strip() for c in out.completions], query.input_ids.to(device),
                       query.attention_mask.to(device), completion_ids, mask, ended)

    def score(self, rollout: Rollout, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Step 2: the reward model's (or function's) score of each completion (B,), and the
        watched rubric's (B,), or None without ``watch_fn``."""
        if self.reward_fn is not None:
            scores = torch.as_tensor(list(self.reward_fn(rollout.prompts, rollout.completions)),
                                     dtype=torch.float32)
        else:
            scores = score(self.reward_model, self.reward_tokenizer, rollout.prompts, rollout.completions)
        scores = scores.to(self.device)  # (B,)
        self.check_finite("The score of a completion", scores, batch, NonFiniteReward)
        watched = None
        if self.watch_fn is not None:
            watched = torch.as_tensor(list(self.watch_fn(rollout.prompts, rollout.completions)),
                                      dtype=torch.float32)
        return scores, watched

    def forward(self, rollout: Rollout) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Step 3: the joined inputs, and log-probabilities under the policy and the reference,
        values (0 on padding) and entropies, each (B, C)."""
        inputs = join(rollout.query_ids, rollout.query_mask, rollout.completion_ids, rollout.mask)
        input_ids = inputs[0]
        chunk = rollout_rows(len(input_ids), input_ids.shape[1], vocab_size(self.ref_policy),  # the policy's too
                             self.config.minibatch_size)
        logprobs, ref_logprobs, values, entropies = rollout_forward(
            self.accelerator.unwrap_model(self.both), self.ref_policy, *inputs, rollout.query_ids.shape[1],
            self.config.temperature, chunk)
        return inputs, (logprobs, ref_logprobs, values * rollout.mask, entropies)

    def rewards(self, scores: torch.Tensor, rollout: Rollout, logprobs: torch.Tensor,
                ref_logprobs: torch.Tensor, kl_coef: float, batch: int):
        """Step 4: per-token rewards (B, C), −kl_coef·KL on every token and the score, less the
        penalty of a completion that never ended, on the last; and the KL of each completion and
        of the batch, which must stay under ``max_kl``."""
        config, mask = self.config, rollout.mask
        penalized = scores - config.missing_eos_penalty * (~rollout.ended).float()  # (B,)
        rewards = kl_penalized_rewards(penalized, logprobs, ref_logprobs, mask, kl_coef)
        self.check_finite("The per-token reward", rewards, batch, NonFiniteReward)
        kl_per_completion = ((logprobs - ref_logprobs) * mask).sum(dim=1)  # (B,)
        self.check_finite("The KL to the reference", kl_per_completion, batch)
        kl = self.accelerator.reduce(kl_per_completion.mean().reshape(1), "mean").item()
        if config.max_kl is not None and kl > config.max_kl:
            raise self.stop(KLTooHigh, f"The policy's KL to the reference reached {kl:.1f} nats at "
                            f"batch {batch}, past max_kl={config.max_kl}: raise kl_coef or lower lr "
                            "(or raise max_kl to watch it drift on).")
        return rewards, kl_per_completion, kl

    def advantages(self, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, batch: int):
        """Step 6: advantages (whitened, by default) and returns (B, C) by GAE."""
        advantages, returns = compute_gae(rewards, values, mask, self.config.gamma, self.config.lam)
        if self.config.whiten_advantages:
            advantages = whiten(advantages, mask)
        self.check_finite("An advantage", advantages, batch)
        return advantages, returns

    def update(self, rollout: Rollout, experience: Experience, batch: int) -> dict[str, list[torch.Tensor]]:
        """Step 7: ``ppo_epochs`` passes of minibatch updates of the clipped policy loss plus
        vf_coef times the clipped value loss; returns each minibatch's losses and statistics."""
        config, accelerator, e, mask = self.config, self.accelerator, experience, rollout.mask
        prompt_width = rollout.query_ids.shape[1]
        stats = {"loss/policy": [], "loss/value": [], "ppo/clipfrac": [], "ppo/approx_kl": [],
                 "ppo/ratio": []}
        size = len(rollout.prompts)
        for epoch in range(config.ppo_epochs):
            order = torch.randperm(size, generator=torch.Generator().manual_seed(
                _seed(config.seed, batch, epoch, accelerator.process_index, 7)))
            for first in range(0, size, config.minibatch_size):
                rows = order[first : first + config.minibatch_size].to(self.device)
                new_logits, new_values = self.both(e.input_ids[rows], e.attention_mask[rows],
                                                   e.position_ids[rows])
                new_logprobs = completion_logprobs(predicting(new_logits, prompt_width),
                                                   rollout.completion_ids[rows], config.temperature)
                new_values = predicting(new_values, prompt_width)
                policy_loss, clipfrac, approx_kl = clipped_policy_loss(
                    new_logprobs, e.logprobs[rows], e.advantages[rows], mask[rows], config.clip_eps)
                value_loss = clipped_value_loss(new_values, e.values[rows], e.returns[rows], mask[rows],
                                                config.clip_eps_value)
                loss = policy_loss + config.vf_coef * value_loss
                self.check_finite("The PPO loss", loss.detach(), batch)
                ratios = torch.exp(new_logprobs - e.logprobs[rows]).detach()  # (b, C)
                ratio = accelerator.reduce(masked_mean(ratios, mask[rows]).reshape(1), "mean").item()
                if epoch == 0 and first == 0:  # the policy has not moved yet: every ratio must be 1
                    off = accelerator.reduce(masked_mean((ratios - 1).abs(), mask[rows]).reshape(1),
                                             "mean").item()
                    if off > self.ratio_tolerance:
                        raise self.stop(RatioOutOfRange, f"Before the first update the probability ratio "
                                        f"is {off:.4f} away from 1, not 1, at batch {batch}: sampling and "
                                        "training compute different log-probabilities (dropout on, or a "
                                        "different temperature or padding).")
                if ratio > config.max_ratio:
                    raise self.stop(RatioOutOfRange, f"The mean probability ratio reached {ratio:.1f} at "
                                    f"batch {batch}, past max_ratio={config.max_ratio}: one update moved "
                                    "the policy too far; lower lr.")
                self.optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(self.both.parameters(), config.max_grad_norm)
                self.optimizer.step()
                for key, value in (("loss/policy", policy_loss), ("loss/value", value_loss),
                                   ("ppo/clipfrac", clipfrac), ("ppo/approx_kl", approx_kl)):
                    stats[key].append(value.detach().float())
                stats["ppo/ratio"].append(torch.tensor(ratio))
        return stats

    def metrics(self, batch: int, rollout: Rollout, scores: torch.Tensor, watched: torch.Tensor | None,
                experience: Experience, stats: dict[str, list[torch.Tensor]]) -> dict:
        """Step 8: the batch's history entry, averaged over processes, with a table of samples."""
        e, mask, mean = experience, rollout.mask, self.mean
        entry = {
            "batch": batch,
            "ppo/score": mean(scores),
            "ppo/reward": mean((e.rewards * mask).sum(dim=1)),
            "ppo/kl": e.kl,
            "ppo/kl_coef": e.kl_coef,
            "ppo/entropy": mean(masked_mean(e.entropies, mask)),
            "ppo/completion_length": mean(mask.sum(dim=1).float()),
            "ppo/ended": mean(rollout.ended.float()),
            "ppo/explained_variance": mean(torch.tensor(explained_variance(e.values, e.returns, mask))),
            **{key: mean(torch.stack(vals)) for key, vals in stats.items()},
        }
        if watched is not None:
            entry["ppo/rubric_score"] = mean(watched)
        entry["samples"] = [
            {"prompt": rollout.prompts[i], "completion": rollout.completions[i], "score": scores[i].item(),
             "reward": (e.rewards[i] * mask[i]).sum().item(), "kl": e.kl_per_completion[i].item(),
             "ended": bool(rollout.ended[i]),
             **({"rubric score": watched[i].item()} if watched is not None else {})}
            for i in range(min(self.config.log_samples, len(rollout.prompts)))
        ]
        return entry


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
    batch is done (in the main process only), to draw live curves. Raises ``NonFiniteReward`` or
    ``NonFiniteLoss`` on a NaN or infinity, ``KLTooHigh`` past ``config.max_kl`` and
    ``RatioOutOfRange`` when the probability ratio is wrong; each carries the history so far as
    ``error.history``.
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
    accelerator = accelerator_for(policy.device)
    device = accelerator.device
    if vocab_size(ref_policy) != vocab_size(policy) or vocab_size(value_model) < len(tokenizer):
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
    run = _Run(config, accelerator, both, optimizer, ref_policy, tokenizer, reward_model, reward_tokenizer,
               reward_fn, watch_fn, history)

    bar = progress_bar(range(start, config.batches), desc="PPO", initial=start, total=config.batches,
               disable=not (progress and accelerator.is_main_process))
    for batch in bar:
        # 1. Sample completions from the policy (this process's share of the batch's prompts).
        rollout = run.sample(prompts, batch)
        # 2. Score them: the reward model (or function), and the watched rubric.
        scores, watched = run.score(rollout, batch)
        with torch.no_grad():
            # 3. Log-probabilities under the policy and the reference, values, entropy.
            inputs, (logprobs, ref_logprobs, values, entropies) = run.forward(rollout)
            # 4. Per-token rewards: −kl_coef·KL on every token, the score on the last.
            kl_coef = kl_control.value
            rewards, kl_per_completion, kl = run.rewards(scores, rollout, logprobs, ref_logprobs, kl_coef, batch)
            # 5. Optional whitening of the rewards (scale only: their sign means something).
            if config.whiten_rewards:
                rewards = whiten(rewards, rollout.mask, shift_mean=False)
            # 6. Advantages and returns by GAE.
            advantages, returns = run.advantages(rewards, values, rollout.mask, batch)
        experience = Experience(*inputs, logprobs, ref_logprobs, values, entropies, rewards, kl_per_completion,
                                kl, kl_coef, advantages, returns)
        # 7. Several epochs of minibatch updates: clipped policy loss + vf_coef · clipped value loss.
        stats = run.update(rollout, experience, batch)
        # 8. Metrics (averaged over processes) and a table of samples.
        entry = run.metrics(batch, rollout, scores, watched, experience, stats)
        history.append(entry)
        if on_batch is not None and accelerator.is_main_process:
            on_batch(entry)
        kl_control.update(kl, run.global_batch)
        bar.set_postfix(score=f"{entry['ppo/score']:.2f}", kl=f"{kl:.2f}")
        last = batch == config.batches - 1
        if checkpoint_dir is not None and (last or (config.checkpoint_every
                                                    and (batch + 1) % config.checkpoint_every == 0)):
            save_checkpoint(checkpoint_dir, batch + 1, accelerator.unwrap_model(both), optimizer,
                            kl_control, config, history, accelerator)
    return history


# ----------------------------------------------------------------------------------------------
# 3. Checkpoints: everything a resumed run needs to continue exactly
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
# 4. Watching the person's rubric, and the embedded ``ppo`` stage
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
              reward: str | Path, progress: bool = True, n_prompts: int = 2000) -> dict:
    """SFT model + reward model -> PPO on the world's training tasks -> ``save_pretrained``.

    ``sft`` is the folder of the SFT model, the policy's start and the reference; ``reward`` the
    folder of the reward model, which also starts the value model. PPO practises on ``n_prompts``
    tasks of the behaviour world's ``train`` split (``behaviours.sample_tasks``, the kinds at the
    shares the rankings had): the people, unknown names and templates the reward model was
    trained on. The ``heldout`` tasks, on which every stage is judged, never appear. Returns the
    metadata; the caller writes it.
    """
    from .artifacts import read_metadata
    from .behaviours import BehaviourWorld, sample_tasks
    from .models import load_model, load_tokenizer
    from .runtime import seed_everything

    config = config or PPOConfig()
    policy_dir, reward_dir = sft, reward
    started = time.perf_counter()
    world = BehaviourWorld(seed=read_metadata(policy_dir).get("seed", 0))
    prompts = [t.text for t in sample_tasks(world, n_prompts, "train", config.seed + 1)]
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
        "final": {k: v for k, v in final.items() if k != "samples"},
        "seconds": time.perf_counter() - started,
        "history": [{k: v for k, v in h.items() if k != "samples"} for h in history],
    }

