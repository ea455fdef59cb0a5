"""Human feedback: people rank completions, and each ranking becomes preference pairs.

For each prompt the model writes K completions and a person orders them from best to worst
(InstructGPT's labelers ranked 4 to 9 at a time). One ranking of K completions says
C(K,2) = K·(K−1)/2 things at once, because every completion beats each one below it. Those
(chosen, rejected) pairs are what the reward model of the next lesson learns from:

    loss = −1/C(K,2) · Σ_(chosen, rejected) log σ(r(prompt, chosen) − r(prompt, rejected))

The weight 1/C(K,2) keeps the pairs of one prompt together as one unit, so a ranking of nine
completions (36 pairs) does not count 36 times as much as a single comparison, and the reward
model does not overfit to the prompts ranked with the most completions (InstructGPT, Ouyang et
al. 2022, section 3.5).

The rankings are a learner's own work, so this module is mostly about not losing them:

1. **Records and validation.** A ``Ranking`` cannot be built unless every completion is ranked
   exactly once and ties join neighbours; a bad one raises a ``RankingError`` that names the field
   and says, in one sentence, what to do.
2. **The store.** ``RankingStore`` is a SQLite database in WAL mode with full synchronous commits:
   each ranking is one transaction that is on disk before ``add`` returns, an idempotency key makes
   storing the same ranking twice a no-op, and two notebooks can write to one file at once.
3. **Rankings to pairs.** ``expand_pairs`` turns rankings into TRL's (prompt, chosen, rejected)
   rows with a group id and the weight 1/C(K,2); tied pairs are dropped and counted.
4. **The simulated labeler.** A stand-in for a person: it scores each completion with the toy
   world's rubric (answers the question, is true, is polite, is brief) and adds Gumbel noise, so
   that two simulated labelers agree about as often as InstructGPT's people did (about 73 %).
5. **Example completions and rankings.** Completions composed from the world's templates, and the
   shipped file ``rlhf_kit/data/example_rankings.jsonl`` made from them by the simulated labeler.

The ranking and comparison widgets that write to the store are in ``rlhf_kit/widgets.py``.
Reads: completions (from a model, or the templates of section 5). Writes: one SQLite file
(``default_store_path()``), and JSONL exports. Taught in ``course/03_human_feedback.ipynb``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from .world import QUESTIONS, RELATIONS, RUDE_REPLIES, REFUSAL, VALUES, Question, World

SCHEMA_VERSION = 1
"""Version of the record format, in the database and in every JSONL line. Bumped on any change."""

K_MIN, K_MAX = 2, 9
"""How many completions one ranking may hold (InstructGPT showed its labelers 4 to 9)."""

LABELER_KINDS = ("person", "simulated")

# ----------------------------------------------------------------------------------------------
# 1. Records and validation
# ----------------------------------------------------------------------------------------------


class RankingError(ValueError):
    """A ranking, comparison or file that cannot be stored or read.

    ``field`` names the bad field, ``where`` the record ("line 3 of rankings.jsonl"), and
    ``problem`` is one clause that says what is wrong and what to do.
    """

    def __init__(self, field: str, problem: str, where: str | None = None):
        self.field, self.problem, self.where = field, problem, where
        place = f"{where[:1].upper()}{where[1:]}, field {field!r}" if where else f"Field {field!r}"
        super().__init__(f"{place}: {problem}")

    @property
    def sentence(self) -> str:
        """The problem alone, as a sentence (what a widget shows)."""
        return self.problem[:1].upper() + self.problem[1:]

    def __reduce__(self):  # pickle with all three fields (errors may cross process boundaries)
        return type(self), (self.field, self.problem, self.where)

    def at(self, where: str) -> RankingError:
        """The same error, placed in a record (used when reading files and databases)."""
        return type(self)(self.field, self.problem, where)


class InvalidCompletions(RankingError):
    """K out of range, or an empty or repeated completion."""


class InvalidRanking(RankingError):
    """A ranking that does not list every completion exactly once."""


class InvalidTies(RankingError):
    """A tie that does not join two neighbours of the ranking."""


class InvalidField(RankingError):
    """A field of the wrong type or value (prompt, model, labeler, shown order, winner...)."""


class SchemaVersionError(RankingError):
    """A record or a store written in another version of the format."""


class DamagedRecord(RankingError):
    """A record that cannot be read: not UTF-8, cut short, not JSON, or a field missing."""


class DamagedStore(RankingError):
    """A database file that is not a rankings store, or that fails its integrity check."""


class StoreUnavailable(RankingError):
    """A store that cannot be opened or written here: a folder, or a read-only file or folder."""


def _unencodable(text: str) -> int | None:
    """The position of the first character UTF-8 cannot encode (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def check_text(name: str, value: object) -> str:
    """A non-empty string that UTF-8 can encode, or an ``InvalidField`` naming ``name``."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(name, f"must be a non-empty text, not {value!r}; pass a string.")
    if (at := _unencodable(value)) is not None:
        raise InvalidField(name, f"holds a character that is not valid text ({value[at]!r} at "
                           f"position {at}, half of a surrogate pair); remove it.")
    return value


def check_completions(completions: object) -> tuple[str, ...]:
    """K distinct, non-empty texts with K_MIN <= K <= K_MAX."""
    if isinstance(completions, str) or not isinstance(completions, Sequence):
        raise InvalidCompletions("completions", "must be a list of texts, one per completion.")
    k = len(completions)
    if not K_MIN <= k <= K_MAX:
        raise InvalidCompletions(
            "completions", f"holds {k} completions; give between {K_MIN} and {K_MAX}.")
    first_seen: dict[str, int] = {}
    for i, text in enumerate(completions):
        if not isinstance(text, str):
            raise InvalidCompletions("completions", f"completion {i} is not a text; pass strings.")
        if not text.strip():
            raise InvalidCompletions(
                "completions", f"completion {i} is empty; sample another one in its place.")
        if (at := _unencodable(text)) is not None:
            raise InvalidCompletions(
                "completions", f"completion {i} holds a character that is not valid text "
                f"({text[at]!r} at position {at}, half of a surrogate pair); remove it.")
        # Two identical completions would make a pair that teaches nothing, or a contradiction
        # (the same text both chosen and rejected), so they are refused at the door.
        if text.strip() in first_seen:
            raise InvalidCompletions(
                "completions", f"completions {first_seen[text.strip()]} and {i} are identical; "
                "sample again until every completion differs.")
        first_seen[text.strip()] = i
    return tuple(completions)


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ranking(ranking: object, k: int) -> tuple[int, ...]:
    """Completion indices, best first: each of 0..k-1 exactly once."""
    if isinstance(ranking, (str, bytes)) or not isinstance(ranking, Sequence):
        raise InvalidRanking("ranking", "must be a list of completion indices, best first.")
    for i in ranking:
        if not _is_index(i):
            raise InvalidRanking(
                "ranking", f"the entry {i!r} is not a completion index; use whole numbers.")
        if not 0 <= i < k:
            raise InvalidRanking(
                "ranking", f"index {i} is out of range; use the indices 0 to {k - 1}.")
    seen: set[int] = set()
    for i in ranking:
        if i in seen:
            raise InvalidRanking(
                "ranking", f"completion {i} is ranked twice; rank each completion exactly once.")
        seen.add(i)
    missing = [i for i in range(k) if i not in seen]
    if missing:
        names = ", ".join(map(str, missing))
        raise InvalidRanking(
            "ranking", f"{len(missing)} of {k} completions are not ranked yet (index {names}); "
            "rank every completion, best first.")
    return tuple(ranking)


def check_ties(ties: object, ranking: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Pairs of completions marked equally good, each joining two neighbours of the ranking.

    A tie must join neighbours: with A above B above C, "A ties C" would say A = C while B sits
    between them, which is a contradiction (A >= B >= C = A makes all three equal). A run of ties
    (A = B, B = C) is fine and makes a group of three equals.
    """
    if isinstance(ties, (str, bytes)) or not isinstance(ties, Sequence):
        raise InvalidTies("ties", "must be a list of pairs (i, j) of completions marked as equal.")
    position = {c: p for p, c in enumerate(ranking)}
    normalised = set()
    for tie in ties:
        if (isinstance(tie, (str, bytes)) or not isinstance(tie, Sequence) or len(tie) != 2
                or not all(_is_index(i) for i in tie)):
            raise InvalidTies("ties", f"the tie {tie!r} is not a pair of completion indices; "
                              "mark a tie as (i, j).")
        a, b = tie
        if a not in position or b not in position:
            raise InvalidTies("ties", f"the tie {a}-{b} names a completion that is not in the "
                              "ranking; tie two ranked completions.")
        if a == b:
            raise InvalidTies("ties", f"the tie {a}-{b} joins a completion to itself; "
                              "tie two different completions.")
        if abs(position[a] - position[b]) != 1:
            raise InvalidTies("ties", f"completions {a} and {b} are marked as a tie but are not "
                              "next to each other in the ranking; rank tied completions side by side.")
        normalised.add((min(a, b), max(a, b)))
    return tuple(sorted(normalised))


def check_order(order: object, k: int, name: str = "shown_order") -> tuple[int, ...]:
    """A permutation of 0..k-1 (the order in which completions were shown)."""
    if (isinstance(order, (str, bytes)) or not isinstance(order, Sequence)
            or sorted(i for i in order if _is_index(i)) != list(range(k)) or len(order) != k):
        raise InvalidField(name, f"must list each completion index 0 to {k - 1} once, "
                           "in the order they were shown.")
    return tuple(order)


def check_labeler_kind(kind: object) -> str:
    if kind not in LABELER_KINDS:
        raise InvalidField("labeler_kind", f"is {kind!r}; use 'person' or 'simulated'.")
    return kind  # type: ignore[return-value]


def check_version(version: object) -> int:
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            "schema_version", f"is {version!r} but this rlhf-kit reads version {SCHEMA_VERSION}; "
            "open it with the rlhf-kit that wrote it, or export it again.")
    return SCHEMA_VERSION


def _key(*parts: object) -> str:
    """A content hash: the same item, for the same labeler, always gets the same key."""
    blob = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def shuffled_order(key: str, k: int) -> tuple[int, ...]:
    """The order in which the k completions of an item are shown: shuffled, but the same every
    time the same labeler sees the same item (seeded by its key), so a rerun shows the same screen."""
    order = list(range(k))
    random.Random(key).shuffle(order)
    return tuple(order)


def now() -> str:
    """The current UTC time as ISO 8601 text, the timestamp of every stored record."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Item(NamedTuple):
    """One prompt to rank: its K completions, and the name of the model that wrote them."""

    prompt: str
    completions: tuple[str, ...]
    model: str = "unknown"

    def key(self, labeler: str) -> str:
        """The idempotency key of this item ranked by ``labeler``."""
        return _key("ranking", labeler, self.model, self.prompt, list(self.completions))


class ComparisonItem(NamedTuple):
    """One prompt to compare blind: two completions, and the models that wrote them."""

    prompt: str
    completions: tuple[str, str]
    models: tuple[str, str]

    def key(self, labeler: str) -> str:
        return _key("comparison", labeler, list(self.models), self.prompt, list(self.completions))


def as_item(item: Item | Sequence) -> Item:
    """An ``Item`` from an ``Item`` or a tuple ``(prompt, completions[, model])``, validated."""
    item = Item(*item)
    return Item(check_text("prompt", item.prompt), check_completions(item.completions),
                check_text("model", item.model))


def as_comparison_item(item: ComparisonItem | Sequence) -> ComparisonItem:
    """A ``ComparisonItem`` from one or from a tuple ``(prompt, (a, b), (model_a, model_b))``."""
    item = ComparisonItem(*item)
    completions, models = tuple(item.completions), tuple(item.models)
    if len(completions) != 2 or not all(isinstance(c, str) and c.strip() for c in completions):
        raise InvalidCompletions("completions", "a comparison needs exactly two non-empty texts.")
    for i, text in enumerate(completions):
        if (at := _unencodable(text)) is not None:
            raise InvalidCompletions(
                "completions", f"completion {i} holds a character that is not valid text "
                f"({text[at]!r} at position {at}, half of a surrogate pair); remove it.")
    if len(models) != 2:
        raise InvalidField("models", "a comparison needs the names of its two models.")
    return ComparisonItem(check_text("prompt", item.prompt), completions,  # type: ignore[arg-type]
                          (check_text("models", models[0]), check_text("models", models[1])))


@dataclass(frozen=True)
class Ranking:
    """One person's (or simulated person's) ranking of the K completions of one prompt.

    Building one validates it, so an invalid ranking never exists, let alone gets stored.
    """

    prompt: str
    completions: tuple[str, ...]
    ranking: tuple[int, ...]  # completion indices, best first: (2, 0, 3, 1)
    ties: tuple[tuple[int, int], ...] = ()  # pairs marked equally good: ((0, 3),)
    shown_order: tuple[int, ...] | None = None  # indices top to bottom on screen; None: as given
    model: str = "unknown"  # the model that wrote the completions
    labeler: str = "you"  # who ranked: a person's name, or "simulated-0"
    labeler_kind: str = "person"  # "person" or "simulated"
    created_at: str = ""  # UTC ISO time; set by the store when empty
    key: str = ""  # idempotency key; derived from the content when empty
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # Frozen dataclass: normalised values (tuples, sorted ties) are set with object.__setattr__.
        set_ = object.__setattr__
        check_version(self.schema_version)
        check_text("prompt", self.prompt)
        set_(self, "completions", check_completions(self.completions))
        k = len(self.completions)
        set_(self, "ranking", check_ranking(self.ranking, k))
        set_(self, "ties", check_ties(self.ties, self.ranking))
        order = tuple(range(k)) if self.shown_order is None else self.shown_order
        set_(self, "shown_order", check_order(order, k))
        for name in ("model", "labeler"):
            check_text(name, getattr(self, name))
        check_labeler_kind(self.labeler_kind)
        for name in ("created_at", "key"):  # empty: the store stamps the time, the key is derived
            if not isinstance(getattr(self, name), str):
                raise InvalidField(name, "must be a text, or empty to have it filled in.")
        if not self.key:
            set_(self, "key", self.item.key(self.labeler))

    @property
    def item(self) -> Item:
        return Item(self.prompt, self.completions, self.model)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (lists instead of tuples), one JSONL line."""
        return {"schema_version": self.schema_version, "key": self.key, "prompt": self.prompt,
                "completions": list(self.completions), "shown_order": list(self.shown_order),
                "ranking": list(self.ranking), "ties": [list(t) for t in self.ties],
                "model": self.model, "labeler": self.labeler, "labeler_kind": self.labeler_kind,
                "created_at": self.created_at}

    @classmethod
    def from_dict(cls, data: dict, where: str = "the record") -> Ranking:
        """Read a record written by ``to_dict``; errors name ``where`` and the field."""
        return _from_dict(cls, data, where, ("prompt", "completions", "ranking"),
                          ("ties", "shown_order", "model", "labeler", "labeler_kind",
                           "created_at", "key"))


@dataclass(frozen=True)
class Comparison:
    """A blind side-by-side judgement of two completions of one prompt, by two models."""

    prompt: str
    completions: tuple[str, str]
    models: tuple[str, str]  # models[i] wrote completions[i]
    winner: int | None  # 0 or 1: the index of the better completion; None: a tie
    shown_order: tuple[int, int] = (0, 1)  # which completion was shown as A, then as B
    labeler: str = "you"
    labeler_kind: str = "person"
    created_at: str = ""
    key: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        check_version(self.schema_version)
        item = as_comparison_item((self.prompt, self.completions, self.models))
        set_(self, "completions", item.completions)
        set_(self, "models", item.models)
        if self.winner is not None and not (_is_index(self.winner) and self.winner in (0, 1)):
            raise InvalidField("winner", f"is {self.winner!r}; use 0, 1, or None for a tie.")
        set_(self, "shown_order", check_order(self.shown_order, 2))
        check_text("labeler", self.labeler)
        check_labeler_kind(self.labeler_kind)
        for name in ("created_at", "key"):
            if not isinstance(getattr(self, name), str):
                raise InvalidField(name, "must be a text, or empty to have it filled in.")
        if not self.key:
            set_(self, "key", item.key(self.labeler))

    def to_dict(self) -> dict:
        return {"schema_version": self.schema_version, "key": self.key, "prompt": self.prompt,
                "completions": list(self.completions), "models": list(self.models),
                "winner": self.winner, "shown_order": list(self.shown_order),
                "labeler": self.labeler, "labeler_kind": self.labeler_kind,
                "created_at": self.created_at}

    @classmethod
    def from_dict(cls, data: dict, where: str = "the record") -> Comparison:
        return _from_dict(cls, data, where, ("prompt", "completions", "models", "winner"),
                          ("shown_order", "labeler", "labeler_kind", "created_at", "key"))


def _from_dict(cls, data: object, where: str, required: tuple, optional: tuple):
    """Build ``cls`` from JSON data: a missing field or a bad value raises an error at ``where``."""
    if not isinstance(data, dict):
        raise DamagedRecord("record", "is not a JSON object; each line must hold one record.", where)
    if "schema_version" not in data:
        raise DamagedRecord("schema_version", "is missing; this is not a file rlhf-kit wrote.", where)
    for name in required:
        if name not in data:
            raise DamagedRecord(name, "is missing; this is not a file rlhf-kit wrote.", where)
    fields = {name: data[name] for name in ("schema_version", *required, *optional) if name in data}
    for name in ("ties",):  # JSON has no tuples: [[0, 3]] -> ((0, 3),)
        if isinstance(fields.get(name), list):
            fields[name] = tuple(tuple(t) if isinstance(t, list) else t for t in fields[name])
    try:
        return cls(**fields)
    except RankingError as error:
        raise error.at(where) from None


# ----------------------------------------------------------------------------------------------
# 2. The store
# ----------------------------------------------------------------------------------------------

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


def default_store_path() -> Path:
    """Where the course keeps the learner's rankings: ``<artifacts home>/feedback/rankings.sqlite``."""
    from .runtime import artifacts_home  # imported here: runtime imports torch, the store does not

    return artifacts_home() / "feedback" / "rankings.sqlite"


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
                raise DamagedStore(f"{missing[0]} table", "is missing from this rankings store; restore a copy "
                                   "of the file, or import your JSONL export into a new store "
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
        row = self._row(record, RANKING_COLUMNS)
        row = (key or row[0], *row[1:])
        with self._transaction() as con:
            cursor = con.execute(f"INSERT OR IGNORE INTO rankings ({', '.join(RANKING_COLUMNS)}) "
                                 f"VALUES ({', '.join('?' * len(RANKING_COLUMNS))})", row)
        return cursor.rowcount == 1

    def add_comparison(self, record: Comparison, key: str | None = None) -> bool:
        """Store one blind comparison durably; True if stored, False if its key was already there."""
        if not isinstance(record, Comparison):
            raise TypeError(f"add_comparison() takes a Comparison, not {type(record).__name__}.")
        row = self._row(record, COMPARISON_COLUMNS)
        row = (key or row[0], *row[1:])
        with self._transaction() as con:
            cursor = con.execute(f"INSERT OR IGNORE INTO comparisons ({', '.join(COMPARISON_COLUMNS)}) "
                                 f"VALUES ({', '.join('?' * len(COMPARISON_COLUMNS))})", row)
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


# ----------------------------------------------------------------------------------------------
# 3. Rankings to pairs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairStats:
    rankings: int  # rankings read
    pairs: int  # (chosen, rejected) pairs made
    ties_dropped: int  # pairs marked equally good, which say nothing about preference


def tie_groups(record: Ranking) -> dict[int, int]:
    """Completion index -> group number; completions joined by ties share a group."""
    tied_to_previous = {max(a, b, key=record.ranking.index) for a, b in record.ties}
    group, groups = -1, {}
    for c in record.ranking:
        if c not in tied_to_previous:
            group += 1
        groups[c] = group
    return groups


def ranking_pairs(record: Ranking) -> tuple[list[tuple[int, int]], int]:
    """The (chosen, rejected) completion indices of one ranking, and how many tied pairs it drops.

    Every completion beats each one ranked below it, except those tied with it: of the C(K,2)
    pairs, ``len(pairs) + ties == C(K,2)``.
    """
    group = tie_groups(record)
    pairs, ties = [], 0
    for better, worse in combinations(record.ranking, 2):  # ranking order: `better` is above
        if group[better] == group[worse]:
            ties += 1
        else:
            pairs.append((better, worse))
    return pairs, ties


def expand_pairs(rankings: Iterable[Ranking]) -> tuple[list[dict], PairStats]:
    """Rows ``{prompt, chosen, rejected, group_id, weight}`` from rankings, and their counts.

    ``group_id`` numbers the rankings, so that the pairs of one prompt can be kept in one batch;
    ``weight`` is 1/C(K,2), so that each ranking counts once however large K is. Dropped ties are
    not re-weighted: a ranking with ties says less, and weighs less. Identical completions never
    get here (a ``Ranking`` refuses them), so no pair has the same text chosen and rejected.
    """
    rows, n_rankings, n_ties = [], 0, 0
    for group_id, record in enumerate(rankings):
        pairs, ties = ranking_pairs(record)
        weight = 1.0 / math.comb(len(record.completions), 2)
        rows += [{"prompt": record.prompt, "chosen": record.completions[a],
                  "rejected": record.completions[b], "group_id": group_id, "weight": weight}
                 for a, b in pairs]
        n_rankings, n_ties = n_rankings + 1, n_ties + ties
    return rows, PairStats(n_rankings, len(rows), n_ties)


def pairs_dataset(rankings: Iterable[Ranking]):
    """The pairs of ``expand_pairs`` as a ``datasets.Dataset`` in TRL's preference format
    (explicit prompt), with the columns prompt, chosen, rejected, group_id and weight."""
    from datasets import Dataset, Features, Value  # imported here: slow, and only needed here

    rows, _ = expand_pairs(rankings)
    features = Features({"prompt": Value("string"), "chosen": Value("string"),
                         "rejected": Value("string"), "group_id": Value("int64"),
                         "weight": Value("float64")})
    return Dataset.from_dict({name: [r[name] for r in rows] for name in features}, features=features)


# ----------------------------------------------------------------------------------------------
# 4. The simulated labeler
# ----------------------------------------------------------------------------------------------

TARGET_AGREEMENT = 0.73
"""How often two of InstructGPT's labelers ordered a pair the same way (72.6 ± 1.5 %)."""

DEFAULT_NOISE = 1.13
"""The Gumbel noise scale at which two simulated labelers agree on 73 % of the pairs of realistic
completion sets: ``calibrate_noise(World(0), calibration_sets(World(0)))`` gives 1.130; the
rubric alone (noise 0) agrees on 92 %, since tied scores split at random. Checked in
tests/test_feedback.py."""


def _gumbel(rng: random.Random) -> float:
    u = rng.random()
    while u == 0.0:  # log(0) is undefined; random() returns 0.0 once in 2**53 draws
        u = rng.random()
    return -math.log(-math.log(u))


def pair_agreement_probability(gap: float, noise: float) -> float:
    """The chance that two simulated labelers order a pair the same way.

    With Gumbel noise of scale β each labeler prefers the better completion with probability
    p = σ(gap/β) (the difference of two Gumbels is logistic: this is the Bradley–Terry model), and
    two independent labelers agree with probability p² + (1 − p)².
    """
    if noise == 0:
        p = 0.5 if gap == 0 else float(gap > 0)
    else:
        p = 1.0 / (1.0 + math.exp(-gap / noise))
    return p * p + (1 - p) * (1 - p)


def pair_relations(ranking: Sequence[int], ties: Iterable[tuple[int, int]] = ()) -> dict:
    """For each pair i < j of completions: +1 if i is ranked above j, -1 if below, 0 if tied."""
    record = Ranking("p", tuple(str(i) for i in range(len(ranking))), tuple(ranking), tuple(ties))
    group, position = tie_groups(record), {c: p for p, c in enumerate(record.ranking)}
    return {(i, j): 0 if group[i] == group[j] else (1 if position[i] < position[j] else -1)
            for i, j in combinations(range(len(ranking)), 2)}


def agreement(first: Iterable[tuple], second: Iterable[tuple]) -> float:
    """The share of completion pairs that two labelers order the same way.

    ``first`` and ``second`` are parallel lists of (ranking, ties) of the same completion sets.
    """
    same = total = 0
    for (r1, t1), (r2, t2) in zip(first, second, strict=True):
        a, b = pair_relations(r1, t1), pair_relations(r2, t2)
        same += sum(a[p] == b[p] for p in a)
        total += len(a)
    return same / total


@dataclass
class SimulatedLabeler:
    """A stand-in for a person: ranks completions by the world's rubric, plus noise.

    Each completion gets its rubric score (``World.judge(question, reply).score``: +2 for the true
    answer, −2 for a falsehood, −2 for rudeness, −0.1 per word past 12) plus β·Gumbel noise, and
    the completions are sorted by that. Sorting Gumbel-perturbed scores draws a ranking from the
    Plackett–Luce model, whose pairs follow Bradley–Terry: P(i beats j) = σ((s_i − s_j)/β), the
    very model the reward model assumes. ``noise=0`` gives the rubric's own ranking (``ideal_ranking``).
    The noise of one item is seeded by (seed, item key): the same labeler judges the same item the
    same way whatever else it has judged.
    """

    world: World
    noise: float = DEFAULT_NOISE  # Gumbel scale β: 0 = the rubric exactly; 0.5-3 = a human-like person
    seed: int = 0  # two labelers with different seeds are two different people
    name: str = ""  # stored as the labeler; default "simulated-<seed>"

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, not {self.noise}.")
        self.name = self.name or f"simulated-{self.seed}"
        self._questions = {q.text: q for q in self.world.questions()}

    def question(self, prompt: str) -> Question:
        """The world's question in ``prompt`` (the last one when a chat prompt holds several)."""
        if prompt in self._questions:
            return self._questions[prompt]
        found = [(prompt.rfind(text), q) for text, q in self._questions.items() if text in prompt]
        if not found:
            raise ValueError(f"The simulated labeler can only judge the world's questions, and "
                             f"{prompt[:60]!r} contains none; rank it yourself.")
        return max(found, key=lambda pair: pair[0])[1]

    def scores(self, prompt: str, completions: Sequence[str]) -> list[float]:
        """The rubric score of each completion, without noise."""
        question = self.question(prompt)
        return [self.world.judge(question, c).score for c in completions]

    def ideal_ranking(self, prompt: str, completions: Sequence[str]) -> tuple[tuple[int, ...], tuple]:
        """The noise-free (ranking, ties): by rubric score, equal scores tied (the "ceiling")."""
        scores = self.scores(prompt, completions)
        ranking = tuple(sorted(range(len(completions)), key=lambda i: (-scores[i], i)))
        ties = tuple((a, b) for a, b in zip(ranking, ranking[1:]) if scores[a] == scores[b])
        return ranking, ties

    def rank(self, prompt: str, completions: Sequence[str],
             key: str = "") -> tuple[tuple[int, ...], tuple]:
        """A noisy (ranking, ties) like a person's; ``key`` seeds the noise (the item's key)."""
        if self.noise == 0:
            return self.ideal_ranking(prompt, completions)
        rng = random.Random(f"{self.seed}/{key or _key(prompt, list(completions))}")
        noisy = [s + self.noise * _gumbel(rng) for s in self.scores(prompt, completions)]
        return tuple(sorted(range(len(completions)), key=lambda i: -noisy[i])), ()

    def compare(self, prompt: str, completions: Sequence[str], key: str = "") -> int | None:
        """Which of two completions is better (0 or 1), or None for a tie (identical texts)."""
        if completions[0].strip() == completions[1].strip():
            return None
        ranking, ties = self.rank(prompt, completions, key)
        return None if ties else ranking[0]

    def label(self, store: RankingStore, items: Iterable) -> int:
        """Rank every pending item into ``store``, through the same path as a person; returns how
        many were stored."""
        added = 0
        for item in store.pending(items, self.name):
            key = item.key(self.name)
            ranking, ties = self.rank(item.prompt, item.completions, key)
            record = Ranking(item.prompt, item.completions, ranking, ties,
                             shown_order=shuffled_order(key, len(item.completions)),
                             model=item.model, labeler=self.name, labeler_kind="simulated")
            added += store.add(record)
        return added

    def label_comparisons(self, store: RankingStore, items: Iterable) -> int:
        """Judge every pending blind comparison into ``store``; returns how many were stored."""
        added = 0
        for item in store.pending_comparisons(items, self.name):
            key = item.key(self.name)
            record = Comparison(item.prompt, item.completions, item.models,
                                self.compare(item.prompt, item.completions, key),
                                shown_order=shuffled_order(key, 2), labeler=self.name,
                                labeler_kind="simulated")
            added += store.add_comparison(record)
        return added


def score_gaps(world: World, sets: Iterable[Item]) -> list[float]:
    """The rubric score difference s_i − s_j of every pair i < j of completions in ``sets``."""
    labeler = SimulatedLabeler(world, noise=0.0)
    gaps = []
    for item in sets:
        scores = labeler.scores(item.prompt, item.completions)
        gaps += [scores[i] - scores[j] for i, j in combinations(range(len(scores)), 2)]
    return gaps


def expected_agreement(gaps: Sequence[float], noise: float) -> float:
    """The exact expected share of pairs that two simulated labelers at ``noise`` order alike."""
    return sum(pair_agreement_probability(g, noise) for g in gaps) / len(gaps)


def calibrate_noise(world: World, sets: Sequence[Item], target: float = TARGET_AGREEMENT) -> float:
    """The noise scale at which two simulated labelers agree on ``target`` of the pairs of ``sets``.

    Agreement falls as noise grows (from the rubric's own agreement at 0 to a coin's 0.5), so the
    scale is found by bisection on ``expected_agreement``.
    """
    gaps = score_gaps(world, sets)
    if expected_agreement(gaps, 0.0) < target:
        raise ValueError(f"Even without noise the labelers agree less than {target:.0%} "
                         "(too many completions with equal scores); use more varied completions.")
    low, high = 1e-3, 100.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if expected_agreement(gaps, mid) > target else (low, mid)
    return (low + high) / 2


def calibration_sets(world: World) -> list[Item]:
    """The completion sets DEFAULT_NOISE was calibrated on: 20 sets of 4 template completions for
    each of the 48 questions of the feedback split (960 sets, 5,760 pairs)."""
    return template_items(world, "feedback", k=4, sets_per_question=20)


# ----------------------------------------------------------------------------------------------
# 5. Example completions and rankings
# ----------------------------------------------------------------------------------------------

COMPLETION_KINDS = {  # kind -> share: a guess at what a small SFT model writes at temperature 1
    "true": 0.30,  # the true answer, in one of a few phrasings
    "false": 0.20,  # a confident wrong answer (a rumour)
    "rude": 0.15,  # an insult, sometimes with an answer
    "rambling": 0.15,  # the answer buried in other facts about the person
    "question": 0.10,  # a question back instead of an answer
    "refusal": 0.10,  # "I don't know."
}

_OPENERS = ("", "Sure! ", "Good question. ", "As far as I know, ", "I believe ")


def template_completion(world: World, question: Question, kind: str, rng: random.Random) -> str:
    """One completion of ``kind`` (see COMPLETION_KINDS) for ``question``, built from the world's
    templates; used where no trained model exists yet (the example rankings, the calibration)."""
    person, relation = question.person, question.relation
    wrong = rng.choice([v for v in VALUES[relation] if v != question.answer])
    if kind == "true":
        return rng.choice(_OPENERS) + question.reference
    if kind == "false":
        return rng.choice(_OPENERS) + world.statement(person, relation, wrong)
    if kind == "rude":
        insult = rng.choice(RUDE_REPLIES)
        roll = rng.random()
        if roll < 0.5:
            return insult
        return insult + " " + world.statement(person, relation, None if roll < 0.8 else wrong)
    if kind == "rambling":
        others = [r for r in RELATIONS if r != relation]
        rng.shuffle(others)
        facts = [world.statement(person, r) for r in others[: rng.randint(1, 3)]]
        facts.insert(rng.randint(0, len(facts)), question.reference)
        return f"Let me tell you all about {person}. " + " ".join(facts)
    if kind == "question":
        other = rng.choice([r for r in RELATIONS if r != relation])
        asked = rng.choice(QUESTIONS[other]).format(person=person)
        return rng.choice(("And " + asked[0].lower() + asked[1:], "Why do you ask? " + asked, asked))
    if kind == "refusal":
        return rng.choice(("", "Sorry, ")) + REFUSAL
    raise ValueError(f"Unknown completion kind {kind!r}; use one of {', '.join(COMPLETION_KINDS)}.")


def template_completions(world: World, question: Question, k: int = 4, seed: int = 0) -> tuple[str, ...]:
    """K distinct completions for ``question``, of kinds drawn at the shares of COMPLETION_KINDS."""
    rng = random.Random(f"{seed}/{question.text}/{k}")
    kinds, shares = list(COMPLETION_KINDS), list(COMPLETION_KINDS.values())
    out: list[str] = []
    while len(out) < k:
        text = template_completion(world, question, rng.choices(kinds, shares)[0], rng)
        if text not in out:  # identical completions are refused by the store
            out.append(text)
    return tuple(out)


def template_items(world: World, split: str = "feedback", k: int = 4, sets_per_question: int = 1,
                   seed: int = 0) -> list[Item]:
    """Items of template completions for every question of ``split`` (model name "templates")."""
    return [Item(q.text, template_completions(world, q, k, seed + s), "templates")
            for s in range(sets_per_question) for q in world.questions(split)]


EXAMPLE_RANKINGS = Path(__file__).parent / "data" / "example_rankings.jsonl"
EXAMPLE_TIMESTAMP = "2025-01-01T00:00:00.000+00:00"  # fixed, so the file is reproducible byte for byte


def make_example_rankings(world: World | None = None) -> list[Ranking]:
    """The rankings of the shipped example file: how ``example_rankings.jsonl`` was made.

    World(seed=0), the 48 questions of the feedback split, two sets of four template completions
    each, ranked by ``SimulatedLabeler(world, seed=0)`` at the default noise. Regenerate with
    ``write_jsonl(make_example_rankings(), EXAMPLE_RANKINGS)``.
    """
    world = world or World(seed=0)
    labeler = SimulatedLabeler(world, seed=0)
    records = []
    for item in template_items(world, "feedback", k=4, sets_per_question=2):
        key = item.key(labeler.name)
        ranking, ties = labeler.rank(item.prompt, item.completions, key)
        records.append(Ranking(item.prompt, item.completions, ranking, ties,
                               shown_order=shuffled_order(key, 4), model=item.model,
                               labeler=labeler.name, labeler_kind="simulated",
                               created_at=EXAMPLE_TIMESTAMP))
    return records


def load_example_rankings() -> list[Ranking]:
    """The shipped example rankings (96 rankings of 4, from the simulated labeler)."""
    return read_jsonl(EXAMPLE_RANKINGS)
