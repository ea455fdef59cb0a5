"""Benchmark: DPO and GRPO after SFT, on the same data as PPO; their build times and the scoreboard.

Run: ``python bench/bench_alternatives.py`` (the embedded ``sft``, ``reward`` and ``ppo`` stages are
built first if missing). DPO and GRPO are built with their default configurations into temporary
folders and timed; then the scoreboard (``pipeline.scoreboard``: 64 held-out questions x 4
samples) of SFT, best-of-4, PPO, DPO and GRPO is printed, each row with its stage's build time
(SFT and PPO: as recorded when their cached stages were built), with DPO's held-out
implicit-reward accuracy next to the reward model's.
"""

from __future__ import annotations

import tempfile
import time

import torch

from rlhf_kit import alternatives, pipeline
from rlhf_kit.artifacts import read_metadata, write_metadata
from rlhf_kit.stages import ensure_stage


def main() -> None:
    torch.set_num_threads(2)
    folders = {stage: ensure_stage(stage) for stage in ("sft", "reward", "ppo")}
    with tempfile.TemporaryDirectory() as root:
        for stage, build in (("dpo", alternatives.build_dpo), ("grpo", alternatives.build_grpo)):
            started = time.perf_counter()
            meta = build(f"{root}/{stage}", sft=folders["sft"], reward=folders["reward"], progress=False)
            write_metadata(f"{root}/{stage}", {"stage": stage, **meta})  # the scoreboard reads its build time
            print(f"{stage}: built in {time.perf_counter() - started:.1f} s (the stage alone: {meta['seconds']:.1f} s; "
                  f"training {meta['history'][-1]['seconds']:.1f} s)", flush=True)
            if stage == "dpo":
                print(f"  re-making the reward stage's rankings: {meta['sampling_seconds']:.1f} s")
                print(f"  held-out pairs {meta['pairs']['heldout']}: DPO's implicit reward agrees with the labeler "
                      f"on {meta['heldout_implicit_accuracy']:.3f}, the reward model on "
                      f"{read_metadata(folders['reward'])['heldout']['accuracy']:.3f}")
            folders[stage] = f"{root}/{stage}"
        started = time.perf_counter()
        rows = pipeline.scoreboard(folders)
        print(f"scoreboard: {time.perf_counter() - started:.1f} s")
    print("| model | answer rate | false-statement rate | rudeness rate | rubric score | reward-model score "
          "| build time |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        seconds = "" if row["build seconds"] is None else f"{row['build seconds']:.1f} s"
        print(f"| {row['model']} | {row['answer rate']:.3f} | {row['false-statement rate']:.3f} | "
              f"{row['rudeness rate']:.3f} | {row['rubric score']:.3f} | {row['reward-model score']:.3f} "
              f"| {seconds} |")


if __name__ == "__main__":
    main()
