"""Benchmark: lesson 5's figures for the embedded reward model.

Prints, for ``RewardConfig`` (the defaults, fixed seed, unless ``--set`` changes a field):

* run times: sampling the rankings from the SFT model, training, evaluation;
* held-out pairwise accuracy against the simulated labeler's noisy rankings, next to the ceiling
  its noise allows (``reward.noise_ceiling``), and against the noise-free rubric;
* the kit's grouped loop and TRL's ``RewardTrainer`` trained on the same pairs: both accuracies;
  with ``--train-seeds 0,1,2`` each trainer runs once per training seed on the same pairs, and the
  spread shows whether a gap between the two is more than the luck of one run; ``--ensemble``
  also scores each trainer's models of those seeds together (the mean of their scores).

The ``sft`` stage is built first if it is missing (minutes on a CPU; ``--source`` names another
model folder). ``--threads N`` runs torch on N threads, to measure what a 2-core laptop would see.

Run: ``python bench/bench_reward.py --threads 2`` (about two minutes on 2 idle CPU cores once
the SFT model exists, TRL's run included). Nothing else should run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
import types
from pathlib import Path

import torch

from rlhf_kit import reward
from rlhf_kit.artifacts import read_metadata
from rlhf_kit.stages import ensure_stage
from rlhf_kit.feedback import SimulatedLabeler, read_jsonl, write_jsonl
from rlhf_kit.models import EMBEDDED, is_embedded, load_model, load_tokenizer
from rlhf_kit.runtime import pick_device, seed_everything
from rlhf_kit.world import World


def parse_value(text: str):
    """A --set value: None, True, False, an int, a float, or else the text itself."""
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def sample(config: reward.RewardConfig, source: Path, world: World) -> tuple[list, float]:
    """The rankings of the default data pipeline, and the seconds it took."""
    start = time.perf_counter()
    policy = load_model(source)
    rankings = reward.simulated_rankings(policy, load_tokenizer(source), world, config)
    return rankings, time.perf_counter() - start


def evaluate(config: reward.RewardConfig, world: World, tokenizer, model, rankings: list
             ) -> reward.RewardReport:
    """``model`` on the held-out pairs (split by prompt with ``config.seed``; those that fit the
    model), against the simulated labeler and its rubric."""
    rows = reward.split_by_prompt(rankings, config.heldout_share, config.seed)[1]
    rows = reward.audit_pairs(rows, tokenizer, reward.effective_max_length(model, config),
                              verbose=False).kept
    return reward.evaluate_reward(model, tokenizer, rows,
                                  SimulatedLabeler(world, noise=config.noise, seed=config.seed))


class MeanScore(torch.nn.Module):
    """Reward models scored together: the mean of their scores (an ensemble)."""

    def __init__(self, members: list):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.config = members[0].config

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def get_input_embeddings(self):  # reward.score checks the ids fit the vocabulary
        return self.members[0].get_input_embeddings()

    def forward(self, **inputs):
        logits = torch.stack([m(**inputs).logits for m in self.members]).mean(dim=0)
        return types.SimpleNamespace(logits=logits)  # what reward.score reads of a model


def train_and_evaluate(config: reward.RewardConfig, source: Path, world: World, rankings: list,
                       trainer: str, body: Path | None = None, train_seed: int | None = None,
                       keep: list | None = None) -> dict:
    """One reward model trained by ``trainer`` on the train prompts, evaluated on the others.

    ``train_seed`` (default: ``config.seed``) seeds only the training (the new head's initial
    weights, the order of the batches); the split and the labeler keep ``config.seed``, so that
    runs with different training seeds see the same pairs. The model is appended to ``keep``."""
    config = dataclasses.replace(config, trainer=trainer)
    train_config = dataclasses.replace(config, seed=config.seed if train_seed is None else train_seed)
    tokenizer = load_tokenizer(source)
    train_rows = reward.split_by_prompt(rankings, config.heldout_share, config.seed)[0]
    seed_everything(train_config.seed)
    model = load_model(body or source, kind="reward")
    start = time.perf_counter()
    history = reward.train(model, tokenizer, train_rows, train_config, progress=False)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = evaluate(config, world, tokenizer, model, rankings)
    if keep is not None:
        keep.append(model.eval())
    steps = [h for h in history if "loss/train" in h]
    return {"trainer": trainer, "train_seed": train_config.seed, "train_seconds": seconds,
            "eval_seconds": time.perf_counter() - start,
            "train_pairs": len(train_rows), "steps": max(h["step"] for h in history),
            "final_train_loss": steps[-1]["loss/train"], "final_train_accuracy": steps[-1]["reward/accuracy"],
            **report.row(), "n_ideal_pairs": report.n_ideal_pairs, "calibration": report.calibration}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--source", default=EMBEDDED, help="the SFT model: 'embedded' or a folder")
    parser.add_argument("--body", help="start the reward model from this stage or folder instead "
                        "of the SFT model (e.g. 'base'); the rankings still come from --source")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a RewardConfig field, e.g. --set lr=1e-3")
    parser.add_argument("--trainers", default="kit,trl", help="kit, trl or both (kit,trl)")
    parser.add_argument("--train-seeds", default="",
                        help="train each trainer once per seed, e.g. 0,1,2 (same pairs, same split): "
                        "the spread from seed to seed, to judge a difference between the trainers")
    parser.add_argument("--ensemble", action="store_true", help="with --train-seeds: also score "
                        "each trainer's models together (the mean of their scores)")
    parser.add_argument("--rankings", help="a JSONL file of rankings: read it if it exists, "
                        "else sample and write it")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = dict(item.split("=", 1) for item in args.set)
    config = reward.RewardConfig(**{k: parse_value(v) for k, v in fields.items()})
    source = ensure_stage("sft") if args.source == EMBEDDED else Path(args.source)
    print(f"machine: {platform.processor() or platform.machine()}, device "
          f"{pick_device(embedded=is_embedded(source))}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    print(f"config: {json.dumps(dataclasses.asdict(config))}")
    world = World(seed=read_metadata(source).get("seed", 0))
    results = {"config": dataclasses.asdict(config), "threads": torch.get_num_threads(), "runs": []}
    if args.rankings and Path(args.rankings).exists():
        rankings, results["sampling_seconds"] = read_jsonl(args.rankings), None
    else:
        rankings, results["sampling_seconds"] = sample(config, source, world)
        if args.rankings:
            write_jsonl(rankings, args.rankings)
        print(f"sampled {len(rankings)} rankings of {config.k} in {results['sampling_seconds']:.1f} s")
    results["rankings"] = len(rankings)
    seeds = [int(s) for s in args.train_seeds.split(",") if s] or [None]
    body = None if not args.body else (ensure_stage(args.body) if args.body in ("base", "sft")
                                       else Path(args.body))
    if args.ensemble and len(seeds) < 2:
        parser.error("--ensemble needs two or more --train-seeds.")
    for trainer in args.trainers.split(","):
        members: list = []
        for train_seed in seeds:
            run = train_and_evaluate(config, source, world, rankings, trainer, body, train_seed,
                                     members if args.ensemble else None)
            results["runs"].append(run)
            print(f"{trainer} (training seed {run['train_seed']}): {run['steps']} steps on "
                  f"{run['train_pairs']} pairs in {run['train_seconds']:.1f} s; held-out accuracy "
                  f"{run['accuracy']:.3f} (noise ceiling {number(run['noise ceiling'])}), vs the rubric "
                  f"{number(run['accuracy vs rubric'])} on {run['n_ideal_pairs']} pairs; "
                  f"calibration error {run['calibration error']:.3f}")
        if args.ensemble:
            report = evaluate(config, world, load_tokenizer(source), MeanScore(members), rankings)
            results.setdefault("ensembles", []).append({"trainer": trainer, "seeds": seeds, **report.row()})
            print(f"{trainer}, the {len(members)} models together (mean score): held-out accuracy "
                  f"{report.accuracy:.3f} (noise ceiling {number(report.ceiling)}), vs the rubric "
                  f"{number(report.ideal_accuracy)} on {report.n_ideal_pairs} pairs")
    if len(seeds) > 1:
        for trainer in args.trainers.split(","):
            runs = [r for r in results["runs"] if r["trainer"] == trainer]
            for key in ("accuracy", "accuracy vs rubric"):
                values = [r[key] for r in runs]
                print(f"{trainer}, {key}: mean {statistics.mean(values):.3f}, from {min(values):.3f} "
                      f"to {max(values):.3f} over training seeds {args.train_seeds}")
    print("RESULT " + json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
