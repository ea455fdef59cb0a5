"""PPO under ``accelerate launch`` with two CPU processes: the processes stay in step, whether PPO
trains only the final norm's gains or every weight.

Each process samples its own half of every batch; accelerate averages the gradients, so after the
run both processes must hold the same weights (different from the start), and the metrics,
averaged over the processes, must be the same numbers in both histories.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent('''
    import copy, json, sys
    import torch
    from transformers import GPT2ForSequenceClassification
    from rlhf_kit.models import new_gpt
    from rlhf_kit.ppo import PPOConfig, train_ppo
    from rlhf_kit.tokenizer import train_tokenizer
    from rlhf_kit.world import World

    torch.set_num_threads(1)
    out, train = sys.argv[1], sys.argv[2]
    world = World(seed=0)
    tokenizer = train_tokenizer(world.corpus(400), vocab_size=400)

    def tiny_gpt():
        torch.manual_seed(0)
        return new_gpt(len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=64,
                       eos_token_id=tokenizer.eos_token_id)

    policy, ref_policy = tiny_gpt(), tiny_gpt()
    torch.manual_seed(1)
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    value_model = GPT2ForSequenceClassification(config)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    prompts = [q.text for q in world.questions("ppo")]
    history = train_ppo(policy, ref_policy, None, value_model, tokenizer, prompts,
                        PPOConfig(batches=3, batch_size=4, max_new_tokens=6, ppo_epochs=2, train=train,
                                  minibatch_size=2, lr=1e-2 if train == "final-norm" else 1e-3,
                                  kl_coef=0.02, missing_eos_penalty=0.0),
                        reward_fn=lambda p, c: [float(x.count("e")) for x in c], progress=False)
    from accelerate import PartialState
    state = PartialState()
    torch.save({"start": start, "end": policy.state_dict(), "processes": state.num_processes,
                "history": [{k: v for k, v in h.items() if k != "samples"} for h in history],
                "prompts": [s["prompt"] for h in history for s in h["samples"]]},
               f"{out}/rank-{state.process_index}.pt")
''')


@pytest.mark.parametrize("train", ["final-norm", "all"])
def test_two_processes_stay_in_step(tmp_path, train):
    script = tmp_path / "ppo_run.py"
    script.write_text(SCRIPT)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # `accelerate launch --cpu` starts one process unless MPI starts the others; torchrun's launcher
    # (--multi_gpu) starts both, and ACCELERATE_USE_CPU makes them a gloo process group on the CPU.
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
                   "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path), train],
                          capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank-{i}.pt", weights_only=False) for i in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2]
    first, second = ranks
    assert first["prompts"] != second["prompts"]  # each process sampled its own share of the batch
    for name, weight in first["end"].items():
        assert torch.equal(weight, second["end"][name]), name  # the same weights in both processes
    changed = {n for n in first["start"] if not torch.equal(first["end"][n], first["start"][n])}
    if train == "final-norm":  # only the final norm's gains
        assert changed == {"transformer.ln_f.weight"}, changed
    else:  # every weight: the attention and MLP weights of each block too
        assert {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight"} <= changed, changed
    assert first["history"] == second["history"]  # metrics averaged over both processes
    assert len(first["history"]) == 3
