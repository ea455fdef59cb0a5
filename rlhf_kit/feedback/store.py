"""The store: rankings and blind comparisons in one SQLite file, and rankings in JSONL files.

``RankingStore`` is a SQLite database in WAL mode with full synchronous commits: each ranking is
one transaction that is on disk before ``add`` returns, an idempotency key makes storing the same
ranking twice a no-op, and two notebooks can write to one file at once. ``write_jsonl`` exports
rankings atomically; ``read_jsonl`` validates every line, and names the line and the field of any
damage. The ranking and comparison widgets that write to the store are in ``rlhf_kit/widgets.py``.

Reads and writes: one SQLite file (``default_store_path(lesson)``, one per lesson), and JSONL exports.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from .records import (SCHEMA_VERSION, Comparison, ComparisonItem, DamagedRecord, DamagedStore, Item,
                      PairStats, Ranking, RankingError, StoreUnavailable, as_comparison_item, as_item,
                      check_version, expand_pairs, now, pairs_dataset)

SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rankings (
    id INTEGER PRIMARY KEY,            -- insertion order
    key TEXT NOT NULL UNIQUE,          -- idempotency key: a second insert is ignored
    prompt TEXT NOT NULL,
    completions TEXT NOT NULL,         -- JSON list of texts
    shown_order TEXT NOT NULL,         -- JSON list of completion indices, top of the screen first
    ranking TEXT NOT NULL,             -- JSON list of completion indices, best first
    ties TEXT NOT NULL,                -- JSON list of [i, j] pairs marked equally good
    model TEXT NOT NULL,
    labeler TEXT NOT NULL,
    labeler_kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    schema_version INTEGER NOT NULL
);
CREATE TABLE comparisons (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    completions TEXT NOT NULL,         -- JSON list of two texts
    models TEXT NOT NULL,              -- JSON list of two model names
    shown_order TEXT NOT NULL,         -- JSON [i, j]: completions[i] was shown as A
    winner INTEGER,                    -- 0 or 1, or NULL for a tie
    labeler TEXT NOT NULL,
    labeler_kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    schema_version INTEGER NOT NULL
);
CREATE TABLE skips (
    key TEXT PRIMARY KEY,              -- the key of the skipped item
    prompt TEXT NOT NULL,
    labeler TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""

RANKING_COLUMNS = ("key", "prompt", "completions", "shown_order", "ranking", "ties", "model",
                   "labeler", "labeler_kind", "created_at", "schema_version")
COMPARISON_COLUMNS = ("key", "prompt", "completions", "models", "shown_order", "winner",
                      "labeler", "labeler_kind", "created_at", "schema_version")
JSON_COLUMNS = {"completions", "shown_order", "ranking", "ties", "models"}
STORE_TABLES = {"meta", "rankings", "comparisons", "skips"}


def default_store_path(lesson: int = 4) -> Path:
    """Where the course keeps what the learner did in a lesson's widget, one file per lesson:
    ``<artifacts home>/feedback/lesson-<lesson>.sqlite``. Lesson 4's rankings are the default; lesson 2
    and lesson 7 keep their blind comparisons in their own files, so a lesson's rerun resumes its own work
    and never mixes in another's."""
    from ..runtime import artifacts_home  # imported here: runtime imports torch, the store does not

    if not isinstance(lesson, int) or isinstance(lesson, bool) or not 0 <= lesson <= 7:
        raise ValueError(f"lesson must be a lesson number from 0 to 7, not {lesson!r}.")
    return artifacts_home() / "feedback" / f"lesson-{lesson}.sqlite"


class Progress(NamedTuple):
    ranked: int
    skipped: int
    total: int


class RankingStore:
    """Rankings and comparisons in one SQLite file, safe against crashes and concurrent writers.

    * **WAL mode with ``synchronous=FULL``**: a commit is on disk (fsync) before it returns, and a
      process killed at any moment leaves the database at its last commit.
    * **One transaction per ranking**, opened with ``BEGIN IMMEDIATE`` so that two writers queue
      (for up to ``busy_timeout_s`` seconds) instead of failing.
    * **An idempotency key per ranking** (unique in the table): adding the same ranking twice, by a
      rerun cell or a second notebook, stores it once.
    * **A schema version** in the ``meta`` table: a store from another version is refused, not
      silently misread. Nothing here deletes or rewrites a stored ranking or comparison.
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0):
        self.path = Path(path).expanduser()
        self.read_only = self._check_place()
        self._lock = threading.Lock()  # one transaction at a time per store object
        # isolation_level=None: no implicit transactions, each one is opened explicitly below.
        # check_same_thread=False: widget callbacks may run on another thread than the cell.
        try:
            self._con = sqlite3.connect(self._uri(), uri=True, timeout=busy_timeout_s,
                                        isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise StoreUnavailable("file", f"SQLite cannot open the store ({error}); check the "
                                   "path and its permissions.", str(self.path)) from None
        try:
            self._open_waiting(busy_timeout_s)
        except BaseException:
            self._con.close()
            raise

    def _check_place(self) -> bool:
        """Refuse a path that cannot hold a store, in one sentence; True if it can only be read.

        A store in WAL mode keeps two companion files (``-wal`` and ``-shm``) beside it, so a
        store can be written only where both the file and its folder can be written.
        """
        where = str(self.path)
        if self.path.is_dir():
            raise StoreUnavailable("path", "the path is a folder, not a file; give a file path such as "
                                   f"{self.path / 'rankings.sqlite'}.", where)
        if self.path.exists():
            return not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreUnavailable("path", f"the store cannot be created ({error.strerror}); choose "
                                   "a folder you can write to.", where) from None
        if not os.access(self.path.parent, os.W_OK):
            raise StoreUnavailable("path", f"the store cannot be created because {self.path.parent} is "
                                   "read-only; choose a folder you can write to (or set "
                                   "RLHF_KIT_HOME to one).", where)
        return False

    def _uri(self) -> str:
        """The SQLite URI of the file: read-write, or read-only where it cannot be written.

        A read-only WAL database whose companion files are gone (it was closed cleanly) can only
        be opened as immutable; where they are still there, SQLite reads them as usual.
        """
        uri = "file:" + quote(str(self.path.resolve()))
        if not self.read_only:
            return uri
        companions = all(Path(f"{self.path}{end}").exists() for end in ("-wal", "-shm"))
        return uri + ("?mode=ro" if companions else "?mode=ro&immutable=1")

    def _open_waiting(self, timeout_s: float) -> None:
        """Open, retrying while another process holds the file's lock (it may be creating it).

        SQLite's busy timeout covers reads and ``BEGIN IMMEDIATE``, but switching a file to WAL
        can report "database is locked" at once, without waiting, while another connection is
        creating the schema or checkpointing. Every step of ``_open`` is safe to repeat.
        """
        deadline = time.monotonic() + timeout_s
        pause = 0.005
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise StoreUnavailable("file", f"SQLite cannot open the store ({error}); check "
                                           "the path and its permissions (the file was not "
                                           "changed).", str(self.path)) from None
                if time.monotonic() + pause > deadline:
                    raise sqlite3.OperationalError(
                        f"{self.path} stayed locked by another process for {timeout_s:g} s; close "
                        "the other notebook or process using it and try again (nothing was "
                        "changed).") from None
                time.sleep(pause)
                pause = min(2 * pause, 0.25)

    def _open(self) -> None:
        def tables() -> set[str]:
            return {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type='table'")}

        try:
            # Look before touching anything: a foreign database is refused unchanged.
            found = tables()
            if found and "meta" not in found:
                raise DamagedStore("meta", "is missing, so this database is not a rankings store; "
                                   "choose another path (the file was not changed).", str(self.path))
            if found and (missing := sorted(STORE_TABLES - found)):
                raise DamagedStore(f"{missing[0]} table", "is missing from this rankings store; restore a "
                                   "copy of the file, or import your JSONL export into a new store "
                                   "(the file was not changed).", str(self.path))
            if self.read_only:
                if not found:
                    raise StoreUnavailable("file", "the file is read-only and holds no store yet; "
                                           "choose a file you can write to.", str(self.path))
                meta = dict(self._con.execute("SELECT name, value FROM meta"))
            else:
                self._con.execute("PRAGMA journal_mode = WAL")  # stored in the file: once is enough
                self._con.execute("PRAGMA synchronous = FULL")  # per connection: fsync every commit
                with self._transaction() as con:
                    if not tables():  # a new (or empty) file: create the schema in this transaction
                        # One statement at a time: executescript() would commit this transaction.
                        for statement in SCHEMA.split(";"):
                            if statement.strip():
                                con.execute(statement)
                        con.execute("INSERT INTO meta VALUES ('format', 'rlhf-kit rankings'), "
                                    "('schema_version', ?)", (str(SCHEMA_VERSION),))
                        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    meta = dict(con.execute("SELECT name, value FROM meta"))
        except sqlite3.OperationalError:  # locked for longer than the busy timeout, no permission
            raise
        except sqlite3.DatabaseError as error:  # "file is not a database", "disk image malformed"
            raise DamagedStore("file", f"cannot be read by SQLite ({error}); choose another path "
                               "or restore a copy (the file was not changed).", str(self.path)) from None
        version = meta.get("schema_version", "missing")
        try:
            check_version(int(version) if version.isdigit() else version)
        except RankingError as error:
            raise error.at(str(self.path)) from None

    @contextmanager
    def _transaction(self):
        """One write transaction: committed (and fsynced) on success, rolled back on any error.

        After the commit the write-ahead log is copied into the database file (a passive
        checkpoint, which never waits for another connection), so that a copy of the ``.sqlite``
        file alone, taken while a notebook still has the store open, holds every ranking.
        """
        if self.read_only:
            raise StoreUnavailable("file", "the store is read-only, so it can be read but nothing "
                                   "can be stored in it; copy it to a folder you can write to "
                                   "and open the copy (nothing was stored).", str(self.path))
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")  # take the write lock now, waiting if needed
            try:
                yield self._con
                self._con.execute("COMMIT")
            except BaseException:
                if self._con.in_transaction:  # also when COMMIT itself failed (disk full...)
                    self._con.execute("ROLLBACK")
                raise
            try:
                self._con.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:  # the write is committed; the next checkpoint copies it over
                pass

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> RankingStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RankingStore({str(self.path)!r})"

    def __len__(self) -> int:
        with self._lock:
            return self._con.execute("SELECT COUNT(*) FROM rankings").fetchone()[0]

    # -- writing --------------------------------------------------------------------------------

    @staticmethod
    def _row(record: Ranking | Comparison, columns: tuple[str, ...]) -> tuple:
        data = record.to_dict()
        data["created_at"] = data["created_at"] or now()
        return tuple(json.dumps(data[c], ensure_ascii=False) if c in JSON_COLUMNS else data[c]
                     for c in columns)

    def add(self, record: Ranking, key: str | None = None) -> bool:
        """Store one ranking durably; True if stored, False if its key was already there.

        When this returns, the ranking is on disk: a crash a moment later does not lose it.
        """
        if not isinstance(record, Ranking):
            raise TypeError(f"add() takes a Ranking, not {type(record).__name__}.")
        return self._insert("rankings", RANKING_COLUMNS, record, key)

    def add_comparison(self, record: Comparison, key: str | None = None) -> bool:
        """Store one blind comparison durably; True if stored, False if its key was already there."""
        if not isinstance(record, Comparison):
            raise TypeError(f"add_comparison() takes a Comparison, not {type(record).__name__}.")
        return self._insert("comparisons", COMPARISON_COLUMNS, record, key)

    def _insert(self, table: str, columns: tuple[str, ...], record, key: str | None) -> bool:
        """One record's row into ``table`` in its own transaction, unless its key is there already
        (``key`` replaces the record's own); True if it was stored."""
        row = self._row(record, columns)
        row = (key or row[0], *row[1:])
        with self._transaction() as con:
            cursor = con.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) "
                                 f"VALUES ({', '.join('?' * len(columns))})", row)
        return cursor.rowcount == 1

    def skip(self, item: Item | ComparisonItem, labeler: str = "you") -> None:
        """Remember that ``labeler`` skipped ``item``, so that it is not shown again."""
        with self._transaction() as con:
            con.execute("INSERT OR IGNORE INTO skips VALUES (?, ?, ?, ?)",
                        (item.key(labeler), item.prompt, labeler, now()))

    def clear_skips(self, labeler: str = "you") -> int:
        """Forget ``labeler``'s skips, so that the skipped prompts come back; returns how many."""
        with self._transaction() as con:
            return con.execute("DELETE FROM skips WHERE labeler = ?", (labeler,)).rowcount

    # -- reading --------------------------------------------------------------------------------

    def _records(self, cls, table: str, columns: tuple[str, ...], labeler: str | None) -> list:
        query = f"SELECT id, {', '.join(columns)} FROM {table}"
        args: tuple = ()
        if labeler is not None:
            query, args = query + " WHERE labeler = ?", (labeler,)
        with self._lock:  # not in the middle of another thread's transaction
            rows = self._con.execute(query + " ORDER BY id", args).fetchall()
        records = []
        for row_id, *values in rows:
            where = f"{table[:-1]} {row_id} of {self.path.name}"
            data = dict(zip(columns, values))
            for name in JSON_COLUMNS & data.keys():
                try:
                    data[name] = json.loads(data[name])
                except (TypeError, ValueError):
                    raise DamagedRecord(name, "is not valid JSON; restore the file from a copy "
                                        "or a JSONL export.", where) from None
            records.append(cls.from_dict(data, where))
        return records

    def rankings(self, labeler: str | None = None) -> list[Ranking]:
        """Every stored ranking (of one labeler, if given), in the order they were stored."""
        return self._records(Ranking, "rankings", RANKING_COLUMNS, labeler)

    def comparisons(self, labeler: str | None = None) -> list[Comparison]:
        """Every stored blind comparison (of one labeler, if given), oldest first."""
        return self._records(Comparison, "comparisons", COMPARISON_COLUMNS, labeler)

    def _keys(self, table: str) -> set[str]:
        with self._lock:
            return {r[0] for r in self._con.execute(f"SELECT key FROM {table}")}

    def pending(self, items: Iterable, labeler: str = "you",
                include_skipped: bool = False) -> list[Item]:
        """The items ``labeler`` has neither ranked nor skipped, in order: where to resume."""
        items = [as_item(i) for i in items]
        done = self._keys("rankings") | (set() if include_skipped else self._keys("skips"))
        return [i for i in items if i.key(labeler) not in done]

    def pending_comparisons(self, items: Iterable, labeler: str = "you") -> list[ComparisonItem]:
        """The comparison items ``labeler`` has neither judged nor skipped, in their given order."""
        items = [as_comparison_item(i) for i in items]
        done = self._keys("comparisons") | self._keys("skips")
        return [i for i in items if i.key(labeler) not in done]

    def progress(self, items: Iterable, labeler: str = "you", table: str = "rankings") -> Progress:
        """How many of ``items`` ``labeler`` has ranked (or compared, with table="comparisons")."""
        check = as_item if table == "rankings" else as_comparison_item
        keys = [check(i).key(labeler) for i in items]
        done, skipped = self._keys(table), self._keys("skips")
        return Progress(sum(k in done for k in keys), sum(k in skipped and k not in done for k in keys),
                        len(keys))

    # -- pairs, files, checks -------------------------------------------------------------------

    def to_pairs(self, labeler: str | None = None):
        """The stored rankings as TRL preference pairs, a ``datasets.Dataset`` (``pairs_dataset``)."""
        return pairs_dataset(self.rankings(labeler))

    def pair_stats(self, labeler: str | None = None) -> PairStats:
        """How many rankings, pairs and dropped ties ``to_pairs`` gives."""
        return expand_pairs(self.rankings(labeler))[1]

    def export_jsonl(self, path: str | Path) -> int:
        """Write every ranking to a JSONL file (atomically); returns how many."""
        return write_jsonl(self.rankings(), path)

    def import_jsonl(self, path: str | Path) -> int:
        """Add the rankings of a JSONL file; returns how many were new.

        The whole file is read and validated first, then stored in one transaction: a damaged file
        raises an error naming the line and field, and stores nothing.
        """
        records = read_jsonl(path)
        rows = [self._row(r, RANKING_COLUMNS) for r in records]
        with self._transaction() as con:
            before = con.total_changes
            con.executemany(f"INSERT OR IGNORE INTO rankings ({', '.join(RANKING_COLUMNS)}) "
                            f"VALUES ({', '.join('?' * len(RANKING_COLUMNS))})", rows)
            return con.total_changes - before

    def check_integrity(self) -> dict[str, int]:
        """SQLite's own integrity check, then every record read back and validated.

        Returns the number of rankings, comparisons and skips; raises ``DamagedStore`` or
        ``DamagedRecord`` (naming the record and field) when something is wrong.
        """
        with self._lock:
            result = [r[0] for r in self._con.execute("PRAGMA integrity_check")]
            n_skips = self._con.execute("SELECT COUNT(*) FROM skips").fetchone()[0]
        if result != ["ok"]:
            raise DamagedStore("file", f"fails SQLite's integrity check ({result[0]}); copy it "
                               "aside and import your last JSONL export.", str(self.path))
        return {"rankings": len(self.rankings()), "comparisons": len(self.comparisons()),
                "skips": n_skips}


def write_jsonl(records: Iterable[Ranking], path: str | Path) -> int:
    """Write rankings as JSONL, one per line; a temporary file is renamed into place when complete,
    so an interrupted export never leaves half a file where a good one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp makes a private file; give it the usual permissions
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return n


def _field_before(text: str) -> str:
    """The last JSON key that starts before the end of ``text`` (the field a damage falls in)."""
    keys = re.findall(r'"([A-Za-z_]+)"\s*:', text)
    return keys[-1] if keys else "record"


def read_jsonl(path: str | Path) -> list[Ranking]:
    """Read and validate every ranking of a JSONL file; any damage raises an error naming the
    line and the field (bytes that are not UTF-8, a line cut short, a missing or bad field)."""
    path = Path(path)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {number} of {path.name}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            field = _field_before(line[: error.start].decode("utf-8", errors="replace"))
            raise DamagedRecord(field, f"byte {error.start} of the line is not UTF-8; save the "
                                "file as UTF-8 and import it again.", where) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            field = _field_before(text[: error.pos])
            if number == len(lines) and not raw.endswith(b"\n"):  # the last line, with no end
                problem = "is cut short (the file is truncated); export it again."
            else:
                problem = f"is not valid JSON at character {error.pos}; fix or remove the line."
            raise DamagedRecord(field, problem, where) from None
        record = Ranking.from_dict(data, where)
        if isinstance(data, dict) and data.get("key") and data["key"] != record.item.key(record.labeler):
            # The key is a hash of the content; a hand-edited line keeps an old key, and the store
            # would then take it for the ranking that key belongs to and ignore it.
            raise DamagedRecord("key", "does not match the ranking's prompt, completions, model "
                                "and labeler (was the line edited?); delete the key field and "
                                "import the file again.", where)
        records.append(record)
    return records
