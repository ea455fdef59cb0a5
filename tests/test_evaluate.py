"""The scoreboard: rates and intervals computed right, prompts formatted per model style."""

from __future__ import annotations

import pytest

from rlhf_kit.evaluate import CHAT, PLAIN, fault_rates, first_line, format_prompt, judge_replies, wilson_interval
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.world import World


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_judge_replies_counts_each_fault():
    world = World(seed=0)
    q = world.question_about("Alice", "town")
    wrong = "Alice lives in " + next(t for t in ("Brookfield", "Foxhill") if t != q.answer) + "."
    replies = [q.reference, wrong, "Nobody cares, loser.", "What pet does Alice have?"]
    report = judge_replies(world, [q] * 4, replies, name="hand")
    assert report.n == 4
    assert report.answer_rate == 0.5 and report.false_rate == 0.25 and report.rude_rate == 0.25
    assert report.row()["model"] == "hand"
    with pytest.raises(ValueError, match="one reply per question"):
        judge_replies(world, [q], [])


def test_prompts_and_replies(tiny_base_dir):
    tokenizer = load_tokenizer(tiny_base_dir)
    q = World(seed=0).question_about("Alice", "town")
    assert format_prompt(q, tokenizer, PLAIN) == "<|endoftext|>" + q.text + "\n"
    assert format_prompt(q, tokenizer, CHAT) == f"<|user|>{q.text}<|end|><|assistant|>"
    with pytest.raises(ValueError, match="style must be"):
        format_prompt(q, tokenizer, "shouting")
    assert first_line("\nAlice lives in Foxhill.\nQ: more") == "Alice lives in Foxhill."


def test_fault_rates_on_a_model_are_reproducible(tiny_base_dir):
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    world = World(seed=0)
    questions = world.questions("heldout")[:8]
    a = fault_rates(model, tokenizer, world, questions, samples_per_question=2, seed=3)
    b = fault_rates(model, tokenizer, world, questions, samples_per_question=2, seed=3)
    assert a.n == 16 and [s[1] for s in a.samples] == [s[1] for s in b.samples]
    assert a.row() == b.row()
