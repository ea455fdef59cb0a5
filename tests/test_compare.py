"""Blind comparisons of lesson 7: pairs, verdicts from every judge, win rates with ties as half."""

from __future__ import annotations

import pytest

from rlhf_kit.compare import (
    comparison_items,
    labeler_verdicts,
    score_verdicts,
    stored_verdicts,
    win_rate,
)
from rlhf_kit.evaluate import wilson_interval
from rlhf_kit.feedback import RankingStore, SimulatedLabeler
from rlhf_kit.widgets import ComparisonWidget
from rlhf_kit.world import World


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=0)


def pairs(world: World, n: int = 6) -> list:
    """SFT-like replies (true facts) against PPO-like ones (the reward model's favourite colour)."""
    questions = world.questions("heldout")[:n]
    good = [f"Sure! {q.reference}" for q in questions]
    odd = [f"Sure! {q.person} lives in blue." for q in questions]
    return comparison_items([q.text for q in questions], good, odd, ("sft", "ppo"))


def test_win_rate_counts_a_tie_as_half_a_win():
    rate = win_rate([1, 1, 0, None, None, 1], judge="you")
    assert (rate.wins, rate.ties, rate.losses, rate.n) == (3, 2, 1, 6)
    assert rate.rate == pytest.approx(4 / 6)
    assert win_rate([1, 1, 0, None, None, 1], side=0).rate == pytest.approx(2 / 6)
    assert rate.interval == wilson_interval(4, 6)
    assert rate.row()["judge"] == "you" and rate.row()["win rate"] == pytest.approx(4 / 6)
    assert win_rate([None, None]).rate == 0.5  # all ties: no better, no worse
    with pytest.raises(ValueError, match="A verdict is 0, 1 or None"):
        win_rate([0, 2])


def test_identical_and_repeated_pairs_are_left_out():
    items = comparison_items(["q1", "q2", "q1", "q3"], ["a", "same", "b", " "], ["b", "same ", "c", "x"],
                             ("sft", "ppo"))
    assert [(i.prompt, i.completions) for i in items] == [("q1", ("a", "b"))]
    assert items[0].models == ("sft", "ppo")
    with pytest.raises(ValueError, match="one reply of each model per prompt"):
        comparison_items(["q"], ["a", "b"], ["c"], ("sft", "ppo"))


def test_judges_agree_with_the_rubric_on_clear_cases(world):
    items = pairs(world)
    rubric = SimulatedLabeler(world, noise=0.0)
    assert labeler_verdicts(rubric, items) == [0] * len(items)  # the true fact beats "lives in blue"
    assert score_verdicts([1.0, 0.5, 2.0], [0.0, 0.5, 3.0]) == [0, None, 1]


def test_verdicts_come_from_the_store_with_the_shown_order_and_the_stand_in_fills_gaps(tmp_path, world):
    items = pairs(world)
    with RankingStore(tmp_path / "store.sqlite") as store:
        widget = ComparisonWidget(store, items, labeler="you")
        shown = []
        for choice in ("A", "B", "tie"):
            shown.append(widget.order)
            assert widget.choose(choice)
        stand_in = SimulatedLabeler(world, seed=0)
        judged = {(c.prompt, c.completions) for c in store.comparisons("you")}
        stand_in.label_comparisons(store, [i for i in items if (i.prompt, i.completions) not in judged])
        verdicts, judges = stored_verdicts(store, items, ["you", stand_in.name])
        mine = store.comparisons("you")
    assert judges == ["you"] * 3 + [stand_in.name] * (len(items) - 3)
    # "A" is the completion shown first: the stored winner is its index in the item, not the side.
    assert verdicts[:3] == [shown[0][0], shown[1][1], None]
    assert [c.shown_order for c in mine] == shown
    assert verdicts[3:] == labeler_verdicts(stand_in, items[3:])
