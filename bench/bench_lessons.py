"""Benchmark: how long each lesson is to read and to run.

Run from the repository root:

* ``python bench/bench_lessons.py``: one markdown table, a row per lesson of ``rlhf_kit.lessons``:
  code cells and words of markdown in the core path (the cells before ``## Going further``) and in
  "Going further", and the exercises of its solutions notebook. Instant: nothing is executed.
* ``python bench/bench_lessons.py --time``: the same table with each course notebook's wall time,
  executed top to bottom in a fresh kernel (in memory: the saved notebook is not changed), and the
  total. Build the stages first (``RLHF_KIT_HOME`` pointing at a folder where they are built), or
  the first notebook that needs one builds it and its time says so.
* ``python bench/bench_lessons.py --time course/06_ppo.ipynb solutions/06_ppo_solutions.ipynb``:
  only those notebooks, any folder (the run of every notebook, course and solutions, is
  ``--time course/*.ipynb solutions/*.ipynb``).

The counts are those ``tests/test_lessons.py`` holds the lessons to (at most 25 code cells and
2,500 words in the core path); its functions count them here, so the table and the test agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from rlhf_kit.lessons import LESSONS

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 600  # every course notebook in at most 10 minutes on 2 cores, stages built
EXERCISE = re.compile(r"^\s*# Exercise \d+:")


def lesson_rules():
    """tests/test_lessons.py, loaded from its path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("test_lessons", ROOT / "tests" / "test_lessons.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run(path: Path) -> float:
    """Seconds to execute the notebook at ``path`` top to bottom in a fresh kernel, in its folder."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - start


def exercises(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for cell in nbformat.read(path, as_version=4).cells
               if cell.cell_type == "code" and EXERCISE.match(cell.source))


def counts_table(timed: bool) -> str:
    rules = lesson_rules()
    header = ["lesson", "core: code cells", "core: words", "going further: code cells", "going further: words",
              "exercises"] + (["run (s)"] if timed else [])
    rows, total = [], 0.0
    for lesson in LESSONS:
        course = ROOT / "course" / f"{lesson.notebook}.ipynb"
        cells = nbformat.read(course, as_version=4).cells
        core, further = rules.core_path(cells), rules.going_further(cells)
        row = [f"{lesson.number} `{lesson.notebook}`", rules.code_cells(core), rules.markdown_words(core),
               rules.code_cells(further) if further else "–", rules.markdown_words(further) if further else "–",
               exercises(ROOT / "solutions" / f"{lesson.notebook}_solutions.ipynb") if lesson.number else "–"]
        if timed:
            seconds = run(course)
            total += seconds
            row.append(f"{seconds:.0f}")
            print(f"  {course.relative_to(ROOT)}: {seconds:.1f} s", flush=True)
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    if timed:
        lines.append("| **all lessons** | " + " | " * (len(header) - 2)
                     + f"**{total:.0f}** (target: at most {TARGET_S}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="execute the notebooks and time them")
    parser.add_argument("notebooks", nargs="*", help="with --time: only these notebooks, timed")
    args = parser.parse_args()
    if args.notebooks:
        if not args.time:
            parser.error("naming notebooks times them: add --time")
        total = 0.0
        for name in args.notebooks:
            seconds = run(Path(name).resolve())
            total += seconds
            print(f"{name}: {seconds:.1f} s", flush=True)
        print(f"all {len(args.notebooks)} notebooks: {total:.1f} s")
        return
    print(counts_table(args.time))


if __name__ == "__main__":
    main()
