"""Unit tests of rlhf_kit.feedback and rlhf_kit.widgets: validation, the store, pairs, the
simulated labeler and the widgets driven without a browser (tests/browser/ clicks them).

Every bad input must raise a typed error that names its field, and store nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sqlite3
from itertools import combinations

import pytest

from rlhf_kit.compare import win_rate
from rlhf_kit.feedback import (
    DEFAULT_NOISE,
    EXAMPLE_RANKINGS,
    K_MAX,
    SCHEMA_VERSION,
    TARGET_AGREEMENT,
    Comparison,
    DamagedRecord,
    DamagedStore,
    InvalidCompletions,
    InvalidField,
    InvalidRanking,
    InvalidTies,
    Item,
    Ranking,
    RankingError,
    RankingStore,
    SchemaVersionError,
    SimulatedLabeler,
    StoreUnavailable,
    agreement,
    calibrate_noise,
    calibration_sets,
    expand_pairs,
    expected_agreement,
    load_example_rankings,
    make_example_rankings,
    pair_agreement_probability,
    ranking_pairs,
    read_jsonl,
    score_gaps,
    template_items,
)
from rlhf_kit.widgets import ComparisonWidget, RankingWidget
from rlhf_kit.world import World

COMPLETIONS = ("Alice lives in Brookfield.", "I don't know.", "Look it up yourself, idiot.")
GOOD = dict(prompt="Where does Alice live?", completions=COMPLETIONS, ranking=(0, 1, 2))


@pytest.fixture(scope="module")
def world():
    return World(seed=0)


@pytest.fixture
def store(tmp_path):
    with RankingStore(tmp_path / "rankings.sqlite") as s:
        yield s


def snapshot(store: RankingStore) -> list[dict]:
    return [r.to_dict() for r in store.rankings()]


# ----------------------------------------------------------------------------------------------
# 1. Validation: a table of bad inputs, each a typed error naming its field
# ----------------------------------------------------------------------------------------------

BAD_RANKINGS = [  # (what is wrong, changes to GOOD, error type, field)
    ("tie not between neighbours", dict(ties=((0, 2),)), InvalidTies, "ties"),
    ("tie of an unknown index", dict(ties=((2, 3),)), InvalidTies, "ties"),
    ("tie of a completion with itself", dict(ties=((1, 1),)), InvalidTies, "ties"),
    ("tie that is not a pair", dict(ties=((0, 1, 2),)), InvalidTies, "ties"),
    ("incomplete ranking", dict(ranking=(0, 1)), InvalidRanking, "ranking"),
    ("empty ranking", dict(ranking=()), InvalidRanking, "ranking"),
    ("unknown index", dict(ranking=(0, 1, 3)), InvalidRanking, "ranking"),
    ("negative index", dict(ranking=(0, 1, -1)), InvalidRanking, "ranking"),
    ("duplicate index", dict(ranking=(0, 1, 1)), InvalidRanking, "ranking"),
    ("index as text", dict(ranking=(0, 1, "2")), InvalidRanking, "ranking"),
    ("index as bool", dict(ranking=(0, 1, True)), InvalidRanking, "ranking"),
    ("ranking as text", dict(ranking="012"), InvalidRanking, "ranking"),
    ("K below range", dict(completions=("Alice lives in Brookfield.",), ranking=(0,)),
     InvalidCompletions, "completions"),
    ("K above range", dict(completions=tuple(f"reply {i}" for i in range(K_MAX + 1)),
                           ranking=tuple(range(K_MAX + 1))), InvalidCompletions, "completions"),
    ("empty completion", dict(completions=("a", "", "c")), InvalidCompletions, "completions"),
    ("blank completion", dict(completions=("a", "  \n", "c")), InvalidCompletions, "completions"),
    ("identical completions", dict(completions=("a", "b", "a")), InvalidCompletions, "completions"),
    ("identical but for spaces", dict(completions=("a", "b", "a ")), InvalidCompletions, "completions"),
    ("completion not text", dict(completions=("a", "b", 3)), InvalidCompletions, "completions"),
    ("wrong schema version", dict(schema_version=SCHEMA_VERSION + 1), SchemaVersionError,
     "schema_version"),
    ("empty prompt", dict(prompt=" "), InvalidField, "prompt"),
    ("unknown labeler kind", dict(labeler_kind="robot"), InvalidField, "labeler_kind"),
    ("shown order not a permutation", dict(shown_order=(0, 0, 1)), InvalidField, "shown_order"),
]


@pytest.mark.parametrize("case, change, error, field", BAD_RANKINGS, ids=[c[0] for c in BAD_RANKINGS])
def test_bad_ranking_is_a_typed_error_naming_the_field(case, change, error, field):
    with pytest.raises(error) as info:
        Ranking(**{**GOOD, **change})
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)
    message = info.value.sentence
    assert not message[0].islower() and message.endswith(".") and message.count(". ") == 0, message


@pytest.mark.parametrize("case, change, error, field", BAD_RANKINGS, ids=[c[0] for c in BAD_RANKINGS])
def test_bad_ranking_in_a_file_names_line_and_field_and_stores_nothing(tmp_path, store, case,
                                                                       change, error, field):
    store.add(Ranking(**GOOD))
    before = snapshot(store)
    good = Ranking(**{**GOOD, "prompt": "Where does Bruno live?"}).to_dict()
    bad = {**GOOD, "schema_version": SCHEMA_VERSION, **change}
    bad = {k: list(v) if isinstance(v, tuple) else v for k, v in bad.items()}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(error) as info:
        store.import_jsonl(path)
    assert info.value.field == field
    assert str(info.value).startswith(f"Line 2 of bad.jsonl, field '{field}'")
    assert snapshot(store) == before  # the good first line was not stored either


def test_good_ranking_is_normalised():
    record = Ranking(**{**GOOD, "ranking": [2, 1, 0], "ties": [[2, 1], (1, 2)]})
    assert record.ranking == (2, 1, 0) and record.ties == ((1, 2),)
    assert record.shown_order == (0, 1, 2)
    assert record.key == Item(GOOD["prompt"], COMPLETIONS, "unknown").key("you")


def damaged_files(good_line: bytes):
    """(what is wrong, file bytes, field, line) for files a reader must refuse."""
    mid = good_line.index(b'"completions"') + 20
    foreign = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode()
    return [
        ("truncated", good_line + b"\n" + good_line[:mid], "completions", 2),
        ("not UTF-8", good_line[:mid] + b"\xff\xfe" + good_line[mid:] + b"\n", "completions", 1),
        ("not JSON", b"hello\n", "record", 1),
        ("not an object", b"[1, 2, 3]\n", "record", 1),
        ("foreign file (TRL pairs)", foreign + b"\n", "schema_version", 1),
        ("field missing", json.dumps({"schema_version": SCHEMA_VERSION, "prompt": "p"}).encode(),
         "completions", 1),
        ("newer schema", good_line.replace(b'"schema_version": 1', b'"schema_version": 2'),
         "schema_version", 1),
    ]


def test_damaged_files_name_line_and_field_and_store_nothing(tmp_path, store):
    store.add(Ranking(**GOOD))
    before = snapshot(store)
    good_line = json.dumps(Ranking(**{**GOOD, "prompt": "Where does Bruno live?"}).to_dict()).encode()
    for case, data, field, line in damaged_files(good_line):
        path = tmp_path / "damaged.jsonl"
        path.write_bytes(data)
        with pytest.raises((DamagedRecord, SchemaVersionError)) as info:
            store.import_jsonl(path)
        assert info.value.field == field, case
        assert str(info.value).startswith(f"Line {line} of damaged.jsonl, field '{field}'"), case
        assert snapshot(store) == before, case


def test_truncated_file_says_it_is_truncated(tmp_path):
    line = json.dumps(Ranking(**GOOD).to_dict())
    path = tmp_path / "cut.jsonl"
    path.write_text(line[: len(line) // 2], encoding="utf-8")
    with pytest.raises(DamagedRecord, match="truncated"):
        read_jsonl(path)


# ----------------------------------------------------------------------------------------------
# 2. The store
# ----------------------------------------------------------------------------------------------


def test_store_settings_are_durable(store):
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert dict(con.execute("SELECT name, value FROM meta"))["schema_version"] == str(SCHEMA_VERSION)
    assert store._con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._con.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


def test_add_is_idempotent_and_round_trips(store):
    record = Ranking(**{**GOOD, "ties": ((0, 1),), "shown_order": (2, 0, 1), "model": "sft"})
    assert store.add(record) is True
    assert store.add(record) is False
    assert store.add(Ranking(**{**GOOD, "ranking": (2, 1, 0), "model": "sft"})) is False  # same item
    assert store.add(record, key="my-key") is True  # an explicit key is another ranking
    stored = store.rankings()
    assert len(store) == 2 and [r.key for r in stored] == [record.key, "my-key"]
    assert stored[0].created_at  # stamped when stored
    assert {**stored[0].to_dict(), "created_at": ""} == record.to_dict()


def test_pending_resumes_after_reopening(tmp_path, world):
    items = template_items(world)[:5]
    with RankingStore(tmp_path / "r.sqlite") as store:
        store.add(Ranking(items[1].prompt, items[1].completions, (0, 1, 2, 3), model=items[1].model))
        store.skip(items[3])
    with RankingStore(tmp_path / "r.sqlite") as store:  # a restarted kernel
        assert store.pending(items) == [items[0], items[2], items[4]]
        assert store.pending(items, include_skipped=True) == [items[0], items[2], items[3], items[4]]
        assert store.pending(items, labeler="someone else") == items
        assert tuple(store.progress(items)) == (1, 1, 5)
        assert store.clear_skips() == 1
        assert store.pending(items) == [items[0], items[2], items[3], items[4]]


def test_jsonl_export_and_import_round_trip(tmp_path, store, world):
    SimulatedLabeler(world).label(store, template_items(world)[:10])
    assert store.export_jsonl(tmp_path / "out" / "rankings.jsonl") == 10
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["rankings.jsonl"]  # no temp file left
    with RankingStore(tmp_path / "copy.sqlite") as copy:
        assert copy.import_jsonl(tmp_path / "out" / "rankings.jsonl") == 10
        assert copy.import_jsonl(tmp_path / "out" / "rankings.jsonl") == 0  # idempotent
        assert snapshot(copy) == snapshot(store)


def file_hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_sql(path, *statements):
    """Change a database file behind the store's back, as another program (or a person) might."""
    con = sqlite3.connect(path)
    for statement in statements:
        con.execute(statement)
    con.commit()
    con.close()


def test_foreign_sqlite_database_is_refused_unchanged(tmp_path):
    path = tmp_path / "other.sqlite"
    run_sql(path, "CREATE TABLE notes (text TEXT)", "INSERT INTO notes VALUES ('keep me')")
    before = file_hash(path)
    with pytest.raises(DamagedStore) as info:
        RankingStore(path)
    assert info.value.field == "meta" and str(path) in str(info.value)
    assert file_hash(path) == before
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_file_that_is_not_a_database_is_refused_unchanged(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("These are my notes, not a database.\n" * 100)
    before = file_hash(path)
    with pytest.raises(DamagedStore) as info:
        RankingStore(path)
    assert info.value.field == "file"
    assert file_hash(path) == before


def test_store_of_another_schema_version_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    with RankingStore(path) as store:
        store.add(Ranking(**GOOD))
    run_sql(path, "UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(SchemaVersionError) as info:
        RankingStore(path)
    assert info.value.field == "schema_version" and "99" in str(info.value)


def test_damaged_row_names_record_and_field_and_loses_nothing(tmp_path):
    path = tmp_path / "r.sqlite"
    with RankingStore(path) as store:
        store.add(Ranking(**GOOD))
        store.add(Ranking(**{**GOOD, "prompt": "Where does Bruno live?"}))
    run_sql(path, "UPDATE rankings SET ranking = '[0, 1' WHERE id = 2")
    with RankingStore(path) as store:
        for read in (store.rankings, store.check_integrity):
            with pytest.raises(DamagedRecord) as info:
                read()
            assert info.value.field == "ranking"
            assert str(info.value).startswith("Ranking 2 of r.sqlite, field 'ranking'")
        assert len(store) == 2  # still there, to be repaired


def test_check_integrity_counts_records(store, world):
    SimulatedLabeler(world).label(store, template_items(world)[:3])
    store.skip(template_items(world)[3])
    assert store.check_integrity() == {"rankings": 3, "comparisons": 0, "skips": 1}


# ----------------------------------------------------------------------------------------------
# 3. Rankings to pairs
# ----------------------------------------------------------------------------------------------


def brute_force_pairs(ranking, ties):
    """Every unordered pair, judged from scratch: tied when a chain of ties joins them, else the
    one earlier in the ranking is chosen."""
    linked = {i: {i} for i in ranking}
    changed = True
    while changed:  # transitive closure of the tie relation
        changed = False
        for a, b in ties:
            union = linked[a] | linked[b]
            for c in union:
                if linked[c] != union:
                    linked[c], changed = set(union), True
    pairs, n_ties = set(), 0
    for i, j in combinations(sorted(ranking), 2):
        if j in linked[i]:
            n_ties += 1
        else:
            pairs.add((i, j) if ranking.index(i) < ranking.index(j) else (j, i))
    return pairs, n_ties


def random_ranking(rng: random.Random) -> Ranking:
    k = rng.randint(2, K_MAX)
    ranking = list(range(k))
    rng.shuffle(ranking)
    ties = [(ranking[p], ranking[p + 1]) for p in range(k - 1) if rng.random() < 0.3]
    return Ranking("p", tuple(f"completion {i}" for i in range(k)), tuple(ranking), tuple(ties))


def test_pair_expansion_matches_brute_force():
    rng = random.Random(0)
    for _ in range(500):
        record = random_ranking(rng)
        pairs, ties = ranking_pairs(record)
        expected_pairs, expected_ties = brute_force_pairs(list(record.ranking), record.ties)
        assert set(pairs) == expected_pairs and len(pairs) == len(expected_pairs)
        assert ties == expected_ties
        assert len(pairs) + ties == math.comb(len(record.completions), 2)


def test_pairs_by_hand():
    record = Ranking("p", ("w", "x", "y", "z"), ranking=(2, 0, 3, 1), ties=((0, 3),))
    assert ranking_pairs(record) == ([(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)], 1)


def test_pairs_dataset_columns_groups_and_weights(store):
    store.add(Ranking("Where does Alice live?", ("a", "b", "c", "d"), (3, 2, 1, 0), ties=((2, 1),)))
    store.add(Ranking("Where does Bruno live?", ("e", "f"), (0, 1)))
    data = store.to_pairs()
    assert data.column_names == ["prompt", "chosen", "rejected", "group_id", "weight"]
    assert data["group_id"] == [0] * 5 + [1]
    assert data["weight"] == [1 / 6] * 5 + [1.0]
    assert data[0] == {"prompt": "Where does Alice live?", "chosen": "d", "rejected": "c",
                       "group_id": 0, "weight": 1 / 6}
    assert ("b", "c") not in zip(data["chosen"], data["rejected"])  # the tie is dropped...
    assert tuple(store.pair_stats().__dict__.values()) == (2, 6, 1)  # ...and counted


def test_pairs_dataset_of_an_empty_store_has_the_columns(store):
    data = store.to_pairs()
    assert len(data) == 0 and data.column_names == ["prompt", "chosen", "rejected", "group_id", "weight"]


# ----------------------------------------------------------------------------------------------
# 4. The simulated labeler
# ----------------------------------------------------------------------------------------------


def test_rubric_ranking_without_noise(world):
    labeler = SimulatedLabeler(world, noise=0.0)
    question = world.question_about("Alice", "town")
    wrong = "Alice lives in Oakridge." if question.answer != "Oakridge" else "Alice lives in Foxhill."
    completions = ("Nobody cares, loser.", question.reference, wrong, "I don't know.",
                   "Sure! " + question.reference)
    ranking, ties = labeler.ideal_ranking(question.text, completions)
    assert ranking == (1, 4, 3, 2, 0) and ties == ((1, 4),)  # equal scores are tied
    assert labeler.rank(question.text, completions) == (ranking, ties)
    chat = f"User: {question.text}\nAssistant:"  # the question is found inside a chat prompt
    assert labeler.ideal_ranking(chat, completions) == (ranking, ties)
    with pytest.raises(ValueError, match="rank it yourself"):
        labeler.scores("What is the capital of France?", completions)


def test_noisy_ranking_is_seeded_per_item(world):
    items = template_items(world)[:20]
    one, same, other = (SimulatedLabeler(world, seed=s) for s in (1, 1, 2))
    rank = lambda lab, it: lab.rank(it.prompt, it.completions, it.key("x"))  # noqa: E731
    assert [rank(one, i) for i in items] == [rank(same, i) for i in reversed(items)][::-1]
    assert [rank(one, i) for i in items] != [rank(other, i) for i in items]


def test_gumbel_noise_follows_bradley_terry(world):
    """P(better beats worse) = σ(gap / noise): the model the reward model will assume."""
    labeler = SimulatedLabeler(world, noise=1.5, seed=3)
    question = world.question_about("Alice", "town")
    completions = (question.reference, "I don't know.")  # gap 2.5
    wins = sum(labeler.rank(question.text, completions, key=str(i))[0][0] == 0 for i in range(4000))
    assert wins / 4000 == pytest.approx(1 / (1 + math.exp(-2.5 / 1.5)), abs=0.02)
    assert pair_agreement_probability(0.0, 1.0) == 0.5
    assert pair_agreement_probability(2.5, 0.0) == 1.0


def test_default_noise_is_calibrated_to_human_agreement(world):
    assert calibrate_noise(world, calibration_sets(world)) == pytest.approx(DEFAULT_NOISE, abs=0.01)
    # Measured, not computed: two simulated labelers on completion sets not used to calibrate.
    sets = template_items(world, "feedback", sets_per_question=20, seed=100)  # 5,760 pairs
    first, second = SimulatedLabeler(world, seed=1), SimulatedLabeler(world, seed=2)
    rank = lambda lab, it: lab.rank(it.prompt, it.completions, it.key("x"))  # noqa: E731
    measured = agreement([rank(first, i) for i in sets], [rank(second, i) for i in sets])
    assert measured == pytest.approx(TARGET_AGREEMENT, abs=0.02)
    assert expected_agreement(score_gaps(world, sets), DEFAULT_NOISE) == pytest.approx(0.73, abs=0.01)
    assert expected_agreement(score_gaps(world, sets), 0.0) > 0.85  # the noise-free ceiling


def test_simulated_labeler_ranks_through_the_store(store, world):
    items = template_items(world)[:6]
    labeler = SimulatedLabeler(world, seed=4)
    assert labeler.label(store, items) == 6
    assert labeler.label(store, items) == 0  # resumes: nothing pending
    stored = store.rankings()
    assert {(r.labeler, r.labeler_kind) for r in stored} == {("simulated-4", "simulated")}
    assert [r.ranking for r in stored] == [labeler.rank(i.prompt, i.completions, i.key("simulated-4"))[0]
                                           for i in items]


def test_simulated_comparisons_and_win_rates(store, world):
    items = [(i.prompt, i.completions[:2], ("base", "sft")) for i in template_items(world)[:8]]
    assert SimulatedLabeler(world).label_comparisons(store, items) == 8
    verdicts = [c.winner for c in store.comparisons()]  # every pair is (base, sft)
    base, sft = win_rate(verdicts, "base", side=0), win_rate(verdicts, "sft", side=1)
    assert base.wins == sft.losses and base.n == sft.n == 8
    assert base.rate + sft.rate == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# 5. The shipped example rankings
# ----------------------------------------------------------------------------------------------


def test_example_file_is_reproducible(tmp_path):
    from rlhf_kit.feedback import write_jsonl

    write_jsonl(make_example_rankings(), tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == EXAMPLE_RANKINGS.read_bytes()
    examples = load_example_rankings()
    assert len(examples) == 96 and {len(r.completions) for r in examples} == {4}
    rows, stats = expand_pairs(examples)
    assert stats.pairs == 96 * 6 and len(rows) == stats.pairs


def test_example_file_imports_into_a_store(store):
    assert store.import_jsonl(EXAMPLE_RANKINGS) == 96
    assert store.check_integrity()["rankings"] == 96


# ----------------------------------------------------------------------------------------------
# 6. The widgets, driven without a browser
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def items(world):
    return template_items(world)[:3]


def click_all(widget):
    for index in widget.order:
        assert widget.pick(index)


def test_ranking_widget_clicks_ties_undo_reset_and_submit(store, items):
    widget = RankingWidget(store, items)
    assert repr(widget) == "RankingWidget(prompts=3, labeler='you')"
    first = widget.current
    a, b, c, d = widget.order
    assert widget.pick(a) and widget.pick(b, tie=True)
    assert not widget.pick(a) and "already ranked #1" in widget.message
    assert widget.pick(c)
    widget.undo()
    assert widget.picks == [a, b]
    widget.reset()
    assert widget.picks == [] and widget.ties == []
    assert widget.pick(d) and widget.pick(c) and widget.pick(b, tie=True) and widget.pick(a)
    assert [row.children[0].description for row in widget._rows.children] == ["#3", "#2=", "#2", "#1"]
    assert widget.submit() and widget.message == "Saved."
    [record] = store.rankings()
    assert record.prompt == first.prompt and record.ranking == (d, c, b, a)
    assert record.ties == (tuple(sorted((b, c))),) and record.shown_order == (a, b, c, d)
    assert widget.current == items[1] and "Ranked 1 of 3 prompts" in widget._progress.value


BAD_SUBMISSIONS = [  # (ranking, ties, error type) given to submit_ranking for a K=4 item
    ((0, 1, 2), (), InvalidRanking),
    ((0, 1, 2, 2), (), InvalidRanking),
    ((0, 1, 2, 4), (), InvalidRanking),
    ((0, 1, 2, 3), ((0, 2),), InvalidTies),
    ((0, 1, 2, 3), ((0, 7),), InvalidTies),
]


@pytest.mark.parametrize("ranking, ties, error", BAD_SUBMISSIONS)
def test_invalid_submission_shows_its_error_and_stores_nothing(store, items, ranking, ties, error):
    widget = RankingWidget(store, items)
    with pytest.raises(error) as expected:
        Ranking(items[0].prompt, items[0].completions, ranking, ties)
    assert widget.submit_ranking(ranking, ties) is False
    assert widget.message == expected.value.sentence
    assert expected.value.sentence in widget._message.value
    assert len(store) == 0 and widget.current == items[0]


def test_incomplete_clicks_explain_what_to_do(store, items):
    widget = RankingWidget(store, items)
    widget.pick(widget.order[0])
    widget._submit.click()  # through the button's callback, as a click would
    assert widget.message == ("3 of 4 completions are not ranked yet; click every completion "
                              "from best to worst, then submit.")
    assert len(store) == 0


def test_callback_errors_are_shown_in_the_widget(store, items):
    widget = RankingWidget(store, items)
    click_all(widget)
    store.close()  # the database goes away under the widget
    widget._submit.click()
    assert widget.message.startswith("Could not save") and widget.current == items[0]


def test_rerun_and_second_notebook_resume_without_duplicates(tmp_path, items):
    path = tmp_path / "r.sqlite"
    store = RankingStore(path)
    widget = RankingWidget(store, items)
    click_all(widget)
    assert widget.submit()
    widget.skip()
    rerun = RankingWidget(RankingStore(path), items)  # the cell run again, or a new kernel
    other = RankingWidget(RankingStore(path), items)  # a second notebook on the same store
    assert rerun.current == other.current == items[2]
    click_all(rerun)
    click_all(other)
    assert rerun.submit() and other.submit()
    assert other.message == "Already ranked (in another notebook?); moving on."
    assert len(RankingStore(path)) == 2 and other.current is None
    assert "All 3 prompts are done" in other._prompt.value and other._submit.disabled


def test_a_rerun_loses_nothing_and_done_fills_in_only_what_was_left(tmp_path, world):
    """The lesson's cells run again: rank 2 of 8, rebuild the widget on the same store (a rerun),
    then say "done" twice."""
    eight = template_items(world)[:8]
    path = tmp_path / "lesson-4.sqlite"
    stand_in = SimulatedLabeler(world)
    widget = RankingWidget(RankingStore(path), eight, fill_in=stand_in)
    assert widget.message == "" and "Done" in widget._done.description
    assert widget.children[-2].children[-1] is widget._done  # the button is shown
    assert "then press Done" in widget.children[2].value  # the widget says what to do
    click_all(widget)
    assert widget.submit()
    assert widget.submit_ranking(tuple(reversed(range(len(widget.current.completions)))))
    mine = [r.to_dict() for r in RankingStore(path).rankings("you")]
    assert len(mine) == 2

    rerun = RankingWidget(RankingStore(path), eight, fill_in=stand_in)  # the cell run again
    assert rerun.current == eight[2] and rerun.picks == []
    assert "2 of 8 ranked" in rerun.message and "Ranked 2 of 8 prompts" in rerun._progress.value

    store = RankingStore(path)
    rankings = rerun.fill_in_the_rest()
    simulated = store.rankings(stand_in.name)
    assert len(simulated) == 6 and {r.labeler_kind for r in simulated} == {"simulated"}
    assert {r.prompt for r in simulated} == {i.prompt for i in eight[2:]}
    assert [r.to_dict() for r in store.rankings("you")] == mine  # the learner's two, unchanged
    assert [r.labeler for r in rankings] == ["you"] * 2 + [stand_in.name] * 6
    assert [r.prompt for r in rankings] == [i.prompt for i in eight]
    assert "you ranked 2 of 8" in rerun.message and "6 filled in" in rerun._progress.value
    assert rerun.fill_in_the_rest() == rankings and len(store) == 8  # a second "done" adds nothing

    # Ranking more after "done" replaces the simulated ranking in what the next cell uses.
    assert rerun.current == eight[2]
    click_all(rerun)
    assert rerun.submit()
    after = rerun.fill_in_the_rest()
    assert [r.labeler for r in after] == ["you"] * 3 + [stand_in.name] * 5 and len(store) == 9


def test_done_fills_in_skipped_prompts_and_needs_a_labeler(tmp_path, world, items):
    store = RankingStore(tmp_path / "s.sqlite")
    widget = RankingWidget(store, items, fill_in=SimulatedLabeler(world))
    assert widget.skip()
    assert "0 of 3 ranked, 1 skipped" in RankingWidget(store, items).message
    assert [r.labeler for r in widget.fill_in_the_rest()] == ["simulated-0"] * 3
    plain = RankingWidget(store, items)
    assert not any(b is plain._done for b in plain.children[-2].children)  # no fill-in, no button
    with pytest.raises(ValueError, match="no simulated labeler"):
        plain.fill_in_the_rest()
    with pytest.raises(TypeError, match="SimulatedLabeler"):
        RankingWidget(store, items, fill_in="simulated")


def test_a_reused_store_refuses_a_labeler_whose_noise_changed(store, world):
    items = template_items(world)[:6]
    assert SimulatedLabeler(world, noise=1.0).label(store, items) == 6
    changed = SimulatedLabeler(world, noise=3.0)  # same name, "simulated-0", another noise
    assert len(changed.stale(store, items)) > 0
    with pytest.raises(InvalidField, match="would not draw now") as raised:
        changed.label(store, items + template_items(world)[6:8])
    assert raised.value.field == "labeler" and len(store) == 6  # nothing was stored
    assert SimulatedLabeler(world, noise=3.0, name="simulated-0b").label(store, items) == 6
    assert SimulatedLabeler(world, noise=1.0).stale(store, items) == []  # the same noise: its own
    rubric = SimulatedLabeler(world, noise=0.0, name="rubric")  # ties, stored normalised
    assert rubric.label(store, items) == 6 and rubric.stale(store, items) == []


def test_bad_items_raise_in_the_cell(store):
    with pytest.raises(InvalidCompletions, match="identical"):
        RankingWidget(store, [("Where does Alice live?", ("same", "same"), "sft")])


def test_comparison_widget_is_blind_and_durable(store, items):
    pairs = [(i.prompt, i.completions[:2], ("base", "sft")) for i in items]
    widget = ComparisonWidget(store, pairs)
    assert repr(widget) == "ComparisonWidget(prompts=3, labeler='you')"
    assert "base" not in widget._texts[0].value + widget._texts[1].value
    shown_as_a = widget.order[0]
    assert widget.choose("A") and widget.choose("tie")
    assert not widget.choose("C") and "choose 'A', 'B' or 'tie'" in widget.message
    first, second = store.comparisons()
    assert first.winner == shown_as_a and second.winner is None
    assert ComparisonWidget(store, pairs).current.prompt == items[2].prompt  # resumes
    assert isinstance(first, Comparison) and first.shown_order[0] == shown_as_a


def test_comparison_widget_counts_pairs_of_one_prompt_and_prompts_of_their_own(store, items):
    replies = ("Sure! Alice lives in Foxhill.", "Fine. Alice lives in Foxhill.", "Fine. Alice is an idiot.")
    pairs = [("Where does Alice live?", (replies[i], replies[j]), ("a", "b")) for i, j in ((0, 1), (0, 2), (1, 2))]
    widget = ComparisonWidget(store, pairs)
    assert repr(widget) == "ComparisonWidget(pairs=3, labeler='you')"
    assert "Compared 0 of 3 pairs" in widget._progress.value and widget._skip.description == "Skip pair"
    own = ComparisonWidget(store, [(i.prompt, i.completions[:2], ("base", "sft")) for i in items])
    assert "Compared 0 of 3 prompts" in own._progress.value and own._skip.description == "Skip prompt"
    assert widget.choose("A") and widget.skip() and widget.choose("B")
    assert "All 3 pairs are done" in widget._prompt.value
    assert not widget.choose("A") and "Every one of the pairs is done" in widget.message


def test_a_new_comparison_widget_on_the_same_store_resumes(tmp_path):
    path = tmp_path / "lesson-2.sqlite"
    replies = [f"Sure! Alice lives in {town}." for town in ("Foxhill", "Brookfield", "Ashford", "Dunmore")]
    pairs = [("Where does Alice live?", (replies[i], replies[j]), ("a", "b"))
             for i in range(4) for j in range(i + 1, 4)]  # 6 pairs of one prompt
    with RankingStore(path) as first_store:
        first = ComparisonWidget(first_store, pairs)
        assert first.choose("A") and first.choose("tie")
        stopped_at = first.current
    with RankingStore(path) as again:  # the notebook rerun: a new store object on the same file
        rerun = ComparisonWidget(again, pairs)
        assert rerun.current == stopped_at == rerun.items[2]
        assert "Compared 2 of 6 pairs" in rerun._progress.value and rerun._bar.value == 2
        assert len(again.comparisons(labeler="you")) == 2


def test_errors_are_ranking_errors():
    for error in (InvalidCompletions, InvalidRanking, InvalidTies, InvalidField, SchemaVersionError,
                  DamagedRecord, DamagedStore):
        assert issubclass(error, RankingError) and issubclass(error, ValueError)


# ----------------------------------------------------------------------------------------------
# Stores that cannot be written, copied while open, and texts that are not valid
# ----------------------------------------------------------------------------------------------

# Root ignores file permissions, so the permission cases run in a child process without the
# capability that lets it (setpriv, from util-linux); another user runs them as they are.
WITHOUT_OVERRIDE = (["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                     "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else [])


def run_without_write_permission(code: str) -> str:
    """Run ``code`` in a child Python that file permissions apply to; returns what it printed."""
    import subprocess
    import sys

    if WITHOUT_OVERRIDE and not shutil.which("setpriv"):
        pytest.fail("These tests need setpriv (Debian's util-linux) when run as root.")
    run = subprocess.run([*WITHOUT_OVERRIDE, sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def saved_store(path, n=3):
    with RankingStore(path) as store:
        for i in range(n):
            store.add(Ranking(**{**GOOD, "prompt": f"Where does person {i} live?"}))


def test_a_folder_is_not_a_store(tmp_path):
    with pytest.raises(StoreUnavailable) as info:
        RankingStore(tmp_path)
    assert str(info.value) == (f"{tmp_path}, field 'path': the path is a folder, not a file; give a "
                               f"file path such as {tmp_path / 'rankings.sqlite'}.")


def test_a_store_without_its_rankings_table_is_named_and_left_unchanged(tmp_path):
    path = tmp_path / "r.sqlite"
    saved_store(path)
    run_sql(path, "DROP TABLE rankings")
    before = file_hash(path)
    with pytest.raises(DamagedStore) as info:
        RankingStore(path)
    assert info.value.field == "rankings table" and str(path) in str(info.value)
    assert "import your JSONL export" in str(info.value) and file_hash(path) == before


@pytest.mark.parametrize("folder_mode, file_mode", [(0o555, 0o666), (0o777, 0o444)],
                         ids=["read-only folder", "read-only file"])
def test_a_read_only_store_is_read_and_refuses_writes_in_one_sentence(tmp_path, folder_mode,
                                                                       file_mode):
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "rankings.sqlite"
    saved_store(path)
    before = file_hash(path)
    path.chmod(file_mode)
    folder.chmod(folder_mode)
    tmp_path.chmod(0o755)
    try:
        out = run_without_write_permission(f"""
from rlhf_kit.feedback import Ranking, RankingStore, StoreUnavailable
store = RankingStore({str(path)!r})
print(store.read_only, len(store.rankings()), store.check_integrity()["rankings"])
try:
    store.add(Ranking(prompt="Where does Bruno live?", completions=("a", "b"), ranking=(0, 1)))
except StoreUnavailable as error:
    print(error)
""")
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert out.splitlines() == [
        "True 3 3",
        f"{path}, field 'file': the store is read-only, so it can be read but nothing can be "
        "stored in it; copy it to a folder you can write to and open the copy (nothing was stored)."]
    assert file_hash(path) == before


def test_a_new_store_in_a_read_only_folder_is_refused_in_one_sentence(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    tmp_path.chmod(0o755)
    try:
        out = run_without_write_permission(f"""
from rlhf_kit.feedback import RankingStore, StoreUnavailable
try:
    RankingStore({str(folder / "rankings.sqlite")!r})
except StoreUnavailable as error:
    print(error)
""")
    finally:
        folder.chmod(0o755)
    assert out.strip() == (f"{folder / 'rankings.sqlite'}, field 'path': the store cannot be "
                           f"created because {folder} is read-only; choose a folder you can write "
                           "to (or set RLHF_KIT_HOME to one).")
    assert list(folder.iterdir()) == []


def test_the_widget_says_a_read_only_store_cannot_be_saved_to(tmp_path, items, monkeypatch):
    path = tmp_path / "r.sqlite"
    saved_store(path, n=1)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: mode != os.W_OK and real_access(p, mode))
    widget = RankingWidget(RankingStore(path), items)
    click_all(widget)
    assert not widget.submit()
    assert widget.message.startswith("The store is read-only, so it can be read but nothing")
    assert widget.current == items[0] and len(RankingStore(path)) == 1


def test_a_copy_of_the_file_taken_while_the_store_is_open_holds_every_ranking(tmp_path):
    path = tmp_path / "r.sqlite"
    store = RankingStore(path)
    reader = RankingStore(path)  # a second notebook with the same store open
    for i in range(50):
        store.add(Ranking(**{**GOOD, "prompt": f"Where does person {i} live?"}))
    assert len(reader) == 50
    shutil.copy(path, tmp_path / "copy.sqlite")  # the .sqlite file alone, not its -wal
    assert len(RankingStore(tmp_path / "copy.sqlite")) == 50
    store.close()
    reader.close()


@pytest.mark.parametrize("change, error, field", [
    ({"completions": ("Alice lives in Foxhill.\ud800", "I don't know.")}, InvalidCompletions, "completions"),
    ({"prompt": "Where does \udfff Alice live?"}, InvalidField, "prompt"),
])
def test_a_lone_surrogate_is_refused_where_it_enters(store, change, error, field):
    with pytest.raises(error) as info:
        Ranking(**{**GOOD, "ranking": (0, 1), **change})
    assert info.value.field == field and "half of a surrogate pair" in str(info.value)
    with pytest.raises(InvalidCompletions, match="half of a surrogate pair"):
        Comparison("Where does Alice live?", ("Foxhill\ud800", "I don't know."), ("a", "b"), 0)
    assert len(store) == 0


def test_a_lone_surrogate_in_a_jsonl_line_names_the_line_and_stores_nothing(tmp_path, store):
    good = Ranking(**GOOD).to_dict()
    bad = {**good, "key": "", "completions": ["Alice lives in Foxhill.\ud800", *COMPLETIONS[1:]]}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")  # json escapes it as \ud800
    with pytest.raises(InvalidCompletions) as info:
        store.import_jsonl(path)
    assert str(info.value).startswith("Line 2 of r.jsonl, field 'completions': completion 0 holds")
    assert len(store) == 0


def test_a_hand_edited_line_whose_key_no_longer_matches_is_refused(tmp_path, store):
    first = Ranking(**GOOD).to_dict()
    edited = {**first, "prompt": "Where does Bruno live?"}  # copied, edited, the old key kept
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(first) + "\n" + json.dumps(edited) + "\n")
    with pytest.raises(DamagedRecord) as info:
        store.import_jsonl(path)
    assert str(info.value).startswith("Line 2 of r.jsonl, field 'key': does not match")
    assert len(store) == 0
    path.write_text(json.dumps(first) + "\n" + json.dumps({**edited, "key": ""}) + "\n")
    assert store.import_jsonl(path) == 2  # with the key deleted, it is derived again


def test_each_lesson_has_its_own_store_in_the_artifacts_home(tmp_path, monkeypatch):
    from rlhf_kit.feedback import default_store_path

    monkeypatch.setenv("RLHF_KIT_HOME", str(tmp_path))
    assert default_store_path() == tmp_path / "feedback" / "lesson-4.sqlite"
    assert default_store_path(2) == tmp_path / "feedback" / "lesson-2.sqlite"
    for wrong in (8, -1, "4", True):
        with pytest.raises(ValueError, match="lesson number from 0 to 7"):
            default_store_path(wrong)
