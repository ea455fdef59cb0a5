"""The headless pipeline (`rlhf-kit run`) on hub-shaped models saved in local folders.

No network here: a GPT-2-shaped and a Llama-shaped model, built from small configurations with a
tokenizer trained on the toy world, stand in for hub models. Each goes through SFT, reward
training, a few PPO batches, a few DPO steps and a few GRPO steps with tiny configurations, and
the report folder is checked.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rlhf_kit import pipeline
from rlhf_kit.alternatives import DPOConfig, GRPOConfig
from rlhf_kit.cli import main
from rlhf_kit.ppo import PPOConfig
from rlhf_kit.reward import RewardConfig
from rlhf_kit.sft import SFTConfig
from rlhf_kit.tokenizer import train_tokenizer
from rlhf_kit.behaviours import BehaviourWorld
from rlhf_kit.pipeline import TEMPERATURES
from rlhf_kit.world import World

torch.set_num_threads(1)

TINY = {
    "sft": SFTConfig(n_conversations=40, max_steps=6, batch_size=8, n_eval=8, eval_every=3, log_every=2),
    "reward": RewardConfig(n_rankings=48, epochs=1, rankings_per_batch=8, log_every=2, eval_every=0),
    "ppo": PPOConfig(batches=2, batch_size=8, max_new_tokens=8, ppo_epochs=1, minibatch_size=8, log_samples=2),
    "dpo": DPOConfig(epochs=0.1, batch_size=8, log_every=1),
    "grpo": GRPOConfig(steps=2, prompts_per_step=4, group_size=2, max_new_tokens=8),
}


def hub_shaped(kind: str, tokenizer):
    """A small randomly initialised model of a hub architecture, reading the kit's tokenizer."""
    torch.manual_seed(0)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, **ids))
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=128, **ids))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(World(seed=0).corpus(400), vocab_size=400)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_folder(request, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / "model"
    hub_shaped(request.param, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_every_stage_the_scoreboard_and_the_report(model_folder, tmp_path):
    out = tmp_path / "report"
    result = pipeline.run(out, str(model_folder), TINY, samples_per_question=1, progress=False)
    runs = {r.stage: r for r in result["stages"]}
    assert list(runs) == ["base", "sft", "reward", "ppo", "dpo", "grpo"]
    assert not runs["base"].built and all(runs[s].built for s in ("sft", "reward", "ppo", "dpo", "grpo"))
    for stage in ("sft", "reward", "ppo", "dpo", "grpo"):
        folder = out / "stages" / stage
        assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
        assert json.loads((folder / "rlhf_kit.json").read_text())["stage"] == stage
    ppo_meta = json.loads((out / "stages" / "ppo" / "rlhf_kit.json").read_text())
    assert len(ppo_meta["history"]) == 2  # the tiny configuration reached the stage
    grpo_meta = json.loads((out / "stages" / "grpo" / "rlhf_kit.json").read_text())
    assert [h["step"] for h in grpo_meta["history"]] == [1, 2]
    dpo_meta = json.loads((out / "stages" / "dpo" / "rlhf_kit.json").read_text())
    reward_meta = json.loads((out / "stages" / "reward" / "rlhf_kit.json").read_text())
    assert dpo_meta["pairs"]["train"] == reward_meta["pairs"]["train"]  # the reward model's own pairs
    rows = json.loads((out / "scoreboard.json").read_text())
    assert [r["model"] for r in rows] == ["base", "SFT", "best-of-4", "PPO", "DPO", "GRPO"]
    for row in rows:
        assert row["samples"] == len(BehaviourWorld(0).questions("heldout"))
        assert row["temperature"] in TEMPERATURES  # each model at its best temperature
        if row["model"] != "best-of-4":  # best-of-4 is sampled at SFT's best temperature
            assert row["rubric score"] == pytest.approx(max(row["by temperature"].values()))
        assert set(row) >= {"polite", "concise", "admits", "declines", "true"}  # the behaviour shares
        for key in ("answer rate", "false-statement rate", "rudeness rate"):
            low, high = row["intervals"][key]
            assert 0 <= low <= row[key] <= high <= 1
        for key in ("rubric score", "reward-model score"):
            low, high = row["intervals"][key]
            assert low <= row[key] <= high
    # each row's build time next to its quality: its stage's own, none for the hub base and best-of-4
    assert rows[0]["build seconds"] is None and rows[2]["build seconds"] is None
    for row, stage in zip([rows[1], *rows[3:]], ("sft", "ppo", "dpo", "grpo")):
        assert row["build seconds"] == json.loads((out / "stages" / stage / "rlhf_kit.json").read_text())["seconds"]
    # best-of-4 keeps the reply the reward model likes best of four, so its mean score is higher
    assert rows[2]["reward-model score"] > rows[1]["reward-model score"]
    page = (out / "report.html").read_text()
    assert "<td>built now</td>" in page and f"<td>{ppo_meta['seconds']:.0f} s</td>" in page
    assert page.count("<script") >= 2 and "plotly" in page.lower()  # plotly inlined: works offline
    for title in ("SFT: loss on the assistant", "Training the reward model", "PPO, batch by batch", "DPO: loss",
                  "GRPO: reward-model score"):
        assert title in page
    assert [s["stage"] for s in json.loads((out / "stages.json").read_text())] == list(runs)


def test_an_interrupted_run_resumes_at_the_stage_it_stopped_in(tokenizer, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    hub_shaped("gpt2", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "report"
    from rlhf_kit import stages

    real = stages.STAGES["ppo"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the learner pressed Ctrl-C during PPO

    monkeypatch.setitem(stages.STAGES, "ppo", dataclasses.replace(real, build=killed))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_stages(str(folder), out, TINY, progress=False)
    assert (out / "stages" / "reward" / "rlhf_kit.json").exists()
    assert not (out / "stages" / "ppo").exists()  # no half-written stage
    assert not [p for p in (out / "stages").iterdir() if p.name.startswith(".ppo-")]
    sft_written = (out / "stages" / "sft" / "model.safetensors").stat().st_mtime_ns

    monkeypatch.setitem(stages.STAGES, "ppo", real)
    runs = pipeline.run_stages(str(folder), out, TINY, progress=False)
    assert [r.built for r in runs] == [False, False, False, True, True, True]
    assert (out / "stages" / "sft" / "model.safetensors").stat().st_mtime_ns == sft_written


def test_the_embedded_stages_take_no_other_configuration():
    with pytest.raises(ValueError, match="default configurations"):
        pipeline.run_stages("embedded", None, {"sft": TINY["sft"]}, progress=False)


def test_a_hub_model_needs_an_output_folder():
    with pytest.raises(ValueError, match="output folder"):
        pipeline.run_stages("some/model", None, progress=False)


def test_the_command_names_a_missing_model_folder_in_one_sentence(tmp_path, capsys):
    assert main(["run", "--model", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "No model folder" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    assert main(["run", "--samples", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--samples must be at least 1" in capsys.readouterr().err
