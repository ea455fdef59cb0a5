"""Loading: the embedded model, a local folder and a hub-shaped model go through one function."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rlhf_kit import artifacts, stages
from rlhf_kit.models import ModelNotFound, is_embedded, load_model, load_tokenizer, resolve
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


def test_a_language_model_read_as_a_reward_model_loads_without_the_missing_head_report(tiny_base_dir,
                                                                                     tmp_path, capfd):
    """Its score head is new, as expected: transformers' report of it (with ANSI codes) is left out,
    and transformers' own verbosity is the same after the load."""
    from transformers.utils import logging as hf_logging

    from rlhf_kit.models import _is_causal_checkpoint

    level = hf_logging.get_verbosity()
    reward = load_model(tiny_base_dir, kind="reward", device="cpu")
    captured = capfd.readouterr()
    assert "MISSING" not in captured.err and "LOAD REPORT" not in captured.err and "\x1b[" not in captured.err
    assert hf_logging.get_verbosity() == level
    assert _is_causal_checkpoint(tiny_base_dir)
    reward.save_pretrained(tmp_path)  # a reward checkpoint has its head: its loads keep their warnings
    assert not _is_causal_checkpoint(tmp_path)


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
        from rlhf_kit import artifacts, stages
        log = Path({str(tmp_path / "builds.log")!r})
        def slow_builder(out_dir, config=None, progress=True):
            with open(log, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(1.0)
            (out_dir / "config.json").write_text("{{}}")
            return {{"built_by": os.getpid()}}
        import dataclasses
        from rlhf_kit import stages
        stages.STAGES["base"] = dataclasses.replace(stages.STAGES["base"], build=slow_builder)
        print(stages.ensure_stage("base", verbose=False))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and outs[0].endswith("base")
    assert len((tmp_path / "builds.log").read_text().split()) == 1
    assert not [p for p in (tmp_path / "home" / artifacts.FORMAT).iterdir() if p.name.startswith(".base-")]


def test_a_failed_build_leaves_no_half_written_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_KIT_HOME", str(tmp_path))

    def broken(out_dir, config=None, progress=True):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("kernel died")

    monkeypatch.setitem(stages.STAGES, "base", dataclasses.replace(stages.STAGES["base"], build=broken))
    with pytest.raises(RuntimeError, match="kernel died"):
        stages.ensure_stage("base", verbose=False)
    assert not artifacts.is_ready("base") and not artifacts.stage_dir("base").exists()
    with pytest.raises(KeyError, match="Unknown stage"):
        stages.ensure_stage("nonsense")


# ----------------------------------------------------------------------------------------------
# Devices: the embedded model stays on the CPU, a hub model takes the accelerator
# ----------------------------------------------------------------------------------------------


def test_the_embedded_model_runs_on_the_cpu_whatever_accelerator_is_present(monkeypatch, tmp_path,
                                                                            tiny_base_dir):
    from rlhf_kit import runtime

    monkeypatch.delenv(runtime.DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with a GPU
    assert runtime.pick_device() == torch.device("cuda")  # a hub model takes it
    assert runtime.pick_device(embedded=True) == torch.device("cpu")
    assert runtime.pick_device("mps", embedded=True) == torch.device("mps")  # asked for explicitly
    monkeypatch.setenv(runtime.DEVICE_ENV, "cpu")
    assert runtime.pick_device() == torch.device("cpu")  # the setting overrides either way
    monkeypatch.setenv(runtime.DEVICE_ENV, "cuda:1")
    assert runtime.pick_device(embedded=True) == torch.device("cuda:1")
    monkeypatch.delenv(runtime.DEVICE_ENV)

    # A stage folder of the embedded model says so in its metadata, and loads on the CPU.
    monkeypatch.setenv("RLHF_KIT_HOME", str(tmp_path))
    stage = tmp_path / "copy-of-a-stage"
    shutil.copytree(tiny_base_dir, stage)
    artifacts.write_metadata(stage, {"stage": "sft", "embedded": True})
    assert is_embedded(stage) and not is_embedded(tiny_base_dir) and not is_embedded("gpt2")
    assert load_model(stage).device == torch.device("cpu")


def test_trl_trainers_keep_a_cpu_model_on_the_cpu():
    from rlhf_kit import alternatives, reward, sft

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for make in (lambda d: sft.trl_arguments(sft.SFTConfig(), "out", d),
                 lambda d: reward.trl_arguments(reward.RewardConfig(), "out", d, 8, 128),
                 lambda d: alternatives.trl_dpo_arguments(alternatives.DPOConfig(), "out", d),
                 lambda d: alternatives.trl_grpo_arguments(alternatives.GRPOConfig(), "out", d)):
        assert make(cpu).use_cpu and not make(gpu).use_cpu


# ----------------------------------------------------------------------------------------------
# The shipped base models: installed in seconds, pretrained from scratch on demand
# ----------------------------------------------------------------------------------------------


def test_the_base_stage_is_installed_from_the_shipped_weights(tmp_path, monkeypatch, capsys):
    from rlhf_kit import pretrain

    monkeypatch.setenv("RLHF_KIT_HOME", str(tmp_path))
    folder = stages.ensure_stage("base")
    assert "Installing the embedded 'base' model shipped with rlhf-kit" in capsys.readouterr().out
    shipped = pretrain.SHIPPED / "base"
    assert (folder / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()
    metadata = artifacts.read_metadata(folder)
    assert metadata["embedded"] and metadata["installed_from"] == str(shipped)
    assert metadata["config"] == dataclasses.asdict(pretrain.PretrainConfig())
    assert metadata["history"][-1]["loss/train"] == metadata["final_loss"] < 0.7
    model = load_model("embedded")
    assert model.device == torch.device("cpu") and model.num_parameters() == metadata["parameters"]


@pytest.mark.parametrize("stage, config", [("base", "PretrainConfig"), ("big-base", "big_base_config")])
def test_the_shipped_models_are_the_recipe_of_today(stage, config):
    """A change to the default recipe or the world must come with new shipped weights."""
    from rlhf_kit import pretrain
    from rlhf_kit.tokenizer import train_tokenizer
    from rlhf_kit.world import World

    recipe = getattr(pretrain, config)()
    metadata = pretrain.shipped_metadata(stage)
    assert metadata["config"] == dataclasses.asdict(recipe), (
        f"The shipped {stage} model was made with another configuration: rebuild it with "
        f"`ATEN_CPU_CAPABILITY=avx2 rlhf-kit build {stage} --from-scratch` and copy it into "
        f"{pretrain.SHIPPED / stage}.")
    documents = World(seed=recipe.seed).corpus(recipe.n_documents)
    tokenizer = train_tokenizer(documents, vocab_size=recipe.vocab_size)
    assert tokenizer.get_vocab() == load_tokenizer(pretrain.SHIPPED / stage).get_vocab()
    assert len(pretrain.token_stream(tokenizer, documents)) == metadata["corpus"]["tokens"]


def test_without_shipped_weights_the_base_is_pretrained(tmp_path, monkeypatch, tiny_pretrain):
    from rlhf_kit import pretrain

    monkeypatch.setattr(pretrain, "SHIPPED", tmp_path / "nothing-shipped")
    metadata = pretrain.install_shipped(tmp_path / "out", "base", tiny_pretrain)
    assert "installed_from" not in metadata and metadata["config"] == dataclasses.asdict(tiny_pretrain)


def test_from_scratch_replaces_the_base_and_removes_the_stages_built_from_it(tmp_path, monkeypatch,
                                                                           capsys, tiny_pretrain):
    from rlhf_kit import pretrain
    from rlhf_kit.cli import main

    monkeypatch.setenv("RLHF_KIT_HOME", str(tmp_path))
    # the recipe, on the tiny configuration (the real one takes minutes)
    tiny = dataclasses.replace(stages.STAGES["base"], from_scratch=lambda out, config=None, progress=True:
                               {**pretrain.build_base(out, tiny_pretrain, progress=False), "tiny": True})
    monkeypatch.setitem(stages.STAGES, "base", tiny)
    for stage in ("base", "sft", "reward", "big-base"):  # stand-ins for built stages
        artifacts.stage_dir(stage).mkdir(parents=True)
        artifacts.write_metadata(artifacts.stage_dir(stage), {"stage": stage})
    assert main(["build", "base", "--from-scratch"]) == 0
    out = capsys.readouterr().out
    assert "Removed the stages built from the old base model: sft, reward" in out
    assert not artifacts.stage_dir("sft").exists() and not artifacts.stage_dir("reward").exists()
    assert artifacts.is_ready("big-base")  # not built from the base: kept
    metadata = artifacts.read_metadata(artifacts.stage_dir("base"))
    assert metadata["tiny"] and metadata["embedded"] and "installed_from" not in metadata
    assert main(["build", "sft", "--from-scratch"]) == 2  # only the pretrained stages
    assert "Only base and big-base are pretrained from scratch" in capsys.readouterr().err


def test_load_model_only_loads_and_names_the_command_for_a_missing_stage(tmp_path, monkeypatch):
    """``load_model`` builds nothing: the shipped base is read from the package until it is installed,
    and a stage that is not built yet is one sentence naming the command that builds it."""
    monkeypatch.setenv("RLHF_KIT_HOME", str(tmp_path))
    assert resolve("embedded") == str(artifacts.SHIPPED / "base")
    assert load_model("embedded").device == torch.device("cpu")  # embedded: on the CPU
    with pytest.raises(artifacts.StageNotBuilt, match=r"not built yet: build it with `rlhf-kit build sft`"):
        load_model("embedded", stage="sft")
    assert not artifacts.embedded_home().exists()  # nothing was written
    installed = stages.ensure_stage("base", verbose=False)
    assert resolve("embedded") == str(installed)  # once installed, it is read there


def test_the_stage_table_orders_every_stage_after_what_it_needs():
    names = list(stages.STAGES)
    for stage in stages.STAGES.values():
        assert all(names.index(need) < names.index(stage.name) for need in stage.needs), stage.name
    assert stages.RECIPE == ("base", "sft", "reward", "ppo", "dpo", "grpo")
    assert stages.built_from("sft") == ["sft", "reward", "ppo", "dpo", "grpo"]
    assert stages.built_from("big-base") == ["big-base"]
    with pytest.raises(ValueError, match="pass the folder of reward"):
        stages.build_stage("ppo", "out", {"sft": "sft-folder"})
