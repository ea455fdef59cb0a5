"""Benchmark: seconds per PPO batch, the kit's loop against TRL 1.12's PPOTrainer, same workload.

TRL removed its PPO trainer in 1.13; the last one is ``trl.experimental.ppo.PPOTrainer`` of
TRL 1.12. The project does not depend on it: this script installs TRL 1.12 into an environment
of its own (a virtual environment that sees this one's packages, with TRL 1.12 in front of
them) and runs the TRL side there, in a separate process. Both sides run the same workload on
the same number of torch threads:

* policy and reference: the embedded SFT model (GPT-2-shaped: 4 layers, width 128, context 128);
* reward and value model: that model's body with a scalar head (untrained: timing only);
* 64 of the world's questions through the chat template, batches of 16, 24 new tokens at
  temperature 1, stopping at the end-of-turn token; 4 PPO epochs of 2 minibatches of 8.

Each side runs ``--batches`` batches (4 per pass over the 64 prompts). The first batch is a
warm-up; a side's figure is the median time of the others, and the kit's mean completion length
is printed too, since a batch of longer completions costs more. The sides take turns
``--rounds`` times, each run in a fresh process; the result is the median of the rounds'
kit / TRL ratios. One round is not enough: on the 2-core VM of bench/HISTORY.md ("PPO throughput
against TRL 1.12") the same kit run took 0.48 s per batch in one run and 0.67 s in the next.

Run: ``python bench/bench_ppo.py`` (about 4 minutes on 2 idle cores, the first time a minute
more to install TRL 1.12). ``--side kit`` or ``--side trl`` runs one side in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

PROMPTS, BATCH, NEW_TOKENS, EPOCHS, MINIBATCHES = 64, 16, 24, 4, 2
LR, KL_COEF, SEED = 1e-4, 0.05, 0
TRL_VERSION = "1.12.0"


def workload():
    """The models, tokenizer and prompts both sides use."""
    import torch

    from rlhf_kit.stages import ensure_stage
    from rlhf_kit.models import load_model, load_tokenizer
    from rlhf_kit.world import World

    folder = ensure_stage("sft")
    torch.manual_seed(SEED)
    policy, ref = load_model(folder), load_model(folder)
    reward, value = load_model(folder, kind="reward"), load_model(folder, kind="reward")
    tokenizer = load_tokenizer(folder)
    prompts = [q.text for q in World(0).questions()][:: 2][:PROMPTS]
    assert len(prompts) == PROMPTS
    return policy, ref, reward, value, tokenizer, prompts


def summarise(times: list[float], lengths: list[float]) -> dict:
    per_batch = [b - a for a, b in zip(times, times[1:])][1:]  # drop the warm-up batch
    return {"seconds_per_batch": statistics.median(per_batch), "batches_timed": len(per_batch),
            "mean_completion_length": statistics.mean(lengths[1:])}


def run_kit(batches: int) -> dict:
    from rlhf_kit.ppo import PPOConfig, train_ppo

    policy, ref, reward, value, tokenizer, prompts = workload()
    times: list[float] = [time.perf_counter()]

    def clock(prompts_, completions):  # called once per batch, after sampling and scoring
        times.append(time.perf_counter())
        return [0.0] * len(completions)

    config = PPOConfig(seed=SEED, batches=batches, batch_size=BATCH, max_new_tokens=NEW_TOKENS,
                       ppo_epochs=EPOCHS, minibatch_size=BATCH // MINIBATCHES, train="all", lr=LR,
                       value_lr=LR, kl_coef=KL_COEF,
                       max_kl=None, log_samples=0)
    history = train_ppo(policy, ref, reward, value, tokenizer, prompts, config, watch_fn=clock,
                        progress=False)
    # Batch b's clock ticks after its sampling and scoring, so the time from one tick to the next
    # is one whole batch (updates, then the next sampling), as TRL's steps are.
    times = times[1:]
    return summarise(times, [h["ppo/completion_length"] for h in history])


def run_trl(batches: int) -> dict:
    import datasets
    import trl
    from transformers import TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from rlhf_kit.tokenizer import chat_prompt, end_of_turn_id

    assert trl.__version__ == TRL_VERSION, f"TRL {trl.__version__} found, {TRL_VERSION} needed"
    policy, ref, reward, value, tokenizer, prompts = workload()
    tokenizer.padding_side = "left"  # TRL's PPO generates from left-padded queries
    queries = [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False).input_ids for p in prompts]
    dataset = datasets.Dataset.from_dict({"input_ids": queries})
    times: list[float] = []
    stop = end_of_turn_id(tokenizer)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(output_dir=out, seed=SEED, per_device_train_batch_size=BATCH,
                         gradient_accumulation_steps=1, num_mini_batches=MINIBATCHES,
                         num_ppo_epochs=EPOCHS, response_length=NEW_TOKENS, temperature=1.0,
                         stop_token_id=stop, missing_eos_penalty=1.0, kl_coef=KL_COEF,
                         learning_rate=LR, total_episodes=BATCH * batches,
                         local_rollout_forward_batch_size=BATCH, num_sample_generations=0,
                         bf16=False, fp16=False, use_cpu=True, report_to=[], save_strategy="no",
                         logging_steps=1, disable_tqdm=True)
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref,
                             reward_model=reward, value_model=value, train_dataset=dataset,
                             callbacks=[Clock()])
        trainer.train()
    return {**summarise(times, [0.0] * len(times)), "mean_completion_length": None}


def trl_python(env: Path) -> Path:
    """A virtual environment with TRL 1.12 in front of this environment's packages."""
    python = env / "bin" / "python"
    if python.exists():
        probe = subprocess.run([python, "-c", "import trl; print(trl.__version__)"], capture_output=True,
                               text=True)
        if probe.stdout.strip() == TRL_VERSION:
            return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", env], check=True)
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    here = sysconfig.get_paths()["purelib"]  # this environment's packages, .pth files included
    (site / "zz_parent_env.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", f"trl=={TRL_VERSION}"], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("kit", "trl"), help="run one side here and print JSON")
    parser.add_argument("--batches", type=int, default=8, help="PPO batches per side (first is warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on each side")
    parser.add_argument("--rounds", type=int, default=3, help="times each side runs, taking turns")
    parser.add_argument("--trl-env", type=Path, default=Path.home() / ".cache" / "rlhf-kit" / "bench-trl-1.12",
                        help="where the TRL 1.12 environment is kept")
    args = parser.parse_args()
    if args.side:
        import torch

        torch.set_num_threads(args.threads)
        result = run_kit(args.batches) if args.side == "kit" else run_trl(args.batches)
        print("RESULT " + json.dumps(result))
        return

    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    pythons = {"kit": Path(sys.executable), "trl": trl_python(args.trl_env)}
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"workload: {PROMPTS} prompts, batch {BATCH}, {NEW_TOKENS} new tokens, {EPOCHS} PPO epochs, "
          f"{MINIBATCHES} minibatches, {args.batches} batches (first one not timed)")
    # The two sides take turns, so that a slow minute of a shared machine falls on both.
    ratios = []
    for round_ in range(1, args.rounds + 1):
        results = {}
        for side, python in pythons.items():
            command = [str(python), __file__, "--side", side, "--batches", str(args.batches),
                       "--threads", str(args.threads)]
            out = subprocess.run(command, capture_output=True, text=True, env=environment)
            if out.returncode != 0:
                sys.exit(f"The {side} side failed:\n{out.stderr[-3000:]}")
            results[side] = json.loads(out.stdout.split("RESULT ", 1)[1])
        ratios.append(results["kit"]["seconds_per_batch"] / results["trl"]["seconds_per_batch"])
        line = ", ".join(f"{side} {r['seconds_per_batch']:.2f} s per batch" for side, r in results.items())
        length = results["kit"]["mean_completion_length"]
        print(f"round {round_}: {line} (median of {results['kit']['batches_timed']} and "
              f"{results['trl']['batches_timed']} batches; kit completions {length:.1f} tokens): "
              f"kit / TRL {ratios[-1]:.2f}")
    print(f"kit / TRL: {statistics.median(ratios):.2f}, the median of {len(ratios)} rounds "
          f"(from {min(ratios):.2f} to {max(ratios):.2f}; target: at most 0.50); load average "
          f"{os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
