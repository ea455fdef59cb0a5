"""Loading: the embedded model, a local folder and a hub-shaped model go through one function."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rlhf_kit import artifacts
from rlhf_kit.models import ModelNotFound, load_model, load_tokenizer, resolve
from rlhf_kit.sampling import generate


def test_local_folder_loads_as_causal_lm_and_as_reward_model(tiny_base_dir):
    model = load_model(tiny_base_dir, device="cpu")
    assert isinstance(model, GPT2LMHeadModel) and not model.training
    reward = load_model(tiny_base_dir, kind="reward", device="cpu")
    assert reward.config.num_labels == 1 and reward.config.pad_token_id is not None
    tokenizer = load_tokenizer(tiny_base_dir)
    batch = tokenizer(["Alice lives in Brookfield.", "Hi"], return_tensors="pt", padding=True)
    scores = reward(**batch).logits.squeeze(-1)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # the body of the reward model is the language model's body
    torch.testing.assert_close(reward.transformer.wte.weight, model.transformer.wte.weight)


def test_hub_shaped_llama_saved_locally_loads_and_generates(tiny_base_dir, tmp_path):
    """A Llama-shaped model (as SmolLM2 is) saved with save_pretrained, loaded like a hub model."""
    tokenizer = load_tokenizer(tiny_base_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = load_model(tmp_path, device="cpu")
    assert isinstance(model, LlamaForCausalLM)
    out = generate(model, load_tokenizer(tmp_path), ["Where does Alice live?\n", "Hi"], max_new_tokens=4, temperature=0)
    assert len(out.completions) == 2


def test_sources_resolve_or_fail_clearly(tmp_path):
    assert resolve("gpt2") == "gpt2"  # a hub id is passed on to from_pretrained
    assert resolve("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve(tmp_path)
    with pytest.raises(ModelNotFound, match="No model folder"):
        resolve(tmp_path / "missing")
    with pytest.raises(ValueError, match="kind must be"):
        load_model(tmp_path, kind="critic")


def test_ensure_stage_builds_once_when_two_processes_ask(tmp_path):
    """Two processes asking for a missing stage at once: one builds, the other waits and reuses."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        os.environ["RLHF_KIT_HOME"] = {str(tmp_path / "home")!r}
        from rlhf_kit import artifacts
        log = Path({str(tmp_path / "builds.log")!r})
        def slow_builder(out_dir):
            with open(log, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(1.0)
            (out_dir / "config.json").write_text("{{}}")
            return {{"built_by": os.getpid()}}
        artifacts._builders = lambda: {{"base": slow_builder}}
        print(artifacts.ensure_stage("base", verbose=False))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and outs[0].endswith("base")
    assert len((tmp_path / "builds.log").read_text().split()) == 1
    assert not [p for p in (tmp_path / "home" / artifacts.FORMAT).iterdir() if p.name.startswith(".base-")]


def test_a_failed_build_leaves_no_half_written_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_KIT_HOME", str(tmp_path))

    def broken(out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("kernel died")

    monkeypatch.setattr(artifacts, "_builders", lambda: {"base": broken})
    with pytest.raises(RuntimeError, match="kernel died"):
        artifacts.ensure_stage("base", verbose=False)
    assert not artifacts.is_ready("base") and not artifacts.stage_dir("base").exists()
    with pytest.raises(KeyError, match="Unknown stage"):
        artifacts.ensure_stage("nonsense")
