"""Reliability of the ranking store under crashes and concurrent writers.

A writer process adds rankings as fast as it can and prints each one's key only after ``add``
returned: a printed key is an *acknowledged* ranking, one the learner saw accepted. Killing the
writer with SIGKILL at a random moment (no cleanup, no flush, no atexit) must never lose an
acknowledged ranking, corrupt the database, or duplicate a ranking.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from rlhf_kit.feedback import RankingStore

WRITER = r"""
import sys
from rlhf_kit.feedback import Item, Ranking, RankingStore, shuffled_order

path, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = RankingStore(path)
items = [Item(f"Question {i}?", tuple(f"Answer {i}{c}." for c in "abcd"), "writer")
         for i in range(start, start + count)]
for item in store.pending(items, "writer"):  # resume: skip what an earlier run stored
    key = item.key("writer")
    store.add(Ranking(item.prompt, item.completions, shuffled_order(key + "!", 4),
                      shown_order=shuffled_order(key, 4), model=item.model, labeler="writer"))
    print(key, flush=True)  # the acknowledgement, only after add() has returned
"""


def start_writer(path, start: int = 0, count: int = 1000) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(start), str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def acknowledged(stdout: str) -> list[str]:
    """Complete lines only: a line cut by the kill was never fully acknowledged."""
    return [line for line in stdout.split("\n")[:-1] if line]


def check_store(path) -> list[str]:
    """Open the store as a restarted kernel would; check it and return its keys."""
    with RankingStore(path) as store:
        counts = store.check_integrity()  # SQLite's integrity check, and every record valid
        keys = [r.key for r in store.rankings()]
    assert counts["rankings"] == len(keys)
    assert len(keys) == len(set(keys)), "a ranking was stored twice"
    return keys


@pytest.mark.parametrize("seed", range(50))
def test_sigkill_loses_no_acknowledged_ranking(tmp_path, seed):
    path = tmp_path / "rankings.sqlite"
    delay = random.Random(seed).uniform(0.0, 1.0)  # from process start: imports, schema, writes
    writer = start_writer(path)
    time.sleep(delay)
    os.kill(writer.pid, signal.SIGKILL)
    stdout, stderr = writer.communicate(timeout=30)
    assert writer.returncode in (-signal.SIGKILL, 0), stderr  # 0: it finished before the kill
    acked = acknowledged(stdout)
    keys = check_store(path)
    assert set(acked) <= set(keys), f"{len(set(acked) - set(keys))} acknowledged rankings lost"
    # At most one ranking can be stored without its acknowledgement: the one in flight.
    assert len(keys) - len(acked) in (0, 1)


def test_killed_writer_resumes_to_exactly_all_rankings(tmp_path):
    path = tmp_path / "rankings.sqlite"
    writer = start_writer(path)
    for _ in acknowledged_lines(writer, 50):  # kill it mid-way, after 50 acknowledged rankings
        pass
    os.kill(writer.pid, signal.SIGKILL)
    writer.communicate(timeout=30)
    rerun = start_writer(path)  # the same work again, as a rerun cell would
    _, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    assert len(check_store(path)) == 1000


def acknowledged_lines(writer: subprocess.Popen, n: int):
    for _ in range(n):
        line = writer.stdout.readline()
        assert line, writer.stderr.read()
        yield line


def test_two_writers_at_once_store_exactly_1000(tmp_path):
    path = tmp_path / "rankings.sqlite"  # new: both race to create the schema too
    writers = [start_writer(path, 0, 500), start_writer(path, 500, 500)]
    outputs = [w.communicate(timeout=300) for w in writers]
    for writer, (_, stderr) in zip(writers, outputs):
        assert writer.returncode == 0, stderr
    assert sum(len(acknowledged(stdout)) for stdout, _ in outputs) == 1000
    assert len(check_store(path)) == 1000


def test_two_writers_of_the_same_rankings_store_each_once(tmp_path):
    """Two notebooks ranking the same items into one store: the idempotency key keeps one copy."""
    path = tmp_path / "rankings.sqlite"
    writers = [start_writer(path, 0, 300), start_writer(path, 0, 300)]
    outputs = [w.communicate(timeout=300) for w in writers]
    for writer, (_, stderr) in zip(writers, outputs):
        assert writer.returncode == 0, stderr
    assert len(check_store(path)) == 300


def test_open_waits_out_a_lock_that_sqlite_reports_at_once(tmp_path, monkeypatch):
    """Switching to WAL can fail with "database is locked" at once while another process creates
    the file; opening retries until the busy timeout instead of failing the learner's cell."""
    original, calls = RankingStore._open, []

    def locked_three_times(self):
        calls.append(1)
        if len(calls) <= 3:
            raise sqlite3.OperationalError("database is locked")
        return original(self)

    monkeypatch.setattr(RankingStore, "_open", locked_three_times)
    with RankingStore(tmp_path / "rankings.sqlite") as store:
        assert len(store) == 0
    assert len(calls) == 4


def test_open_locked_past_the_timeout_says_what_to_do(tmp_path, monkeypatch):
    def always_locked(self):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(RankingStore, "_open", always_locked)
    with pytest.raises(sqlite3.OperationalError, match="stayed locked by another process.*try again"):
        RankingStore(tmp_path / "rankings.sqlite", busy_timeout_s=0.2)


def test_eight_processes_creating_one_store_at_once_all_open_it(tmp_path):
    code = "import sys\nfrom rlhf_kit.feedback import RankingStore\nRankingStore(sys.argv[1]).close()"
    for round_ in range(3):
        path = tmp_path / f"new-{round_}.sqlite"
        openers = [subprocess.Popen([sys.executable, "-c", code, str(path)], stderr=subprocess.PIPE,
                                    text=True) for _ in range(8)]
        for opener in openers:
            _, stderr = opener.communicate(timeout=120)
            assert opener.returncode == 0, stderr
        assert check_store(path) == []
