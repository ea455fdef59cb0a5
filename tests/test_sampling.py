"""Sampling: the filters keep what they should, and generation is batched, seeded and stops."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.sampling import generate, next_token_distribution, sample_next, softmax_with_temperature, top_k_filter, top_p_filter


def test_softmax_with_temperature_by_hand():
    logits = torch.tensor([2.0, 1.0, 0.0])
    p = softmax_with_temperature(logits, 0.5)
    e = [math.exp(4.0), math.exp(2.0), 1.0]
    torch.testing.assert_close(p, torch.tensor([x / sum(e) for x in e]))
    assert softmax_with_temperature(logits, 100.0).max() < 0.34  # nearly uniform
    with pytest.raises(ValueError, match="temperature must be > 0"):
        softmax_with_temperature(logits, 0.0)


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 1.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, True, False, False]]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    def kept(p):
        return torch.isfinite(top_p_filter(logits, p)).tolist()
    assert kept(0.5) == [True, False, False, False]  # 0.5 already reaches p
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.8) == [True, True, False, False]  # 0.5 + 0.3 = 0.8 reaches p exactly
    assert kept(0.81) == [True, True, True, False]
    assert kept(0.01) == [True, False, False, False]  # the top token is always kept
    assert kept(1.0) == [True] * 4
    # rows are filtered independently and the vocabulary order is preserved
    two = torch.stack([logits, logits.flip(0)])
    assert torch.isfinite(top_p_filter(two, 0.6)).tolist() == [[True, True, False, False], [False, False, True, True]]


def test_greedy_and_seeded_sampling():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = [sample_next(logits, 1.0, generator=g1).tolist() for _ in range(20)]
    b = [sample_next(logits, 1.0, generator=g2).tolist() for _ in range(20)]
    assert a == b
    # top_k=1 is greedy whatever the temperature
    assert sample_next(logits, 2.0, top_k=1).tolist() == [1, 0]


@pytest.fixture(scope="module")
def tiny(tiny_base_dir):
    return load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)


def test_generation_is_batched_seeded_and_stops(tiny):
    model, tokenizer = tiny
    prompts = ["Where does Alice live?\n", "Q: What is Bruno's job?\nA:", "Hello"]
    a = generate(model, tokenizer, prompts, max_new_tokens=12, seed=5)
    b = generate(model, tokenizer, prompts, max_new_tokens=12, seed=5)
    assert a.completions == b.completions
    assert a.completion_ids.shape[0] == 3 and a.completion_ids.shape == a.completion_mask.shape
    # a batch of one gives the same greedy text as the same prompt inside a padded batch
    greedy = generate(model, tokenizer, prompts, max_new_tokens=8, temperature=0)
    for i, p in enumerate(prompts):
        alone = generate(model, tokenizer, [p], max_new_tokens=8, temperature=0)
        assert alone.completions[0] == greedy.completions[i]
    # after a stop token only padding follows, and the mask says so
    eos = tokenizer.eos_token_id
    stopped = generate(model, tokenizer, prompts, max_new_tokens=6, seed=0, stop_ids=[t for t in range(len(tokenizer))])
    assert stopped.completion_mask[:, 0].all() and not stopped.completion_mask[:, 1:].any()
    assert (stopped.completion_ids[:, 1:] == tokenizer.pad_token_id).all() and eos == tokenizer.pad_token_id


def test_long_prompt_lists_are_split_into_batches(tiny):
    model, tokenizer = tiny
    prompts = [f"Q: Where does {n} live?\nA:" for n in ("Alice", "Bruno", "Chloe", "Dario", "Elena")]
    whole = generate(model, tokenizer, prompts, max_new_tokens=5, temperature=0)
    split = generate(model, tokenizer, prompts, max_new_tokens=5, temperature=0, batch_size=2)
    assert whole.completions == split.completions
    assert split.prompt_ids.shape[0] == 5


def test_next_token_distribution_is_a_distribution(tiny):
    model, tokenizer = tiny
    top = next_token_distribution(model, tokenizer, "Alice lives in", top=len(tokenizer))
    assert abs(sum(p for _, p in top) - 1.0) < 1e-4
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


def test_generation_never_runs_past_the_context(tiny):
    model, tokenizer = tiny
    limit = model.config.n_positions
    long_prompt = "Alice lives in Brookfield. " * 200
    ids = tokenizer(long_prompt, add_special_tokens=False).input_ids
    fits = tokenizer.decode(ids[: limit - 3])
    out = generate(model, tokenizer, [fits], max_new_tokens=50, seed=0, stop_ids=[])
    assert out.completion_ids.shape[1] <= 3
    with pytest.raises(ValueError, match="reads at most"):
        generate(model, tokenizer, [long_prompt], max_new_tokens=5)


def test_end_of_turn_token_of_hub_chat_templates(tiny):
    from rlhf_kit.tokenizer import end_of_turn_id

    _, tokenizer = tiny
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == "<|end|>"

    class Fake:
        eos_token_id = 7

        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    assert end_of_turn_id(Fake({"<|im_end|>": 3})) == 3
    assert end_of_turn_id(Fake({"<|eot_id|>": 9, "hello": 1})) == 9
    assert end_of_turn_id(Fake({"hello": 1})) == 7
