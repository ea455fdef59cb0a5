"""Benchmark: how long the ranking store takes to make one ranking durable.

Each ``RankingStore.add`` is one SQLite transaction in WAL mode with ``synchronous=FULL``: it
returns only after the write-ahead log is fsynced, so its latency is mostly the disk's flush time.
A person needs seconds to rank four completions; the store must stay far below that, even while
a second notebook writes to the same file.

Prints, for a fresh store in a temporary folder (on the same disk as ``--dir``):

* single writer: latency of ``add`` (p50, p90, p99, max) and rankings per second, over N rankings;
* two writer processes at once (N/2 rankings each): wall time and total rankings per second;
* reading back: ``rankings()`` and ``to_pairs()`` of the N rankings.

Run: ``python bench/bench_store.py`` (about 20 s; ``--n`` changes N, ``--dir`` the disk).
Results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlhf_kit.feedback import Ranking, RankingStore, shuffled_order

WRITER = r"""
import sys
from rlhf_kit.feedback import Ranking, RankingStore, shuffled_order
path, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = RankingStore(path)
for i in range(start, start + count):
    store.add(Ranking(f"Question {i}?", tuple(f"Answer {i}{c}." for c in "abcd"),
                      shuffled_order(str(i), 4), model="bench"))
"""


def rankings(start: int, count: int) -> list[Ranking]:
    return [Ranking(f"Question {i}?", tuple(f"Answer {i}{c}." for c in "abcd"),
                    shuffled_order(str(i), 4), model="bench") for i in range(start, start + count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="rankings per run")
    parser.add_argument("--dir", default=None, help="folder for the temporary store")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}")

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "single.sqlite"
        records = rankings(0, args.n)
        latencies = []
        with RankingStore(path) as store:
            start = time.perf_counter()
            for record in records:
                t = time.perf_counter()
                store.add(record)
                latencies.append((time.perf_counter() - t) * 1000)
            elapsed = time.perf_counter() - start
            p50, p90, p99 = (percentile(latencies, q) for q in (50, 90, 99))
            print(f"single writer, {args.n} rankings: add() latency p50 {p50:.2f} ms, "
                  f"p90 {p90:.2f} ms, p99 {p99:.2f} ms, "
                  f"max {max(latencies):.2f} ms, mean {statistics.mean(latencies):.2f} ms; "
                  f"{args.n / elapsed:.0f} rankings/s")

            t = time.perf_counter()
            stored = store.rankings()
            read_s = time.perf_counter() - t
            import datasets  # noqa: F401 - imported first, so that its import is not timed

            t = time.perf_counter()
            pairs = store.to_pairs()
            pairs_s = time.perf_counter() - t
            print(f"read back: rankings() {len(stored)} in {read_s * 1000:.0f} ms; "
                  f"to_pairs() {len(pairs)} pairs in {pairs_s * 1000:.0f} ms")

        path = Path(folder) / "two.sqlite"
        half = args.n // 2
        start = time.perf_counter()
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(i * half), str(half)])
                   for i in range(2)]
        if any(w.wait() for w in writers):
            raise SystemExit("a writer process failed")
        elapsed = time.perf_counter() - start
        with RankingStore(path) as store:
            total = len(store)
        print(f"two writer processes, {half} rankings each: {total} stored in {elapsed:.2f} s "
              f"(including process start), {total / elapsed:.0f} rankings/s")


if __name__ == "__main__":
    main()
