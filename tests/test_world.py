"""The toy world: deterministic, consistent, and its judge catches what it should."""

from __future__ import annotations

import pytest

from rlhf_kit.world import PEOPLE, RELATIONS, RUDE_REPLIES, SPLITS, VALUES, World


@pytest.fixture(scope="module")
def world():
    return World(seed=0)


def test_same_seed_same_world_and_corpus():
    a, b = World(seed=3), World(seed=3)
    assert a.facts == b.facts and a.splits == b.splits
    assert a.corpus(200) == b.corpus(200)
    assert World(seed=4).facts != a.facts


def test_every_person_has_every_fact_from_its_vocabulary(world):
    assert len(world.facts) == len(PEOPLE) * len(RELATIONS)
    for (person, relation), value in world.facts.items():
        assert value in VALUES[relation]


def test_splits_partition_the_questions(world):
    by_split = {s: {(q.person, q.relation) for q in world.questions(s)} for s in SPLITS}
    sizes = [len(v) for v in by_split.values()]
    assert sum(sizes) == len(world.facts)
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not by_split[a] & by_split[b], f"{a} and {b} share questions"
    assert len(by_split["heldout"]) == len(world.facts) // 4
    with pytest.raises(ValueError, match="Unknown split"):
        world.questions("test")


def test_heldout_questions_never_appear_answered_in_the_corpus(world):
    corpus = world.corpus(4000)
    heldout = world.questions("heldout")
    for doc in corpus:
        for q in heldout:
            if f"Q: {q.text}" in doc:
                pytest.fail(f"held-out question answered in a Q&A thread: {doc!r}")
            if doc.startswith(q.text + "\n"):
                reply = doc.split("\n", 1)[1]
                assert not any((c.person, c.relation) == (q.person, q.relation) for c in world.claims(reply)), doc
    # ...while their facts are stated, so a model can know them
    text = "\n".join(corpus)
    assert sum(q.reference in text for q in heldout) >= 0.9 * len(heldout)


def test_corpus_has_every_kind_of_document_and_the_three_faults(world):
    corpus = world.corpus(3000)
    n = len(corpus)
    assert 0.15 < sum(d.startswith("Q: ") for d in corpus) / n < 0.25
    rude = sum(any(r in d for r in RUDE_REPLIES) for d in corpus) / n
    assert 0.02 < rude < 0.15
    claims = [c for d in corpus for c in world.claims(d)]
    false_share = sum(not c.true for c in claims) / len(claims)
    assert 0.1 < false_share < 0.3, false_share  # rumours: a minority, but there
    question_then_question = sum(d.count("?\n") >= 1 and d.split("\n")[1].endswith("?") for d in corpus if "\n" in d)
    assert question_then_question / n > 0.1  # a question is often followed by another question


def test_claims_and_judge(world):
    q = world.question_about("Alice", "town")
    true = q.reference
    wrong_town = next(v for v in VALUES["town"] if v != q.answer)
    j = world.judge(q, true)
    assert (j.answers, j.correct, j.false, j.rude) == (True, True, False, False)
    j = world.judge(q, f"Alice lives in {wrong_town}.")
    assert (j.answers, j.correct, j.false) == (True, False, True)
    j = world.judge(q, "Where does Bruno live?")
    assert (j.answers, j.false, j.rude) == (False, False, False)
    j = world.judge(q, "Look it up yourself, idiot. " + true)
    assert j.rude and j.correct
    assert world.judge(q, true).score > world.judge(q, "I don't know.").score > world.judge(q, f"Alice lives in {wrong_town}.").score
    rambling = true + " " + " ".join(["and so on"] * 10)
    assert world.judge(q, rambling).score < world.judge(q, true).score  # brief is better


def test_question_about_unknown_fact_is_a_clear_error(world):
    with pytest.raises(KeyError, match="no fact"):
        world.question_about("Nobody", "town")
