"""What a ranking is, and the preference pairs it makes.

For each prompt the model writes K completions and a person orders them from best to worst
(InstructGPT's labelers ranked 4 to 9 at a time). One ranking of K completions says
C(K,2) = K·(K−1)/2 things at once, because every completion beats each one below it. Those
(chosen, rejected) pairs are what the reward model of the next lesson learns from:

    loss = −1/C(K,2) · Σ_(chosen, rejected) log σ(r(prompt, chosen) − r(prompt, rejected))

The weight 1/C(K,2) keeps the pairs of one prompt together as one unit, so a ranking of nine
completions (36 pairs) does not count 36 times as much as a single comparison, and the reward
model does not overfit to the prompts ranked with the most completions (InstructGPT, Ouyang et
al. 2022, section 3.5).

1. **Records and validation.** A ``Ranking`` cannot be built unless every completion is ranked
   exactly once and ties join neighbours; a bad one raises a ``RankingError`` that names the field
   and says, in one sentence, what to do. A ``Comparison`` (a blind judgement of two completions)
   is validated the same way.
2. **Rankings to pairs.** ``expand_pairs`` turns rankings into TRL's (prompt, chosen, rejected)
   rows with a group id and the weight 1/C(K,2); tied pairs are dropped and counted.

Reads and writes no file: ``store`` keeps the records, ``labeler`` ranks without a person.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations
from typing import NamedTuple

SCHEMA_VERSION = 1
"""Version of the record format, in the database and in every JSONL line. Bumped on any change."""

K_MIN, K_MAX = 2, 9
"""How many completions one ranking may hold (InstructGPT showed its labelers 4 to 9)."""

LABELER_KINDS = ("person", "simulated")

# ----------------------------------------------------------------------------------------------
# Records and validation
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
# Rankings to pairs
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
