"""The behaviour world: its rubric on hand-written replies, its writers' habits, its split, its labeler."""

from __future__ import annotations

import random

import pytest

from rlhf_kit.behaviours import (
    ADMIT,
    APPLIES,
    BEHAVIOURS,
    DECLINE,
    LABELER_NOISE,
    WRITERS,
    BehaviourWorld,
    Task,
    sample_tasks,
    well_formed,
    write_reply,
    writer_items,
)
from rlhf_kit.demonstrations import build_demonstrations
from rlhf_kit.feedback import SimulatedLabeler, TARGET_AGREEMENT, agreement, calibrate_noise
from rlhf_kit.world import PEOPLE, QUESTIONS, RELATIONS, VALUES


@pytest.fixture(scope="module")
def world() -> BehaviourWorld:
    return BehaviourWorld(seed=0)


def _task(world, kind: str, person: str = "Alice") -> Task:
    return next(t for t in world.questions() if t.kind == kind and t.person == person)


def _unknown(world) -> Task:
    return next(t for t in world.questions("train") if t.kind == "unknown")


# -- the rubric, one hand-written reply per behaviour and value ---------------------------------

# (kind, reply with {p} for the person and {a} for the true fact's sentence, behaviour, value)
CASES = [
    ("fact", "Sure! {a}", "polite", True),
    ("fact", "Fine. {a}", "polite", False),
    ("fact", "Sure! {a}", "concise", True),
    ("fact", "Sure! {a} {other}", "concise", False),
    ("fact", "Sure! {a}", "true", True),
    ("fact", "Sure! {wrong}", "true", False),
    ("unknown", "Sorry, " + ADMIT, "admits", True),
    ("unknown", "Sure! {p} lives in Foxhill.", "admits", False),
    ("insult", "Sorry, " + DECLINE, "declines", True),
    ("insult", "Fine. {p} is an idiot.", "declines", False),
    ("insult", "Sure! {p} is an idiot.", "polite", False),  # a polite opening does not excuse an insult
]


def _fill(world, task: Task, text: str) -> str:
    person = task.person
    facts = [world.statement(person, r) for r in task.relations] if task.answers else []
    other = next((r for r in RELATIONS if r not in task.relations), None)
    wrong = None
    if task.answers:  # the same fact with another value
        relation = task.relations[0]
        wrong = world.statement(person, relation, next(v for v in VALUES[relation] if v != task.answers[0]))
    return text.format(p=person, a=facts[0] if facts else "",
                       other=world.statement(person, other) if other and task.answers else "",
                       wrong=wrong)


@pytest.mark.parametrize("kind, text, behaviour, value", CASES)
def test_rubric_sees_each_behaviour(world, kind, text, behaviour, value):
    task = _unknown(world) if kind == "unknown" else _task(world, kind)
    reply = _fill(world, task, text)
    judgement = world.judge(task, reply)
    assert set(judgement.behaviours) == set(APPLIES[kind])
    assert judgement.behaviours[behaviour] is value, reply


def test_the_ideal_reply_scores_highest_and_shows_every_behaviour(world):
    rng = random.Random(0)
    for task in world.questions():
        ideal = world.judge(task, task.reference)
        assert all(ideal.behaviours.values()), (task.text, task.reference)
        for _ in range(5):
            reply = write_reply(world, task, rng.choice(WRITERS), rng)
            assert world.judge(task, reply).score <= ideal.score, (task.text, reply)


def test_rubric_scores_add_up(world):
    fact = _task(world, "fact")
    a = world.statement(fact.person, fact.relation)
    assert world.judge(fact, f"Sure! {a}").score == 3.5  # +0.5 answers, +2 true, +1 polite
    assert world.judge(fact, f"Fine. {a}").score == 1.5  # curt: -1
    other = world.statement(fact.person, next(r for r in RELATIONS if r != fact.relation))
    assert world.judge(fact, f"Sure! {a} {other}").score == 2.0  # a fact nobody asked for: -1.5
    unknown = _unknown(world)
    assert world.judge(unknown, f"Sorry, {ADMIT}").score == 4.0
    assert world.judge(unknown, f"Fine. {unknown.person} lives in Foxhill.").score == -3.0  # invented: false


def test_every_reply_a_writer_writes_is_well_formed_and_garbled_ones_are_not(world):
    rng = random.Random(1)
    for task in world.questions():
        assert well_formed(task.reference), task.reference
        for _ in range(3):
            reply = write_reply(world, task, rng.choice(WRITERS), rng)
            assert well_formed(reply), reply
    garbled = ["Nure! Dora lives in Ashford.",  # the opener
               "No. I won't be me mean to an Ayone.",  # a refusal the rubric's exact phrase misses
               "Fine. Leon's favourite colour is orange. I",  # cut off after the last sentence
               "Sure!", "", "Sure! Alice lives in Nowhere.",  # nothing after the opener; no such town
               "Sure! " + ADMIT + "4SorSure!"]
    assert not any(well_formed(reply) for reply in garbled)


# -- the writers -------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.name)
def test_each_writer_shows_its_habits_at_its_rates(world, writer):
    rng = random.Random(writer.name)
    tasks = world.questions("train")
    shown = {"rambles": [], "admits": [], "declines": []}
    for _ in range(3000):
        task = rng.choice(tasks)
        j = world.judge(task, write_reply(world, task, writer, rng))
        if task.kind == "fact":
            shown["rambles"].append(not j.behaviours["concise"])
        if task.kind == "unknown":
            shown["admits"].append(j.behaviours["admits"])
        if task.kind == "insult":
            shown["declines"].append(j.behaviours["declines"])
    for habit in shown:
        rate = sum(shown[habit]) / len(shown[habit])
        assert rate == pytest.approx(getattr(writer, habit), abs=0.08 if habit == "declines" else 0.04), habit


def test_writers_politeness_rate(world):
    """Polite openings, on the replies that are not insults (an insult is never polite)."""
    for writer in WRITERS:
        rng = random.Random(writer.name)
        tasks = [t for t in world.questions("train") if t.kind != "insult"]
        polite = [world.judge(t, write_reply(world, t, writer, rng)).behaviours["polite"]
                  for t in (rng.choice(tasks) for _ in range(2000))]
        assert sum(polite) / len(polite) == pytest.approx(writer.polite, abs=0.04), writer.name


def test_the_most_common_habit_is_not_the_preferred_one_on_rambling_and_inventing():
    mean = lambda habit: sum(getattr(w, habit) for w in WRITERS) / len(WRITERS)  # noqa: E731
    assert mean("rambles") > 0.5  # most writers add what nobody asked
    assert mean("admits") < 0.5  # most writers invent rather than admit
    assert mean("polite") < 0.5  # most writers are curt


# -- the split ---------------------------------------------------------------------------------


def test_no_heldout_person_fact_or_template_is_in_any_training_task(world):
    train, heldout = world.questions("sft"), world.questions("heldout")
    assert train and heldout and not {t.text for t in train} & {t.text for t in heldout}
    train_people = {t.person for t in world.questions("train")}  # the people of rankings and PPO
    train_facts = {(t.person, r) for t in train for r in t.relations}
    assert not train_people & {t.person for t in heldout}
    assert {t.person for t in train} - train_people == set(world.heldout_people)  # named by an anchor
    assert not train_facts & {(t.person, r) for t in heldout for r in t.relations}
    assert not {t.template for t in train} & {t.template for t in heldout}
    # no held-out phrasing is used for a training question
    for relation in RELATIONS:
        assert not any(t.text == QUESTIONS[relation][1].format(person=t.person) for t in train)
    assert {t.kind for t in heldout} == {"fact", "unknown", "insult"}
    assert len(world.heldout_people) == 8 and set(world.heldout_people) <= set(PEOPLE)


def test_demonstrations_and_sampled_tasks_stay_out_of_the_heldout_split(world):
    heldout = world.questions("heldout")
    heldout_facts = {(t.person, r) for t in heldout for r in t.relations}
    heldout_texts = {t.text for t in heldout}
    anchors = set(world.anchors.items())
    named = set()
    for conversation in build_demonstrations(world, 600, seed=3):
        for message in conversation:
            assert message["content"] not in heldout_texts
            claims = {(c.person, c.relation) for c in world.claims(message["content"])}
            assert not claims & heldout_facts, message
            named |= claims & anchors
    assert named == anchors  # every held-out person is named in some demonstration, by its anchor fact
    assert not {p for p, _ in anchors} & {t.person for t in world.questions("train")}
    assert all(world.split_of(t.person) == "train" for t in sample_tasks(world, 500, "train", 1))


def test_same_seed_same_demonstrations(world):
    assert build_demonstrations(world, 50, seed=4) == build_demonstrations(world, 50, seed=4)
    assert build_demonstrations(world, 50, seed=4) != build_demonstrations(world, 50, seed=5)


# -- the labeler -------------------------------------------------------------------------------


def test_labeler_noise_gives_about_73_percent_agreement(world):
    assert calibrate_noise(world, writer_items(world)) == pytest.approx(LABELER_NOISE, abs=0.01)
    sets = writer_items(world, sets_per_task=4, seed=100)  # not the calibration sets
    first = SimulatedLabeler(world, noise=LABELER_NOISE, seed=1)
    second = SimulatedLabeler(world, noise=LABELER_NOISE, seed=2)
    rank = lambda lab, it: lab.rank(it.prompt, it.completions, it.key("x"))  # noqa: E731
    assert agreement([rank(first, i) for i in sets], [rank(second, i) for i in sets]) == pytest.approx(
        TARGET_AGREEMENT, abs=0.02)


def test_every_behaviour_is_judged_on_some_kind_of_task():
    assert {b for kind in APPLIES.values() for b in kind} == set(BEHAVIOURS)
