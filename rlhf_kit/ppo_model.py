"""The models PPO trains, and how: one forward pass over prompt and completion, which weights
move, one optimiser for the policy and the value model, and the accelerator that runs it.

``PolicyAndValue`` joins the policy and the value model into one module, so that one optimiser and
one backward pass serve both; ``rollout_forward`` is step 3 of a PPO batch (``ppo.train_ppo``):
the log-probabilities of the completion tokens under the policy and the frozen reference, the
values and the entropies, without gradients. ``trained_weights`` and ``ppo_optimizer`` decide
what the updates of step 7 change (``PPOConfig.train``). Taught in lesson 6.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .ppo import PPOConfig


# ----------------------------------------------------------------------------------------------
# 1. Per-token log-probabilities and values: one forward pass over prompt + completion
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


def predicting(tensor: torch.Tensor, prompt_width: int) -> torch.Tensor:
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
        logits = predicting(logits, prompt_width)  # (b, C, V)
        ref_logits = predicting(ref_policy(**inputs, use_cache=False).logits, prompt_width)
        parts.append((completion_logprobs(logits, completion_ids, temperature),
                      completion_logprobs(ref_logits, completion_ids, temperature),
                      predicting(values, prompt_width), entropy(logits, temperature)))
    return tuple(torch.cat(column) for column in zip(*parts))


# ----------------------------------------------------------------------------------------------
# 2. The trained weights, their optimiser, and the accelerator
# ----------------------------------------------------------------------------------------------


def vocab_size(model) -> int:
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


def accelerator_for(device: torch.device):
    """accelerate's Accelerator on the policy's device: a no-op wrapper in one process, data
    parallel under ``accelerate launch``. Without accelerate installed, a stand-in for one process."""
    try:
        from accelerate import Accelerator
    except ImportError:  # pragma: no cover - accelerate is a dependency of the kit
        return OneProcess(device)
    return Accelerator(cpu=device.type == "cpu")  # a model on the CPU stays there, GPU or not


class OneProcess:
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
