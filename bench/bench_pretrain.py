"""Benchmark: build the embedded base model from scratch and measure lesson 1's figures.

Prints, for the default ``PretrainConfig`` on this machine:

* the wall time of the whole build (corpus, tokenizer, pretraining, saving);
* pretraining throughput in tokens per second, and as a share of this machine's fp32
  matrix-multiply peak measured in the same run (the best of several square matmuls);
* the base model's three fault rates on held-out questions (fixed seed), as in lesson 1, next to
  those of the base model the package ships (``rlhf_kit/data/embedded/base``, the same recipe
  run on the machine the lessons' outputs were stored on): a rebuild on another CPU trains other
  weights, and these say whether it trains as good a model.

Model FLOPs per token follow the usual estimate for a decoder (Kaplan et al. 2020; PaLM's
appendix B): 6 x (non-embedding parameters + the tied output projection) for the matmuls of the
forward and backward passes, plus 12 x layers x context x width for attention scores.

Run: ``python bench/bench_pretrain.py`` (about 3 minutes on 2 CPU cores). Nothing else should run.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import torch

from rlhf_kit.evaluate import fault_rates
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.pretrain import SHIPPED, PretrainConfig, build_base, shipped_metadata
from rlhf_kit.world import World


def matmul_peak_gflops(sizes=(512, 1024, 1536, 2048), repeats=10) -> float:
    """Best fp32 GFLOP/s of square matmuls on all of torch's threads."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_token(config: PretrainConfig, vocab: int) -> float:
    block = 12 * config.n_embd**2  # attention (4 d^2) + MLP (8 d^2) weights per layer
    matmul_params = config.n_layer * block + config.n_embd * vocab  # + the tied output projection
    attention = 12 * config.n_layer * config.block_size * config.n_embd
    return 6 * matmul_params + attention


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}")
    peak_before = matmul_peak_gflops()
    config = PretrainConfig()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        meta = build_base(Path(folder), config, progress=False)
        build_seconds = time.perf_counter() - start
        peak_after = matmul_peak_gflops()
        peak = max(peak_before, peak_after)
        tokenizer = load_tokenizer(folder)
        model = load_model(folder, device="cpu")
        world = World(seed=config.seed)
        report = fault_rates(model, tokenizer, world, world.questions("heldout"), samples_per_question=4, name="base")
    shipped = fault_rates(load_model(SHIPPED / "base", device="cpu"), load_tokenizer(SHIPPED / "base"), world,
                          world.questions("heldout"), samples_per_question=4, name="shipped")
    fpt = flops_per_token(config, len(tokenizer))
    tps = meta["tokens_per_second"]
    print(f"build (corpus + tokenizer + pretraining + save): {build_seconds:.1f} s")
    print(f"parameters: {meta['parameters']:,}; corpus: {meta['corpus']['tokens']:,} tokens; "
          f"trained on {config.steps * config.batch_size * config.block_size:,} tokens; final loss {meta['final_loss']:.3f}")
    print(f"throughput: {tps:,.0f} tokens/s = {tps * fpt / 1e9:.1f} GFLOP/s "
          f"({fpt / 1e6:.2f} MFLOP per token)")
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s (before {peak_before:.1f}, after {peak_after:.1f})")
    print(f"share of peak: {tps * fpt / 1e9 / peak:.0%}")
    print(f"base rates on {report.n} held-out samples: answer {report.answer_rate:.1%}, "
          f"false {report.false_rate:.1%}, rude {report.rude_rate:.1%}, rubric score {report.rubric_score:.2f}")
    for key, (lo, hi) in report.intervals.items():
        print(f"  {key}: 95% interval [{lo:.1%}, {hi:.1%}]")
    print(f"the shipped base model on the same samples: answer {shipped.answer_rate:.1%}, false "
          f"{shipped.false_rate:.1%}, rude {shipped.rude_rate:.1%}, rubric score {shipped.rubric_score:.2f}; "
          f"final loss {shipped_metadata('base')['final_loss']:.3f}")


if __name__ == "__main__":
    main()
