"""Sampling: from a model's logits to text.

At every step a language model outputs one logit per token of its vocabulary. Text comes out of
a loop: turn the last position's logits into probabilities, pick a token, append it, repeat.

    p_i = exp(z_i / T) / sum_j exp(z_j / T)          (softmax with temperature T)

* **greedy** picks the most likely token (T -> 0);
* **temperature** T < 1 sharpens the distribution, T > 1 flattens it;
* **top-k** keeps the k most likely tokens;
* **top-p** (nucleus) keeps the smallest set of most likely tokens whose probabilities add up to
  at least p.

Filters return logits with the removed tokens set to ``-inf``, so they compose:
``top_p_filter(top_k_filter(logits, 50), 0.9)``. ``generate`` runs the loop for a batch of
prompts with the model's key/value cache, so each new token costs one position, not the whole
text. Taught in ``course/01_next_token_prediction.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokenizer import end_of_turn_id

# ----------------------------------------------------------------------------------------------
# 1. Logits to probabilities, and the filters
# ----------------------------------------------------------------------------------------------


def softmax_with_temperature(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Probabilities from logits ``(..., V)`` at ``temperature`` (> 0), over the last dimension."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0; use greedy decoding for temperature 0.")
    return torch.softmax(logits / temperature, dim=-1)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row ``(..., V)``; set the others to ``-inf``."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1): the k-th largest logit
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability adds up to at least ``p``.

    The most likely token is always kept, so the result is never empty.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Probability mass strictly before each token: a token is kept while that mass is below p.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    remove_sorted = mass_before >= p
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``logits`` ``(B, V)``; ``temperature=0`` means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# 2. The next-token distribution of a prompt
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def next_token_distribution(model, tokenizer, prompt: str, temperature: float = 1.0,
                            top: int = 10) -> list[tuple[str, float]]:
    """The ``top`` most likely next tokens after ``prompt``, as (token text, probability)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
    logits = model(ids).logits[0, -1].float()  # (V,): the prediction after the last token
    probs = softmax_with_temperature(logits, temperature)
    values, indices = probs.topk(top)
    return [(tokenizer.decode([i]), v) for i, v in zip(indices.tolist(), values.tolist())]


# ----------------------------------------------------------------------------------------------
# 3. Batched generation
# ----------------------------------------------------------------------------------------------


@dataclass
class Generation:
    """What ``generate`` returns: the texts, and the token ids for stages that train on them."""

    prompts: list[str]
    completions: list[str]
    prompt_ids: torch.Tensor  # (B, P): left-padded prompts
    completion_ids: torch.Tensor  # (B, C): completions, padded after each one stops
    completion_mask: torch.Tensor  # (B, C): 1 for generated tokens, 0 for padding after a stop


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = 0,
             stop_ids: list[int] | None = None, batch_size: int = 64) -> Generation:
    """Complete every prompt; a row stops at EOS, at ``<|end|>`` or at any of ``stop_ids``.

    Prompts are left-padded so that all of them end at the same position; position ids are
    computed from the attention mask so padding does not shift them. With a ``seed`` the same
    call gives the same completions on the same machine.
    """
    if len(prompts) > batch_size:  # keep memory flat for long lists of prompts
        parts = [generate(model, tokenizer, prompts[i : i + batch_size], max_new_tokens,
                          temperature, top_k, top_p, None if seed is None else seed + i,
                          stop_ids, batch_size) for i in range(0, len(prompts), batch_size)]
        return _concat(parts, tokenizer.pad_token_id)
    device = model.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    stops = torch.tensor(sorted({tokenizer.eos_token_id, end_of_turn_id(tokenizer), *(stop_ids or [])}),
                         device=device)
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    max_new_tokens = _fit_context(model, enc.input_ids.shape[1], max_new_tokens)
    attention_mask = enc.attention_mask  # (B, P)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    out = model(input_ids=enc.input_ids, attention_mask=attention_mask,
                position_ids=position_ids, use_cache=True)
    batch = len(prompts)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens, new_mask = [], []
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()  # (B, V)
        token = sample_next(logits, temperature, top_k, top_p, generator)
        token = token.masked_fill(done, tokenizer.pad_token_id)  # finished rows only pad
        new_tokens.append(token)
        new_mask.append(~done)
        done = done | torch.isin(token, stops)
        if done.all():
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        position_ids = position_ids[:, -1:] + 1
        out = model(input_ids=token[:, None], attention_mask=attention_mask,
                    position_ids=position_ids, cache=out.cache, use_cache=True)
    completion_ids = torch.stack(new_tokens, dim=1)  # (B, C)
    completion_mask = torch.stack(new_mask, dim=1).long()  # (B, C)
    texts = [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
             for ids, mask in zip(completion_ids, completion_mask)]
    return Generation(list(prompts), texts, enc.input_ids, completion_ids, completion_mask)


def context_length(model) -> int | None:
    """How many positions the model can read (``n_positions`` for GPT-2, else the config's max)."""
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def _fit_context(model, prompt_length: int, max_new_tokens: int) -> int:
    """Shorten ``max_new_tokens`` so prompt + completion fit the model's context; refuse a prompt
    that fills it already (a GPT-2 has no position embedding past its context)."""
    limit = context_length(model)
    if limit is None:
        return max_new_tokens
    if prompt_length >= limit:
        raise ValueError(f"The longest prompt is {prompt_length} tokens but this model reads at most {limit}: "
                         "shorten the prompt (for example fewer turns or few-shot examples).")
    return min(max_new_tokens, limit - prompt_length)


def _concat(parts: list[Generation], pad_id: int) -> Generation:
    """Join generations of several batches, padding ids to a common width."""

    def pad(tensors, left):
        width = max(t.shape[1] for t in tensors)
        out = []
        for t in tensors:
            filler = torch.full((t.shape[0], width - t.shape[1]), pad_id, dtype=t.dtype, device=t.device)
            out.append(torch.cat([filler, t] if left else [t, filler], dim=1))
        return torch.cat(out)

    masks = [p.completion_mask for p in parts]
    width = max(m.shape[1] for m in masks)
    masks = [torch.cat([m, m.new_zeros(m.shape[0], width - m.shape[1])], dim=1) for m in masks]
    return Generation(
        [p for part in parts for p in part.prompts],
        [c for part in parts for c in part.completions],
        pad([p.prompt_ids for p in parts], left=True),
        pad([p.completion_ids for p in parts], left=False),
        torch.cat(masks),
    )
