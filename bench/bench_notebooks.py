"""Benchmark: execute notebooks top to bottom in a fresh kernel and print each one's wall time.

Run: ``python bench/bench_notebooks.py course/01_next_token_prediction.ipynb ...`` (no arguments:
every notebook in course/ and solutions/). The stage artifacts they need should already exist,
except where the figure being measured includes building them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def run(path: Path) -> float:
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - start


def main(paths: list[str]) -> None:
    notebooks = [Path(p) for p in paths] or sorted((ROOT / "course").glob("*.ipynb")) + sorted(
        (ROOT / "solutions").glob("*.ipynb"))
    total = 0.0
    for path in notebooks:
        seconds = run(path)
        total += seconds
        print(f"{path.relative_to(ROOT) if path.is_absolute() else path}: {seconds:.1f} s", flush=True)
    print(f"all {len(notebooks)} notebooks: {total:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
