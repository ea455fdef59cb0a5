"""Pretraining: the loss by hand, the schedule, and a tiny run that learns, deterministically."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from rlhf_kit.artifacts import read_metadata
from rlhf_kit.models import load_tokenizer, new_gpt
from rlhf_kit.pretrain import NonFiniteLoss, PretrainConfig, learning_rate, next_token_loss, random_windows, token_stream, train_pretrain
from rlhf_kit.tokenizer import ASSISTANT, END, EOS, USER, train_tokenizer
from rlhf_kit.world import World


def test_next_token_loss_by_hand():
    # vocabulary of 3, one sequence [0, 2, 1]: position 0 predicts 2, position 1 predicts 1
    logits = torch.tensor([[[0.0, 0.0, math.log(2.0)], [math.log(3.0), 0.0, 0.0], [9.0, 9.0, 9.0]]])
    ids = torch.tensor([[0, 2, 1]])
    expected = -(math.log(2 / 4) + math.log(1 / 5)) / 2
    assert next_token_loss(logits, ids).item() == pytest.approx(expected)


def test_learning_rate_warms_up_then_decays():
    config = PretrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [learning_rate(s, config.steps, config.lr, config.warmup, config.min_lr_ratio, warmup_offset=1)
           for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.05)
    hf = [learning_rate(s, 100, 1e-3, 10) for s in range(100)]  # Hugging Face's: from 0, down to 0
    assert hf[0] == 0.0 and hf[10] == 1e-3 and 0 < hf[-1] < 1e-6


@pytest.fixture(scope="module")
def small_setup(tiny_pretrain):
    documents = World(seed=0).corpus(600)
    tokenizer = train_tokenizer(documents, vocab_size=400)
    return tokenizer, token_stream(tokenizer, documents), tiny_pretrain


def test_tokenizer_round_trips_and_has_the_chat_tokens(small_setup):
    tokenizer, stream, _ = small_setup
    text = "Where does Alice live?\nAlice's favourite colour is red. Ünïcode too."
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    for token in (EOS, USER, ASSISTANT, END):
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1
    assert (stream == tokenizer.convert_tokens_to_ids(EOS)).sum() == 600  # one separator per document
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                                         tokenize=False)
    assert chat == "<|user|>Hi<|end|><|assistant|>Hello.<|end|>"


def test_random_windows_are_slices_of_the_stream(small_setup):
    _, stream, _ = small_setup
    g = torch.Generator().manual_seed(0)
    batch = random_windows(stream, 4, 16, g)
    assert batch.shape == (4, 16)
    s = stream.tolist()
    for row in batch.tolist():
        assert any(s[i : i + 16] == row for i in range(len(s) - 15))


def _tiny_run(setup, steps=30, **overrides):
    tokenizer, stream, tiny = setup
    config = dataclasses.replace(tiny, steps=steps, log_every=1, **overrides)
    torch.manual_seed(config.seed)
    model = new_gpt(len(tokenizer), config.n_layer, config.n_embd, config.n_head, config.block_size,
                    tokenizer.eos_token_id)
    before = [p.detach().clone() for p in model.parameters()]
    history = train_pretrain(model, stream, config, progress=False)
    return model, before, history


def test_a_tiny_run_learns_and_changes_every_weight(small_setup):
    model, before, history = _tiny_run(small_setup)
    first, last = history[0]["loss/train"], history[-1]["loss/train"]
    assert last < first - 1.0, (first, last)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert {"step", "loss/train", "lr", "tokens", "tokens_per_second"} <= set(history[0])


def test_same_seed_same_weights(small_setup):
    a, _, ha = _tiny_run(small_setup, steps=5)
    b, _, hb = _tiny_run(small_setup, steps=5)
    assert [h["loss/train"] for h in ha] == [h["loss/train"] for h in hb]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_a_non_finite_loss_stops_training_and_names_the_step(small_setup):
    tokenizer, stream, tiny = small_setup
    config = dataclasses.replace(tiny, steps=5)
    model = new_gpt(len(tokenizer), config.n_layer, config.n_embd, config.n_head, config.block_size)
    calls = []

    def poison_third_forward(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:  # step 2
            output.logits[0, 0, 0] = float("nan")
        return output

    model.register_forward_hook(poison_third_forward)
    with pytest.raises(NonFiniteLoss, match="at step 2"):
        train_pretrain(model, stream, config, progress=False)


def test_build_base_writes_a_loadable_folder(tiny_base_dir, tiny_pretrain):
    files = {p.name for p in tiny_base_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    tokenizer = load_tokenizer(tiny_base_dir)
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    config = json.loads((tiny_base_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_layer"] == tiny_pretrain.n_layer
    assert read_metadata(tiny_base_dir) == {}  # metadata is written by ensure_stage, last


# The differences allowed between the shipped base model and one pretrained again on another CPU.
# Both are measured as lesson 1 measures them (256 replies at temperature 1 to the held-out
# questions); two models of the same quality then differ by sampling noise alone, whose standard
# error for a difference of two rates near p is sqrt(2·p(1−p)/256). The allowance is about three
# of those: 0.13 for the answer rate (near 0.4), 0.10 for false statements (near 0.18), 0.07
# for rudeness (near 0.07); and 0.03 for the final training loss.
SAME_QUALITY = {"answer rate": 0.13, "false-statement rate": 0.10, "rudeness rate": 0.07}


@pytest.mark.slow
def test_the_recipe_pretrains_a_base_model_as_good_as_the_shipped_one(tmp_path, monkeypatch):
    """`rlhf-kit build base --from-scratch` on this CPU: other weights, the same model."""
    from rlhf_kit import pretrain, stages
    from rlhf_kit.evaluate import fault_rates
    from rlhf_kit.models import load_model

    monkeypatch.setenv("RLHF_KIT_HOME", str(tmp_path))
    folder, _ = stages.pretrain_from_scratch("base", progress=False)
    world = World(seed=0)
    heldout = world.questions("heldout")

    def lesson_1_measures(path):
        model, tokenizer = load_model(path), load_tokenizer(path)
        return fault_rates(model, tokenizer, world, heldout, samples_per_question=4).row()

    rebuilt, shipped = lesson_1_measures(folder), lesson_1_measures(pretrain.SHIPPED / "base")
    print("rebuilt:", rebuilt, "\nshipped:", shipped)
    for measure, allowed in SAME_QUALITY.items():
        assert abs(rebuilt[measure] - shipped[measure]) <= allowed, (measure, rebuilt, shipped)
    assert 0.25 < rebuilt["answer rate"] < 0.6 and rebuilt["false-statement rate"] > 0.05  # lesson 1's faults
    assert rebuilt["rudeness rate"] > 0
    final_loss = read_metadata(folder)["final_loss"]
    assert abs(final_loss - pretrain.shipped_metadata("base")["final_loss"]) < 0.03
