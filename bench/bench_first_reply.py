"""Benchmark: from a fresh install to the first reply of the embedded model.

A learner who has just run ``pip install -e .`` opens lesson 0 or 1, and the first cell that
needs the model installs the shipped base weights into an empty artifacts folder, loads them and
samples a reply. This script times that path in a new Python process with an empty
``RLHF_KIT_HOME``, in three parts:

* importing the kit (torch and transformers with it);
* ``load_model("embedded")``: the base stage installed from the package, then loaded;
* the first reply: one question, sampled as lesson 1 samples it.

and, for comparison, the same first reply when the base model is pretrained from scratch
(``--from-scratch``: about 3 minutes on 2 cores). Each part is timed ``--rounds`` times, each
round in a new process and a new artifacts folder; the median is the figure.

Run: ``python bench/bench_first_reply.py`` (about a minute; with ``--from-scratch``, about 4).
Nothing else should run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

import torch

CHILD = """
import json, os, sys, time
started = time.perf_counter()
from rlhf_kit import stages
from rlhf_kit.evaluate import first_line, format_prompt
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.sampling import generate
from rlhf_kit.world import World
imported = time.perf_counter()
if sys.argv[1] == "scratch":
    stages.pretrain_from_scratch("base", progress=False)
model, tokenizer = load_model("embedded"), load_tokenizer("embedded")
loaded = time.perf_counter()
question = World(seed=0).question_about("Alice", "town")
reply = generate(model, tokenizer, [format_prompt(question, tokenizer)], max_new_tokens=24, seed=0)
replied = time.perf_counter()
print(json.dumps({"import": imported - started, "model ready": loaded - imported,
                  "first reply": replied - loaded, "total": replied - started,
                  "reply": first_line(reply.completions[0])}))
"""


def one_round(mode: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="first-reply-") as home:
        env = {**os.environ, "RLHF_KIT_HOME": home}
        run = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True,
                             text=True, check=True)
        return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--from-scratch", action="store_true",
                        help="also time the first reply with the base model pretrained here")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
          f"threads, torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}")
    modes = ["shipped"] + (["scratch"] if args.from_scratch else [])
    print("| base model | import (s) | model ready (s) | first reply (s) | total (s) |")
    print("|---|---|---|---|---|")
    for mode in modes:
        rounds = [one_round(mode) for _ in range(args.rounds if mode == "shipped" else 1)]
        median = {k: statistics.median(r[k] for r in rounds) for k in ("import", "model ready",
                                                                        "first reply", "total")}
        label = "shipped, installed" if mode == "shipped" else "pretrained from scratch"
        print(f"| {label} ({len(rounds)} rounds, median) | {median['import']:.1f} | "
              f"{median['model ready']:.1f} | {median['first reply']:.2f} | {median['total']:.1f} |")
        print(f"  the reply: {rounds[0]['reply']!r}")


if __name__ == "__main__":
    main()
