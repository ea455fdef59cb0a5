"""The scoreboard: rates and intervals computed right, prompts formatted per model style."""

from __future__ import annotations

import statistics

import pytest
import torch

from rlhf_kit.evaluate import (
    CHAT,
    PLAIN,
    evaluate_chat,
    fault_rates,
    first_line,
    format_prompt,
    judge_replies,
    kept_chat_format,
    reply_kl,
    rubric_preference,
    wilson_interval,
)
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.sampling import Generation, generate
from rlhf_kit.tokenizer import USER, chat_prompt, end_of_turn_id
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
    scores = [j.score for _, _, j in report.samples]
    low, high = report.intervals["rubric score"]  # mean ± 1.96 s/√n
    half = 1.96 * statistics.stdev(scores) / 2
    assert (low, high) == pytest.approx((report.rubric_score - half, report.rubric_score + half))
    with pytest.raises(ValueError, match="one reply per question"):
        judge_replies(world, [q], [])


def test_prompts_and_replies(tiny_base_dir):
    tokenizer = load_tokenizer(tiny_base_dir)
    q = World(seed=0).question_about("Alice", "town")
    assert format_prompt(q, tokenizer, PLAIN) == "<|endoftext|>" + q.text + "\n"
    assert format_prompt(q, tokenizer, CHAT) == f"<|user|>{q.text}<|end|><|assistant|>"
    with pytest.raises(ValueError, match="style must be"):
        format_prompt(q, tokenizer, "shouting")
    tokenizer.chat_template = None  # a hub base model: the question and a line break, as PPO reads it
    assert format_prompt(q, tokenizer, CHAT) == chat_prompt(tokenizer, q.text) == q.text + "\n"
    assert first_line("\nAlice lives in Foxhill.\nQ: more") == "Alice lives in Foxhill."


def test_fault_rates_on_a_model_are_reproducible(tiny_base_dir):
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    world = World(seed=0)
    questions = world.questions("heldout")[:8]
    a = fault_rates(model, tokenizer, world, questions, samples_per_question=2, seed=3)
    b = fault_rates(model, tokenizer, world, questions, samples_per_question=2, seed=3)
    assert a.n == 16 and [s[1] for s in a.samples] == [s[1] for s in b.samples]
    assert a.row() == b.row()


# ----------------------------------------------------------------------------------------------
# Chat models
# ----------------------------------------------------------------------------------------------


def test_kept_chat_format(tiny_base_dir):
    tokenizer = load_tokenizer(tiny_base_dir)
    end, eos = end_of_turn_id(tokenizer), tokenizer.eos_token_id
    user = tokenizer.convert_tokens_to_ids(USER)
    word = tokenizer("Alice", add_special_tokens=False).input_ids[0]
    pad = tokenizer.pad_token_id
    rows = [[word, word, end, pad],  # one turn, closed: kept
            [word, word, word, word],  # ran out of tokens
            [word, eos, pad, pad],  # stopped on <|endoftext|>
            [word, user, word, end],  # played the user
            [end, pad, pad, pad]]  # an empty turn
    lengths = [3, 4, 2, 4, 1]
    ids = torch.tensor(rows)
    mask = torch.tensor([[1] * n + [0] * (4 - n) for n in lengths])
    generation = Generation([""] * 5, [""] * 5, torch.zeros(5, 1, dtype=torch.long), ids, mask)
    assert kept_chat_format(generation, tokenizer) == [True, False, False, False, False]


def test_evaluate_chat_on_one_turn_equals_fault_rates_in_chat_style(tiny_base_dir):
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    world = World(seed=0)
    questions = world.questions("heldout")[:20]
    dialogues = [([{"role": "user", "content": q.text}], q) for q in questions]
    chat = evaluate_chat(model, tokenizer, world, dialogues, samples_per_question=4, name="m", seed=3)
    plain = fault_rates(model, tokenizer, world, questions, samples_per_question=4, style=CHAT, name="m", seed=3)
    assert chat.report.row() == plain.row()
    assert [r for _, r, _ in chat.report.samples] == [r for _, r, _ in plain.samples]
    assert len(chat.formats) == 80 and chat.format_rate == sum(chat.formats) / 80
    assert chat.row()["format rate"] == chat.format_rate


def test_evaluate_chat_refuses_a_dialogue_that_fills_the_context(tiny_base_dir):
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    world = World(seed=0)
    q = world.questions("heldout")[0]
    long = [{"role": "user", "content": "Where does Alice live? " * 20 + q.text}]
    with pytest.raises(ValueError, match="leaves no room for a reply in the model's context of 64"):
        evaluate_chat(model, tokenizer, world, [(long, q)])


# ----------------------------------------------------------------------------------------------
# Two models on the same questions (lesson 6): rubric preference and KL per reply
# ----------------------------------------------------------------------------------------------


def test_rubric_preference_counts_wins_ties_and_losses():
    world = World(seed=0)
    q = world.question_about("Alice", "town")
    wrong = "Alice lives in " + next(t for t in ("Brookfield", "Foxhill") if t != q.answer) + "."
    a = judge_replies(world, [q] * 4, [q.reference, q.reference, wrong, "Hm."], name="A")
    b = judge_replies(world, [q] * 4, [wrong, q.reference, q.reference, "Hm."], name="B")
    preference = rubric_preference(a, b)
    assert (preference.wins, preference.ties, preference.losses) == (1, 2, 1)
    assert preference.n == 4 and preference.rate == 0.5 and preference.win_rate == 0.5
    assert preference.interval == wilson_interval(1, 2)
    assert rubric_preference(a, a).rate == 0.5 and rubric_preference(a, a).ties == 4
    assert preference.row()["preference rate"] == 0.5
    other = judge_replies(world, [world.question_about("Alice", "pet")] * 4, ["Hm."] * 4, name="C")
    with pytest.raises(ValueError, match="different questions"):
        rubric_preference(a, other)


def test_reply_kl_is_zero_for_the_same_model_and_matches_a_direct_sum(tiny_base_dir):
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    other = load_model(tiny_base_dir, device="cpu")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    prompts = [format_prompt(q, tokenizer, CHAT) for q in World(seed=0).questions("heldout")[:5]]
    out = generate(model, tokenizer, prompts, max_new_tokens=6, seed=1)
    same = reply_kl(model, model, tokenizer, out)
    assert same.shape == (5,) and torch.equal(same, torch.zeros(5))
    kl = reply_kl(model, other, tokenizer, out, batch_size=2)  # chunks give the same numbers
    # One reply by hand: its prompt alone, unpadded, then each reply token in turn.
    ids = tokenizer(prompts[3], add_special_tokens=False).input_ids
    reply = out.completion_ids[3][out.completion_mask[3].bool()].tolist()
    full = torch.tensor([ids + reply])
    with torch.no_grad():
        lp = [torch.log_softmax(m(full).logits[0, len(ids) - 1 : -1], -1) for m in (model, other)]
    expected = sum(lp[0][t, tok] - lp[1][t, tok] for t, tok in enumerate(reply))
    assert kl[3].item() == pytest.approx(expected.item(), abs=1e-4)
    assert not torch.equal(kl, torch.zeros(5))
