"""Benchmark: SFT with pretraining text mixed in (``SFTConfig.pretrain_mix``), and what follows from it.

For each weight given, an SFT model is built from the embedded base stage into a temporary folder
(weight 0 is the default recipe), and measured three ways:

1. what it knows: for every fact of the world, whether the true value is the model's most likely
   one after the answer's opening ("Sure! Alice lives in"), by split (``bench_knowledge.py``);
2. how it answers: the scoreboard's rates on the 64 held-out questions, 4 samples each, in the
   chat format, temperature 1, seed 0;
3. with ``--downstream``: a reward model trained on that SFT model's rankings (the default
   ``RewardConfig``: its held-out accuracy against the labeler and against the rubric), then the
   default PPO run against that reward model, and how often the rubric prefers the PPO model's
   reply to the SFT model's on the held-out questions.

Run: ``python bench/experiments/bench_sft_mix.py --mix 0 1 --downstream`` (about 3 minutes per weight without
``--downstream``, 7 with it, on 2 idle CPU cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench_knowledge import knowledge  # bench/experiments/, this script's folder, is on sys.path
from rlhf_kit import ppo, reward, sft
from rlhf_kit.artifacts import write_metadata
from rlhf_kit.evaluate import CHAT, fault_rates, rubric_preference
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.stages import ensure_stage
from rlhf_kit.world import World


def measure(mix: float, downstream: bool, workdir: Path) -> dict:
    result: dict = {"pretrain_mix": mix}
    sft_dir = workdir / f"sft-mix{mix}"
    metadata = sft.build_sft(sft_dir, sft.SFTConfig(pretrain_mix=mix), base=ensure_stage("base"), progress=False)
    write_metadata(sft_dir, metadata)
    result["sft_seconds"] = metadata["seconds"]
    world = World(seed=metadata["seed"])
    model, tokenizer = load_model(sft_dir), load_tokenizer(sft_dir)
    result["knows"] = {split: top for split, (_, top, _) in knowledge(model, tokenizer, world, chat=True).items()}
    questions = world.questions("heldout")
    sft_report = fault_rates(model, tokenizer, world, questions, 4, style=CHAT, name="SFT", seed=0)
    result["sft"] = {k: v for k, v in sft_report.row().items() if isinstance(v, float)}
    if not downstream:
        return result
    reward_dir = workdir / f"reward-mix{mix}"
    reward_metadata = reward.build_reward(reward_dir, sft=sft_dir, progress=False)
    write_metadata(reward_dir, reward_metadata)
    result["reward_seconds"] = reward_metadata["seconds"]
    result["reward_heldout"] = reward_metadata["heldout"]
    ppo_dir = workdir / f"ppo-mix{mix}"
    ppo_metadata = ppo.build_ppo(ppo_dir, sft=sft_dir, reward=reward_dir, progress=False)
    result["ppo_seconds"] = ppo_metadata["seconds"]
    ppo_report = fault_rates(load_model(ppo_dir), tokenizer, world, questions, 4, style=CHAT, name="PPO", seed=0)
    result["ppo"] = {k: v for k, v in ppo_report.row().items() if isinstance(v, float)}
    preference = rubric_preference(ppo_report, sft_report)
    result["rubric_prefers_ppo_of_decided"] = preference.win_rate
    result["ties"] = preference.ties / len(ppo_report.samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mix", type=float, nargs="+", default=[0.0, 1.0], help="pretrain_mix weights")
    parser.add_argument("--downstream", action="store_true", help="also a reward model and PPO on each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
          f"threads, torch {torch.__version__}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sft-mix-") as workdir:
        for mix in args.mix:
            started = time.perf_counter()
            result = measure(mix, args.downstream, Path(workdir))
            result["seconds"] = time.perf_counter() - started
            results.append(result)
            print(f"pretrain_mix {mix}: SFT {result['sft_seconds']:.0f} s; true value most likely: "
                  + ", ".join(f"{s} {v:.0%}" for s, v in result["knows"].items()))
            print("  SFT on held-out questions: " + ", ".join(f"{k} {v:.3f}" for k, v in result["sft"].items()))
            if args.downstream:
                h = result["reward_heldout"]
                print(f"  reward model ({result['reward_seconds']:.0f} s): {h['pairs']} held-out pairs, "
                      f"accuracy {h['accuracy']:.3f} (noise ceiling {h['noise ceiling']:.3f}), "
                      f"vs rubric {h['accuracy vs rubric']:.3f}")
                print(f"  PPO ({result['ppo_seconds']:.0f} s): " + ", ".join(f"{k} {v:.3f}" for k, v in result["ppo"].items())
                      + f"; rubric prefers PPO in {result['rubric_prefers_ppo_of_decided']:.3f} of decided pairs "
                      f"(ties {result['ties']:.3f})")
    print("RESULT " + json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
