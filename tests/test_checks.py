"""Exercise checks: right answers pass, typical wrong answers are named, any other difference is
explained in one sentence that points at the input.

Tests of every exercise walk through ``EXERCISES``, the registry gathered from the lessons'
modules. Besides, each lesson has two tables of answers written here as a learner would,
independently of the implementations the checks list: ``RIGHT_<n>`` holds (check, right answer)
cases, which must pass, and ``WRONG_<n>`` holds (check, wrong answer, fragment) cases, which must
fail with the message of a listed mistake containing the fragment. One parametrised test runs all
the right answers, one all the wrong ones (at the end of the file).
"""

from __future__ import annotations

import ast
import json
import re
from itertools import combinations, permutations
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rlhf_kit import checks
from rlhf_kit.checks import (
    AGREEMENT_RATE,
    BRADLEY_TERRY_LOSS,
    CLIPPED_POLICY_LOSS,
    COMPUTE_GAE,
    EXERCISES,
    KL_PENALIZED_REWARDS,
    LOG_POLICY_GRADIENT,
    NEXT_TOKEN_LOSS,
    P_MARGIN,
    PAIRWISE_ACCURACY,
    PREFERENCE_PROBABILITY,
    RANKING_LOSS,
    RANKING_TO_PAIRS,
    REINFORCE_LOSS,
    SAMPLE_AVERAGE_UPDATE,
    SOFTMAX_WITH_TEMPERATURE,
    TOP_P_FILTER,
    CheckFailed,
    Exercise,
    Mistake,
    check_agreement_rate,
    check_best_of_n,
    check_bradley_terry_loss,
    check_clipped_policy_loss,
    check_clipped_value_loss,
    check_compute_gae,
    check_dpo_loss,
    check_format_chat,
    check_group_advantages,
    check_kl_penalized_rewards,
    check_log_policy_gradient,
    check_loss_mask,
    check_next_token_loss,
    check_pairwise_accuracy,
    check_preference_probability,
    check_ranking_loss,
    check_ranking_to_pairs,
    check_reinforce_loss,
    check_sample_average_update,
    check_sft_loss,
    check_softmax_with_temperature,
    check_top_p_filter,
    first_difference,
)
from rlhf_kit.feedback import agreement
from rlhf_kit.pretrain import next_token_loss
from rlhf_kit.sampling import softmax_with_temperature, top_p_filter
from rlhf_kit.sft import chat_ids, loss_mask

ROOT = Path(__file__).resolve().parents[1]
CHECKS_FOLDER = ROOT / "rlhf_kit" / "checks"
LESSONS = [checks.lesson1, checks.lesson2, checks.lesson3, checks.lesson4, checks.lesson5, checks.lesson6,
           checks.lesson7]

# ----------------------------------------------------------------------------------------------
# Every registered exercise: the reference passes, each listed mistake gets its own sentence
# ----------------------------------------------------------------------------------------------


# Tests that every registered exercise must pass (every lesson adds its own to EXERCISES) walk
# through the registry; the lesson 1 checks are also tested one by one.
LESSON_1 = [SOFTMAX_WITH_TEMPERATURE, TOP_P_FILTER, NEXT_TOKEN_LOSS]


@pytest.mark.parametrize("exercise", EXERCISES.values(), ids=lambda e: e.name)
def test_the_reference_passes_with_one_line(exercise, capsys):
    exercise.check(exercise.reference_function())
    assert capsys.readouterr().out == (f"✓ {exercise.name} matches the reference on "
                                       f"{exercise.trials} random inputs.\n")


ALL_MISTAKES = [(exercise, mistake, wrong) for exercise in EXERCISES.values()
                for mistake in exercise.mistakes for wrong in mistake.implementations]


@pytest.mark.parametrize("exercise, mistake, wrong", ALL_MISTAKES,
                         ids=[wrong.__name__.strip("_") for _, _, wrong in ALL_MISTAKES])
def test_every_listed_mistake_gets_its_own_message(exercise, mistake, wrong):
    """The first matching mistake wins, so this also shows that no mistake hides a later one."""
    with pytest.raises(CheckFailed) as failed:
        exercise.check(wrong)
    assert str(failed.value) == mistake.message


def test_mistake_messages_are_distinct_sentences_naming_the_function():
    messages = [m.message for e in EXERCISES.values() for m in e.mistakes]
    assert len(set(messages)) == len(messages)
    for exercise in EXERCISES.values():
        for mistake in exercise.mistakes:
            assert mistake.message.startswith(exercise.name + " ") and mistake.message.endswith(".")


@pytest.mark.parametrize("exercise", EXERCISES.values(), ids=lambda e: e.name)
def test_inputs_are_seeded(exercise):
    def same(a, b):
        return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
                   for x, y in zip(a.values(), b.values()))

    first, again, other = exercise.inputs(0), exercise.inputs(0), exercise.inputs(1)
    assert len(first) == exercise.trials
    assert [e.trials for e in LESSON_1] == [20, 20, 20]
    assert all(same(a, b) for a, b in zip(first, again))
    assert not all(same(a, b) for a, b in zip(first, other))


def test_the_registry_gathers_every_lesson_in_order():
    """One registry, assembled from the lessons' tables: nothing lost, nothing twice, in order."""
    listed = [exercise for lesson in LESSONS for exercise in lesson.LESSON_EXERCISES]
    assert list(EXERCISES.values()) == listed and len(EXERCISES) == 22
    assert list(EXERCISES)[:3] == ["softmax_with_temperature", "top_p_filter", "next_token_loss"]
    assert list(EXERCISES)[-3:] == ["dpo_loss", "group_advantages", "best_of_n"]
    for name, exercise in EXERCISES.items():
        assert exercise.name == name and callable(getattr(checks, f"check_{name}"))
        assert getattr(checks, exercise.__class__.__name__) is type(exercise)


def test_no_lesson_module_imports_another():
    """A lesson's checks use the framework and the kit's modules, never another lesson's checks."""
    for path in sorted(CHECKS_FOLDER.glob("lesson*.py")):
        imported = {(node.level, node.module) for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.level > 0}
        assert (1, "framework") in imported, path.name
        assert all(level == 2 or module == "framework" for level, module in imported), (path.name, imported)
    assert len(list(CHECKS_FOLDER.glob("lesson*.py"))) == 7


def test_every_check_the_notebooks_import_exists():
    """Each name of each ``from rlhf_kit.checks import ...`` in a notebook imports the same way."""
    imported = set()
    for notebook in ROOT.glob("*/[0-9]*.ipynb"):
        for cell in json.loads(notebook.read_text())["cells"]:
            source = "".join(cell["source"])
            for names in re.findall(r"from rlhf_kit\.checks import (\([^)]*\)|.*)", source):
                imported |= set(re.findall(r"\w+", names))
    assert "check_prediction" in imported  # the predict-then-try exercises of several lessons
    assert len(imported - {"check_prediction"}) == len(EXERCISES) and all(n.startswith("check_") for n in imported)
    assert all(callable(getattr(checks, name)) for name in imported)


# ----------------------------------------------------------------------------------------------
# Any other difference: the first one, in one sentence, with the input that shows it
# ----------------------------------------------------------------------------------------------


def fails_with(check, fn) -> str:
    with pytest.raises(CheckFailed) as failed:
        check(fn)
    message = str(failed.value)
    assert "\n" not in message
    return message


def test_returning_nothing_or_not_a_tensor():
    message = fails_with(check_softmax_with_temperature, lambda z, t: None)
    assert message.startswith("softmax_with_temperature returned None on random input 1 of 20 "
                              "(logits of shape")
    assert "`return`" in message
    message = fails_with(check_softmax_with_temperature, lambda z, t: softmax_with_temperature(z, t).tolist())
    assert "returned a list of length" in message and "where the reference returns a torch.Tensor" in message
    message = fails_with(check_next_token_loss, lambda z, ids: next_token_loss(z, ids).item())
    assert "returned a float" in message and ".item()" in message


def test_shape_and_dtype_are_named():
    message = fails_with(check_next_token_loss, lambda z, ids: next_token_loss(z, ids).reshape(1))
    assert "returned a tensor of shape (1,)" in message
    assert "where the reference returns shape () (a single number)" in message
    message = fails_with(check_softmax_with_temperature, lambda z, t: softmax_with_temperature(z, t).double())
    assert "returned dtype torch.float64" in message and "returns torch.float32" in message


def test_values_name_the_index_the_numbers_and_the_input():
    """Wrong on the one-token edge case only: the report points at that input, which runs late."""
    def wrong_for_one_token(z, t):
        return torch.zeros_like(z) if z.shape[-1] == 1 else softmax_with_temperature(z, t)

    message = fails_with(check_softmax_with_temperature, wrong_for_one_token)
    number = 1 + next(i for i, x in enumerate(SOFTMAX_WITH_TEMPERATURE.inputs())
                      if x["logits"].shape[-1] == 1)
    assert number > 10  # edge cases come after the typical inputs
    assert message == (f"softmax_with_temperature returned 0 at index (0, 0) on random input {number} "
                       "of 20 (logits of shape (3, 1), temperature=0.7), where the reference "
                       "returns 1 (3 of 3 values differ).")


def test_close_numbers_are_shown_with_enough_digits():
    """Off by 0.03 %: four significant digits would print -1 twice; the message uses more."""
    negate = Exercise(name="negate", reference="torch:neg", draw=lambda g: {"x": torch.ones(2)}, trials=1)
    with pytest.raises(CheckFailed) as failed:
        negate.check(lambda x: -x * 1.0003)
    assert str(failed.value) == ("negate returned -1.0003 at index 0 on random input 1 of 1 (x of shape "
                                 "(2,)), where the reference returns -1 (2 of 2 values differ).")


def test_an_error_in_the_learners_function_is_reported_with_its_input():
    def broken(z, t):
        raise ValueError("my own bug")

    with pytest.raises(CheckFailed) as failed:
        check_softmax_with_temperature(broken)
    assert str(failed.value).startswith("softmax_with_temperature raised ValueError on random input "
                                        "1 of 20 (")
    assert str(failed.value).endswith(": my own bug")
    assert isinstance(failed.value.__cause__, ValueError)
    # In a notebook the learner sees their own frame and the sentence, not the checker's code.
    shown = "\n".join(failed.value._render_traceback_())
    assert "in broken" in shown and "rlhf_kit/checks/" not in shown and "CheckFailed" in shown


def test_changing_the_input_in_place_is_reported():
    def in_place(logits, p):
        filtered = top_p_filter(logits, p)
        logits.copy_(filtered)
        return logits

    message = fails_with(check_top_p_filter, in_place)
    assert "changed its input logits in place on random input 1 of 20" in message
    assert "masked_fill" in message


def test_not_started_passes_through_and_a_call_is_not_a_function():
    def todo(logits, temperature):
        raise NotImplementedError("Hint: divide by the temperature.")

    with pytest.raises(NotImplementedError, match="Hint: divide"):
        check_softmax_with_temperature(todo)
    message = fails_with(check_softmax_with_temperature, torch.zeros(3))
    assert "pass softmax_with_temperature without parentheses" in message


def test_a_message_is_the_only_line_ipython_shows():
    assert CheckFailed("top_p_filter differs.")._render_traceback_() == [
        "\x1b[0;31mCheckFailed\x1b[0m: top_p_filter differs."]


def test_tuples_are_compared_element_by_element():
    """Later lessons return tuples (GAE: advantages, returns); the first differing element is named."""
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert first_difference((a, b), (a, b.clone()), 1e-4, 1e-5) is None
    found = first_difference((a, b), (a, b * 2), 1e-4, 1e-5)
    assert "element 1 of what it returns" in found and "at index (0, 0)" in found
    assert first_difference((a, b), a, 1e-4, 1e-5) == (
        "returned a torch.Tensor {where}, where the reference returns a tuple of length 2")


def test_a_new_exercise_is_a_declaration():
    """What later lessons do: declare inputs, edge cases and mistakes; the checking is shared."""
    negate = Exercise(
        name="negate", reference="torch:neg",  # any importable function serves as a reference
        draw=lambda g: {"x": torch.randn(3, generator=g)},
        edge_cases=lambda: [{"x": torch.zeros(2)}],
        mistakes=(Mistake("negate forgot the minus sign.", lambda x: x),),
        trials=5,
    )
    assert len(negate.inputs()) == 5
    with pytest.raises(CheckFailed, match="^negate forgot the minus sign.$"):
        negate.check(lambda x: x.clone())
    with pytest.raises(CheckFailed,
                       match=r"^negate returned 0 at index 0 on random input 1 of 5 \(x of shape \(3,\)\)"):
        negate.check(lambda x: torch.zeros_like(x))


def calls_the_tokenizer_wrongly(tokenizer, messages):
    return tokenizer(12345)  # a number, not text: the tokenizer raises


def test_frames_of_every_module_of_the_checks_are_hidden():
    """The learner's error passes through the lesson's tokenizer wrapper: its frame stays hidden too."""
    with pytest.raises(CheckFailed) as failed:
        check_loss_mask(calls_the_tokenizer_wrongly)
    assert str(failed.value).startswith("loss_mask raised ValueError on random input 1 of 20 "
                                        "(tokenizer=tokenizer")
    shown = "\n".join(failed.value._render_traceback_())
    assert "in calls_the_tokenizer_wrongly" in shown and "transformers" in shown
    assert "rlhf_kit/checks/" not in shown and shown.startswith("Your function raised an error:")


# ----------------------------------------------------------------------------------------------
# Lesson 1 (next-token prediction): softmax with temperature, top-p, the next-token loss
# ----------------------------------------------------------------------------------------------


def softmax_log_sum_exp(z, t):
    """Right, by another route: log-probabilities through logsumexp, then exp."""
    scaled = z / t
    return torch.exp(scaled - torch.logsumexp(scaled, dim=-1, keepdim=True))


def top_p_ascending(logits, p):
    """Right, the way Hugging Face writes it: sort ascending, drop the tail that sums to <= 1 - p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1)  # least likely first
    tail_mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = tail_mass <= 1 - p
    remove_sorted[..., -1] = False  # the most likely token always stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return torch.where(remove, torch.full_like(logits, float("-inf")), logits)


def top_p_row_by_row(logits, p):
    """Right, slowly: one row at a time in plain Python, as a learner might write it first."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = flat.clone()
    for row, result in zip(flat, out):
        probs = torch.softmax(row, dim=-1)
        total = 0.0
        for i in torch.argsort(row, descending=True).tolist():
            if total >= p:
                result[i] = float("-inf")
            total += probs[i].item()
    return out.reshape(logits.shape)


def loss_with_cross_entropy(logits, input_ids):
    """Right, with the class dimension moved where F.cross_entropy expects it."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:])


RIGHT_1 = [
    (check_softmax_with_temperature, softmax_log_sum_exp),
    (check_top_p_filter, top_p_ascending),
    (check_top_p_filter, top_p_row_by_row),
    (check_next_token_loss, loss_with_cross_entropy),
]


# The same mistakes as a learner might write them, independently of the implementations the
# checks list: the diagnosis must not depend on the exact code.

def _sorted(logits):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    return sorted_logits, order, sorted_logits.softmax(dim=-1)


def _filtered(logits, order, remove_sorted, fill=float("-inf")):
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, fill)


def learner_top_p_too_few(logits, p):
    _, order, probs = _sorted(logits)
    keep = probs.cumsum(dim=-1) <= p  # keeps only what stays within p
    keep[..., 0] = True
    return _filtered(logits, order, ~keep)


def learner_top_p_drops_top(logits, p):
    _, order, probs = _sorted(logits)
    return _filtered(logits, order, probs.cumsum(dim=-1) > p)


def learner_top_p_too_many(logits, p):
    _, order, probs = _sorted(logits)
    remove = (probs.cumsum(dim=-1) - probs) > p
    remove[..., 1:] = remove[..., :-1].clone()  # the classic shift, once too often
    remove[..., 0] = False
    return _filtered(logits, order, remove)


def learner_top_p_probabilities(logits, p):
    _, order, probs = _sorted(logits)
    remove = (probs.cumsum(dim=-1) - probs) >= p
    kept = torch.softmax(logits, dim=-1) * ~torch.zeros_like(remove).scatter(-1, order, remove)
    return kept / kept.sum(dim=-1, keepdim=True)


def learner_top_p_sorted(logits, p):
    sorted_logits, _, probs = _sorted(logits)
    return sorted_logits.masked_fill((probs.cumsum(dim=-1) - probs) >= p, float("-inf"))


def learner_top_p_zero(logits, p):
    _, order, probs = _sorted(logits)
    return _filtered(logits, order, (probs.cumsum(dim=-1) - probs) >= p, fill=0.0)


def learner_top_p_unsorted(logits, p):
    probs = logits.softmax(dim=-1)
    return logits.masked_fill(probs.cumsum(dim=-1) - probs >= p, float("-inf"))


def learner_softmax_without_keepdim(logits, temperature):
    scaled = logits / temperature
    weights = (scaled - scaled.amax(dim=-1, keepdim=True)).exp()
    return weights / weights.sum(dim=-1)  # (..., V) / (...,): broadcasts along the wrong axis


def learner_loss_no_shift(logits, input_ids):
    return F.cross_entropy(logits.transpose(1, 2), input_ids)


def learner_loss_backwards(logits, input_ids):
    logprobs = logits[:, 1:].log_softmax(dim=-1)
    return -logprobs.gather(-1, input_ids[:, :-1, None]).mean()


def learner_loss_sum(logits, input_ids):
    logprobs = logits[:, :-1].log_softmax(dim=-1)
    return -logprobs.gather(-1, input_ids[:, 1:, None]).sum()


def learner_loss_raw(logits, input_ids):
    return -logits[:, :-1].gather(-1, input_ids[:, 1:, None]).mean()


def learner_softmax_no_temperature(z, t):
    return (torch.exp(z - z.amax(-1, keepdim=True))
            / torch.exp(z - z.amax(-1, keepdim=True)).sum(-1, keepdim=True))


def learner_softmax_times_temperature(z, t):
    return F.softmax(z * t, dim=-1)


def learner_softmax_dim0(z, t):
    return F.softmax(z / t, dim=0)


def learner_softmax_unstable(z, t):
    return (z / t).exp() / (z / t).exp().sum(-1, keepdim=True)


WRONG_1 = [
    (check_softmax_with_temperature, learner_softmax_no_temperature, "ignores the temperature"),
    (check_softmax_with_temperature, learner_softmax_times_temperature,
     "multiplies the logits by the temperature"),
    (check_softmax_with_temperature, learner_softmax_dim0, "normalises over the wrong dimension"),
    (check_softmax_with_temperature, learner_softmax_unstable, "overflows"),
    (check_softmax_with_temperature, learner_softmax_without_keepdim, "lost their last dimension"),
    (check_top_p_filter, learner_top_p_too_few, "keeps one token too few"),
    (check_top_p_filter, learner_top_p_drops_top, "removes the most likely token"),
    (check_top_p_filter, learner_top_p_too_many, "keeps one token too many"),
    (check_top_p_filter, learner_top_p_unsorted, "in vocabulary order"),
    (check_top_p_filter, learner_top_p_sorted, "in sorted order"),
    (check_top_p_filter, learner_top_p_probabilities, "returns probabilities, not logits"),
    (check_top_p_filter, learner_top_p_zero, "sets the removed logits to 0"),
    (check_next_token_loss, learner_loss_no_shift, "(no shift)"),
    (check_next_token_loss, learner_loss_backwards, "shifts the wrong way"),
    (check_next_token_loss, learner_loss_sum, "adds up the per-token losses"),
    (check_next_token_loss, learner_loss_raw, "raw logits"),
]


def test_softmax_inputs_cover_every_rank_and_the_edge_cases():
    inputs = SOFTMAX_WITH_TEMPERATURE.inputs()
    assert {x["logits"].dim() for x in inputs} == {1, 2, 3}
    assert any(x["logits"].shape[-1] == 1 for x in inputs)
    assert any(x["logits"].abs().max() / x["temperature"] > 88 for x in inputs)  # exp overflows
    assert 1.0 not in {x["temperature"] for x in inputs}  # T = 1 would hide a forgotten T


def test_top_p_inputs_stay_clear_of_ties_and_include_the_edges():
    inputs = TOP_P_FILTER.inputs()
    for x in inputs:
        if x["p"] < 1:
            probs = torch.softmax(x["logits"].double(), -1).sort(-1, descending=True).values
            assert ((probs.cumsum(-1)[..., :-1] - x["p"]).abs() > P_MARGIN).all()
    assert {x["logits"].dim() for x in inputs} == {1, 2, 3}
    assert any(x["p"] == 1.0 for x in inputs) and any(x["logits"].shape[-1] == 1 for x in inputs)
    top = [x for x in inputs if (torch.softmax(x["logits"], -1).amax(-1) > x["p"]).any()]
    assert top  # the most likely token alone is past p somewhere


def test_loss_inputs_include_the_shortest_text():
    inputs = NEXT_TOKEN_LOSS.inputs()
    assert min(x["logits"].shape[1] for x in inputs) == 2
    assert all(x["input_ids"].shape == x["logits"].shape[:2] for x in inputs)


# ----------------------------------------------------------------------------------------------
# Lesson 3 (demonstrations and SFT): the loss mask, the SFT loss, the chat template by hand
# ----------------------------------------------------------------------------------------------


def sft_loss_with_ignore_index(logits, labels, loss_mask):
    """Right: the tokens not counted labelled -100, which F.cross_entropy skips; 0 when none counts."""
    targets = labels[:, 1:].masked_fill(loss_mask[:, 1:] == 0, -100)
    if (targets == -100).all():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)


def format_chat_by_hand(messages, add_generation_prompt=False):
    """Right: each turn as <|role|>content<|end|>, back to back, then the cue for a reply."""
    text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


RIGHT_2 = [
    (check_sft_loss, sft_loss_with_ignore_index),
    (check_format_chat, format_chat_by_hand),
]


def learner_mask_everything(tokenizer, messages):
    return torch.ones(len(chat_ids(tokenizer, messages)), dtype=torch.long)


def learner_mask_inverted(tokenizer, messages):
    return 1 - loss_mask(tokenizer, messages)


def learner_sft_loss_no_shift(logits, labels, loss_mask):
    nll = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    return (nll * loss_mask).sum() / loss_mask.sum().clamp(min=1)


def learner_sft_loss_whole_mean(logits, labels, loss_mask):
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:])


def learner_sft_loss_nan_when_empty(logits, labels, loss_mask):
    targets = labels[:, 1:].masked_fill(loss_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)


def learner_format_chat_one_turn_a_line(messages, add_generation_prompt=False):
    return format_chat_by_hand(messages).replace("<|end|>", "<|end|>\n") + (
        "<|assistant|>" if add_generation_prompt else "")


def learner_format_chat_never_prompts(messages, add_generation_prompt=False):
    return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)


WRONG_2 = [
    (check_loss_mask, learner_mask_everything, "counts every token"),
    (check_loss_mask, learner_mask_inverted, "is inverted"),
    (check_sft_loss, learner_sft_loss_no_shift, "(no shift)"),
    (check_sft_loss, learner_sft_loss_whole_mean, "ignores the mask"),
    (check_sft_loss, learner_sft_loss_nan_when_empty, "returns nan when no token counts"),
    (check_format_chat, learner_format_chat_one_turn_a_line, "puts a line break after each turn"),
    (check_format_chat, learner_format_chat_never_prompts, "ignores add_generation_prompt"),
]


# ----------------------------------------------------------------------------------------------
# Lesson 4 (human feedback): rankings to pairs, agreement between two labelers
# ----------------------------------------------------------------------------------------------
# The answers are plain data, not tensors: right ones (in any order of the pairs) and typical
# wrong ones.


def learner_pairs(ranking, ties, tie_test=None):
    """A learner's ranking_to_pairs: walk down the ranking, each completion against those below."""
    tied_with_previous = {b for a, b in zip(ranking, ranking[1:]) if (a, b) in ties or (b, a) in ties}
    group, groups = 0, {}
    for index, completion in enumerate(ranking):
        if index and completion not in tied_with_previous:
            group += 1
        groups[completion] = group
    tie_test = tie_test or (lambda a, b: groups[a] == groups[b])
    pairs, dropped = [], 0
    for i, chosen in enumerate(ranking):
        for rejected in ranking[i + 1:]:
            if tie_test(chosen, rejected):
                dropped += 1
            else:
                pairs.append((chosen, rejected))
    return pairs, dropped


def learner_pairs_in_index_order(ranking, ties):
    """Right: the pairs as lists, in index order, ties found by place."""
    place = {c: p for p, c in enumerate(ranking)}
    tied = {frozenset(t) for t in ties}
    group = {}
    for p, c in enumerate(ranking):
        group[c] = group[ranking[p - 1]] if p and frozenset((ranking[p - 1], c)) in tied else c
    pairs = [[a, b] if place[a] < place[b] else [b, a]
             for a, b in combinations(range(len(ranking)), 2) if group[a] != group[b]]
    return pairs, len(ranking) * (len(ranking) - 1) // 2 - len(pairs)


def learner_pairs_forgets_ties(ranking, ties):
    return [(a, b) for i, a in enumerate(ranking) for b in ranking[i + 1:]], 0


def learner_pairs_k_squared(ranking, ties):
    return [(a, b) for a in ranking for b in ranking], 0


def learner_pairs_permutations(ranking, ties):
    return list(permutations(ranking, 2)), 0


def learner_pairs_one_way(ranking, ties):
    return learner_pairs(ranking, ties, tie_test=lambda a, b: (a, b) in ties)


def learner_pairs_direct_ties(ranking, ties):
    return learner_pairs(ranking, ties, tie_test=lambda a, b: (a, b) in ties or (b, a) in ties)


def learner_pairs_neighbours(ranking, ties):
    pairs, dropped = [], 0
    for a, b in zip(ranking, ranking[1:]):
        if (min(a, b), max(a, b)) in ties:
            dropped += 1
        else:
            pairs.append((a, b))
    return pairs, dropped


def learner_pairs_no_count(ranking, ties):
    return learner_pairs(ranking, ties)[0], 0


def learner_pairs_rejected_first(ranking, ties):
    pairs, dropped = learner_pairs(ranking, ties)
    return [(b, a) for a, b in pairs], dropped


def learner_agreement(first, second):
    """A learner's agreement_rate: each labeler's verdict on each pair i < j, then compare."""
    def verdicts(ranking, ties):
        level, levels = 0, {}
        for p, c in enumerate(ranking):
            if p and (min(ranking[p - 1], c), max(ranking[p - 1], c)) not in ties:
                level += 1
            levels[c] = level
        return {(i, j): (levels[i] > levels[j]) - (levels[i] < levels[j])  # 0 when tied
                for i, j in combinations(range(len(ranking)), 2)}

    same = total = 0
    for (r1, t1), (r2, t2) in zip(first, second):
        v1, v2 = verdicts(r1, t1), verdicts(r2, t2)
        same += sum(v1[p] == v2[p] for p in v1)
        total += len(v1)
    return same / total


def learner_agreement_against_itself(first, second):
    return learner_agreement(first, first)


def learner_agreement_without_ties(first, second):
    return learner_agreement([(r, ()) for r, _ in first], [(r, ()) for r, _ in second])


def learner_agreement_per_ranking(first, second):
    rates = [learner_agreement([a], [b]) for a, b in zip(first, second)]
    return sum(rates) / len(rates)


def learner_agreement_identical(first, second):
    return sum(a == b for a, b in zip(first, second)) / len(first)


def learner_agreement_k_squared(first, second):
    same = total = 0
    for (r1, t1), (r2, t2) in zip(first, second):
        k = len(r1)
        rate = learner_agreement([(r1, t1)], [(r2, t2)])
        same += rate * k * (k - 1) + k  # both orders of each pair, and each completion with itself
        total += k * k
    return same / total


def learner_agreement_percent(first, second):
    return 100 * learner_agreement(first, second)


def agreement_of_the_kit_on_lists(first, second):
    return agreement(list(first), list(second))


def learner_pairs_only(ranking, ties):
    return learner_pairs(ranking, ties)[0]


RIGHT_3 = [
    (check_ranking_to_pairs, learner_pairs),
    (check_ranking_to_pairs, learner_pairs_in_index_order),
    (check_agreement_rate, learner_agreement),
    (check_agreement_rate, agreement_of_the_kit_on_lists),
]
WRONG_3 = [
    (check_ranking_to_pairs, learner_pairs_forgets_ties, "keeps the pairs marked as ties"),
    (check_ranking_to_pairs, learner_pairs_k_squared, "in both orders (K² or K·(K-1) pairs)"),
    (check_ranking_to_pairs, learner_pairs_permutations, "in both orders (K² or K·(K-1) pairs)"),
    (check_ranking_to_pairs, learner_pairs_one_way, "misses a tie when the completion ranked higher"),
    (check_ranking_to_pairs, learner_pairs_direct_ties, "in a run of ties"),
    (check_ranking_to_pairs, learner_pairs_neighbours, "pairs only neighbours"),
    (check_ranking_to_pairs, learner_pairs_no_count, "does not count them"),
    (check_ranking_to_pairs, learner_pairs_rejected_first, "puts the worse completion first"),
    (check_ranking_to_pairs, learner_pairs_only, "returns only the pairs"),
    (check_agreement_rate, learner_agreement_against_itself, "with themselves, which always agree"),
    (check_agreement_rate, learner_agreement_without_ties, "ignores the ties"),
    (check_agreement_rate, learner_agreement_per_ranking, "averages the rate of each completion set"),
    (check_agreement_rate, learner_agreement_identical, "counts the completion sets ranked identically"),
    (check_agreement_rate, learner_agreement_k_squared, "counts K² pairs per ranking"),
]


def test_lesson_3_other_differences_point_at_the_input():
    """A slip that is no typical mistake: the first input where it shows, rebuildable from the message."""
    message = fails_with(check_agreement_rate, learner_agreement_percent)
    assert message.startswith("agreement_rate returned ") and "on random input 1 of 20 (first=((" in message
    expected = AGREEMENT_RATE.reference_function()(*AGREEMENT_RATE.inputs()[0].values())
    assert message.endswith(f"where the reference returns {expected!r}.")

    def off_for_nine(ranking, ties):  # wrong only on the edge case of nine completions
        pairs, dropped = learner_pairs(ranking, ties)
        return (pairs[:-1], dropped) if len(ranking) == 9 else (pairs, dropped)

    message = fails_with(check_ranking_to_pairs, off_for_nine)
    assert message == ("ranking_to_pairs returned a list of length 35 (element 0 of what it returns) on "
                       "random input 20 of 20 (ranking=(8, 3, 5, 0, 7, 1, 6, 2, 4), ties=()), where the "
                       "reference returns a list of length 36.")


def test_lesson_3_inputs_hold_ties_runs_of_ties_and_every_size():
    inputs = RANKING_TO_PAIRS.inputs()
    assert {len(x["ranking"]) for x in inputs} >= {2, 4, 9}
    assert all(isinstance(x["ranking"], tuple) and isinstance(x["ties"], tuple) for x in inputs)
    assert sum(bool(x["ties"]) for x in inputs) >= 5
    assert any(len(x["ties"]) >= 2 for x in inputs)
    for x in AGREEMENT_RATE.inputs():  # the two labelers ranked the same completion sets
        assert [len(r) for r, _ in x["first"]] == [len(r) for r, _ in x["second"]]
    assert any(len({len(r) for r, _ in x["first"]}) > 1 for x in AGREEMENT_RATE.inputs())


# ----------------------------------------------------------------------------------------------
# Lesson 5 (reward model): the Bradley–Terry loss, the loss of one ranking, pairwise accuracy
# ----------------------------------------------------------------------------------------------


def bt_loss_by_softplus(chosen_scores, rejected_scores, weights=None):
    """Right: -log σ(x) = softplus(-x), stable for every margin."""
    losses = F.softplus(rejected_scores - chosen_scores)  # (B,)
    if weights is None:
        weights = torch.ones_like(losses)
    return (weights * losses).sum() / weights.sum()


def bt_loss_normalised_weights(chosen_scores, rejected_scores, weights=None):
    """Right: normalise the weights first, then a weighted sum."""
    losses = -F.logsigmoid(chosen_scores - rejected_scores)
    if weights is None:
        return losses.mean()
    return (weights / weights.sum() * losses).sum()


def ranking_loss_by_loops(scores, ranking):
    """Right: two loops over the places of the ranking, best first."""
    ranking = [int(i) for i in ranking]
    losses = [F.softplus(scores[ranking[j]] - scores[ranking[i]])
              for i in range(len(ranking)) for j in range(i + 1, len(ranking))]
    return torch.stack(losses).mean()


def ranking_loss_by_places(scores, ranking):
    """Right: turn the ranking into places, then compare every two completions i < j."""
    place = torch.empty_like(torch.as_tensor(ranking))
    place[torch.as_tensor(ranking)] = torch.arange(len(ranking))
    better, worse = [], []
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            a, b = (i, j) if place[i] < place[j] else (j, i)
            better.append(scores[a])
            worse.append(scores[b])
    return -F.logsigmoid(torch.stack(better) - torch.stack(worse)).mean()


def accuracy_by_counting(chosen_scores, rejected_scores):
    """Right: count the strict wins, divide by the number of pairs, as a tensor."""
    wins = sum(int(c > r) for c, r in zip(chosen_scores.tolist(), rejected_scores.tolist()))
    return torch.tensor(wins / len(chosen_scores))


def accuracy_from_sign(chosen_scores, rejected_scores):
    """Right: the sign of the margin is 1 exactly when chosen scores higher."""
    return (torch.sign(chosen_scores - rejected_scores) == 1).float().mean()


RIGHT_4 = [
    (check_bradley_terry_loss, bt_loss_by_softplus),
    (check_bradley_terry_loss, bt_loss_normalised_weights),
    (check_ranking_loss, ranking_loss_by_loops),
    (check_ranking_loss, ranking_loss_by_places),
    (check_pairwise_accuracy, accuracy_by_counting),
    (check_pairwise_accuracy, accuracy_from_sign),
]


def learner_bt_probability(chosen_scores, rejected_scores, weights=None):
    """Wrong: the probability of the person's choice, not its negative log."""
    p = torch.sigmoid(chosen_scores - rejected_scores)
    return p.mean() if weights is None else (weights * p).sum() / weights.sum()


def learner_bt_log_of_sigmoid(chosen_scores, rejected_scores, weights=None):
    """Wrong on large margins: log(σ(-200)) is log(0) in float32."""
    losses = -torch.log(1 / (1 + torch.exp(rejected_scores - chosen_scores)))
    return losses.mean() if weights is None else (weights * losses).sum() / weights.sum()


def learner_bt_rejected_minus_chosen(chosen_scores, rejected_scores, weights=None):
    losses = F.softplus(chosen_scores - rejected_scores)
    return losses.mean() if weights is None else (weights * losses).sum() / weights.sum()


def learner_bt_weights_forgotten(chosen_scores, rejected_scores, weights=None):
    return F.softplus(rejected_scores - chosen_scores).mean()


def learner_bt_weighted_mean_over_pairs(chosen_scores, rejected_scores, weights=None):
    losses = F.softplus(rejected_scores - chosen_scores)
    return losses.mean() if weights is None else torch.mean(weights * losses)


def learner_ranking_neighbours(scores, ranking):
    ordered = scores[torch.as_tensor(ranking)]
    return F.softplus(ordered[1:] - ordered[:-1]).mean()


def learner_ranking_places(scores, ranking):
    # reads ranking[i] as the place of completion i
    order = sorted(range(len(ranking)), key=lambda i: int(ranking[i]))
    return ranking_loss_by_loops(scores, order)


def learner_ranking_sum(scores, ranking):
    return ranking_loss_by_loops(scores, ranking) * (len(ranking) * (len(ranking) - 1) // 2)


def learner_ranking_worst_first(scores, ranking):
    return ranking_loss_by_loops(scores, list(reversed([int(i) for i in ranking])))


def learner_accuracy_ties_win(chosen_scores, rejected_scores):
    return (chosen_scores - rejected_scores >= 0).float().mean()


def learner_accuracy_count(chosen_scores, rejected_scores):
    return (chosen_scores > rejected_scores).sum().float()


WRONG_4 = [
    (check_bradley_terry_loss, learner_bt_probability, "returns the probability of the person's choice"),
    (check_bradley_terry_loss, learner_bt_log_of_sigmoid, "overflows"),
    (check_bradley_terry_loss, learner_bt_rejected_minus_chosen, "rewards the rejected side"),
    (check_bradley_terry_loss, learner_bt_weights_forgotten, "ignores the weights"),
    (check_bradley_terry_loss, learner_bt_weighted_mean_over_pairs,
     "divides the weighted losses by the number"),
    (check_ranking_loss, learner_ranking_neighbours, "compares only neighbours"),
    (check_ranking_loss, learner_ranking_places, "as the place of completion i"),
    (check_ranking_loss, learner_ranking_sum, "adds up the pair losses"),
    (check_ranking_loss, learner_ranking_worst_first, "reads the ranking backwards"),
    (check_pairwise_accuracy, learner_accuracy_ties_win, "counts a tie as a success"),
    (check_pairwise_accuracy, learner_accuracy_count, "instead of giving their share"),
]


def test_lesson_4_other_differences_point_at_the_input():
    def as_float(chosen_scores, rejected_scores, weights=None):
        return float(BRADLEY_TERRY_LOSS.reference_function()(chosen_scores, rejected_scores, weights))

    message = fails_with(check_bradley_terry_loss, as_float)
    assert message.startswith("bradley_terry_loss returned a float on random input 1 of 20")

    def one_loss_per_pair(chosen_scores, rejected_scores):  # forgot to average
        return -F.logsigmoid(chosen_scores - rejected_scores)

    assert "returned a tensor of shape" in fails_with(check_bradley_terry_loss,
                                                      lambda c, r, weights=None: one_loss_per_pair(c, r))


def test_lesson_4_inputs_hold_the_edge_cases():
    losses = BRADLEY_TERRY_LOSS.inputs()
    assert any(x["weights"] is None for x in losses) and any(x["weights"] is not None for x in losses)
    assert any(torch.equal(x["chosen_scores"], x["rejected_scores"]) for x in losses)  # ln 2
    assert any((x["chosen_scores"] - x["rejected_scores"]).abs().max() >= 200 for x in losses)
    rankings = RANKING_LOSS.inputs()
    assert {len(x["ranking"]) for x in rankings} >= {2, 5, 9}
    accuracies = PAIRWISE_ACCURACY.inputs()
    assert sum(bool((x["chosen_scores"] == x["rejected_scores"]).any()) for x in accuracies) >= 5


# ----------------------------------------------------------------------------------------------
# Lesson 2 (learning from rewards): the sample average, ∇ log π, the REINFORCE loss, Bradley–Terry
# ----------------------------------------------------------------------------------------------


def average_by_weights(estimate, count, reward):
    """Right: the old average stands for count - 1 rewards, the new reward for one."""
    return ((count - 1) * estimate + reward) / count


def gradient_by_autograd(logits, actions):
    """Right: let autograd differentiate log π(a)."""
    logits = logits.clone().requires_grad_(True)
    taken = torch.log_softmax(logits, dim=-1).gather(-1, actions[:, None]).sum()
    (gradient,) = torch.autograd.grad(taken, logits)
    return gradient


def gradient_by_rows(logits, actions):
    """Right, slowly: one run at a time, a stable softmax by hand."""
    rows = []
    for row, action in zip(logits, actions.tolist()):
        weights = torch.exp(row - row.max())
        gradient = -weights / weights.sum()
        gradient[action] += 1
        rows.append(gradient)
    return torch.stack(rows)


def reinforce_with_cross_entropy(logits, actions, rewards, baseline):
    """Right: -log π(a) is the cross-entropy of the taken action."""
    nll = F.cross_entropy(logits, actions, reduction="none")  # (R,)
    return ((rewards - baseline) * nll).mean()


def preference_from_softmax(score_a, score_b):
    """Right: the softmax over the two scores, a's share (stable: softmax subtracts the max)."""
    return torch.softmax(torch.stack([score_a, score_b]), dim=0)[0]


def preference_from_exp(score_a, score_b):
    """Right: 1 / (1 + e^(b - a)); overflows to inf when b - a > 88, and 1 / inf is 0."""
    return 1 / (1 + torch.exp(score_b - score_a))


RIGHT_5 = [
    (check_sample_average_update, average_by_weights),
    (check_log_policy_gradient, gradient_by_autograd),
    (check_log_policy_gradient, gradient_by_rows),
    (check_reinforce_loss, reinforce_with_cross_entropy),
    (check_preference_probability, preference_from_softmax),
    (check_preference_probability, preference_from_exp),
]


def learner_average_replaces(estimate, count, reward):
    return reward.clone()


def learner_average_previous_count(estimate, count, reward):
    previous = count - 1  # "the number of rewards before this one"
    return estimate + (reward - estimate) / (previous + 2)


def learner_average_learning_rate(estimate, count, reward, alpha=0.1):
    return (1 - alpha) * estimate + alpha * reward


def learner_gradient_of_softmax(logits, actions):
    probs = logits.softmax(-1)
    picked = probs[torch.arange(len(actions)), actions][:, None]
    return picked * (F.one_hot(actions, logits.shape[-1]) - probs)


def learner_gradient_flipped(logits, actions):
    return logits.softmax(-1) - F.one_hot(actions, logits.shape[-1]).float()


def learner_gradient_naive_softmax(logits, actions):
    e = logits.exp()
    return F.one_hot(actions, logits.shape[-1]) - e / e.sum(-1, keepdim=True)


def learner_reinforce_plain(logits, actions, rewards, baseline):
    logprobs = logits.log_softmax(-1)[torch.arange(len(actions)), actions]
    return -(logprobs * rewards).mean()


def learner_reinforce_maximises(logits, actions, rewards, baseline):
    logprobs = logits.log_softmax(-1)[torch.arange(len(actions)), actions]
    return (logprobs * (rewards - baseline)).mean()


def learner_reinforce_probs(logits, actions, rewards, baseline):
    probs = logits.softmax(-1)[torch.arange(len(actions)), actions]
    return -(probs * (rewards - baseline)).mean()


def learner_reinforce_log_of_softmax(logits, actions, rewards, baseline):
    logprobs = logits.softmax(-1).log()[torch.arange(len(actions)), actions]
    return -(logprobs * (rewards - baseline)).mean()


def learner_reinforce_baseline_minus_reward(logits, actions, rewards, baseline):
    nll = F.cross_entropy(logits, actions, reduction="none")  # -log π(a): two sign flips cancel
    return ((baseline - rewards) * -nll).sum()


def learner_preference_backwards(score_a, score_b):
    return 1 - torch.sigmoid(score_a - score_b)


def learner_preference_naive(score_a, score_b):
    return score_a.exp() / (score_a.exp() + score_b.exp())


WRONG_5 = [
    (check_sample_average_update, learner_average_replaces, "forgets the old estimate"),
    (check_sample_average_update, learner_average_previous_count, "divides by the wrong count"),
    (check_sample_average_update, learner_average_learning_rate, "fixed step size"),
    (check_log_policy_gradient, learner_gradient_of_softmax, "the gradient of π(a), not of log π(a)"),
    (check_log_policy_gradient, learner_gradient_flipped, "wrong sign"),
    (check_log_policy_gradient, learner_gradient_naive_softmax, "overflows on large logits"),
    (check_reinforce_loss, learner_reinforce_plain, "ignores the baseline"),
    (check_reinforce_loss, learner_reinforce_maximises, "wrong sign"),
    (check_reinforce_loss, learner_reinforce_probs, "probabilities instead of log-probabilities"),
    (check_reinforce_loss, learner_reinforce_log_of_softmax, "log of a softmax that underflowed"),
    (check_reinforce_loss, learner_reinforce_baseline_minus_reward, "adds up the runs' losses"),
    (check_preference_probability, learner_preference_backwards, "probability that b wins"),
    (check_preference_probability, learner_preference_naive, "overflows on large scores"),
]


def test_lesson_5_other_differences_point_at_the_input():
    def detached_float(logits, actions, rewards, baseline):
        return float(REINFORCE_LOSS.reference_function()(logits, actions, rewards, baseline))

    message = fails_with(check_reinforce_loss, detached_float)
    assert message.startswith("reinforce_loss returned a float on random input 1 of 20 (logits of shape")
    assert ".item()" in message

    def per_run(logits, actions, rewards, baseline):  # forgot to average: one loss per run
        taken = logits.log_softmax(-1).gather(-1, actions[:, None]).squeeze(-1)
        return -(rewards - baseline) * taken

    assert "returned a tensor of shape" in fails_with(check_reinforce_loss, per_run)


def test_lesson_5_inputs_hold_the_edge_cases():
    averages = SAMPLE_AVERAGE_UPDATE.inputs()
    assert any((x["count"] == 1).all() for x in averages)  # the first reward of an arm
    assert any(x["estimate"].dim() == 0 for x in averages) and any(x["estimate"].dim() == 2 for x in averages)
    assert any(x["logits"].abs().max() >= 1000 for x in LOG_POLICY_GRADIENT.inputs())
    reinforce = REINFORCE_LOSS.inputs()
    baselines = [x["baseline"] for x in reinforce]
    assert any(isinstance(b, torch.Tensor) for b in baselines)  # one per run, as a value model gives
    numbers = [b for b in baselines if isinstance(b, float)]
    assert sum(b != 0 for b in numbers) >= 5 and 0.0 in numbers  # 0: plain REINFORCE, an edge case
    assert any(x["rewards"].mean() > 2 for x in reinforce)  # rewards far from 0: the baseline matters
    preferences = PREFERENCE_PROBABILITY.inputs()
    assert any(torch.equal(x["score_a"], x["score_b"]) for x in preferences)
    assert any(x["score_a"].abs().max() >= 100 for x in preferences)


# ----------------------------------------------------------------------------------------------
# Lesson 6 (PPO): KL-penalised rewards, GAE, the clipped policy loss, the clipped value loss
# ----------------------------------------------------------------------------------------------


def rewards_by_rows(scores, logprobs, ref_logprobs, mask, kl_coef):
    """Right: one reply at a time, the score indexed at its length - 1."""
    rewards = torch.zeros_like(logprobs)
    for b in range(len(scores)):
        n = int(mask[b].sum())
        rewards[b, :n] = -kl_coef * (logprobs[b, :n] - ref_logprobs[b, :n])
        rewards[b, n - 1] += scores[b]
    return rewards


def rewards_by_scatter(scores, logprobs, ref_logprobs, mask, kl_coef):
    """Right: the score scattered into a zero tensor at the last real index."""
    last = (mask.sum(dim=1) - 1).long()[:, None]  # (B, 1)
    bonus = torch.zeros_like(logprobs).scatter(1, last, scores[:, None].to(logprobs.dtype))
    return torch.where(mask.bool(), kl_coef * (ref_logprobs - logprobs), 0.0) + bonus


def gae_by_rows(rewards, values, mask, gamma, lam):
    """Right: one reply at a time, only its real tokens, in plain Python numbers."""
    advantages, returns = torch.zeros_like(rewards), torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        following = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            following = delta + gamma * lam * following
            advantages[b, t] = following
            returns[b, t] = following + values[b, t].item()
    return advantages, returns


def gae_by_discounted_sums(rewards, values, mask, gamma, lam):
    """Right: A_t = sum over k of (gamma * lam)^k * delta_{t+k}, as a matrix product."""
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    following = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * following - values) * mask  # (B, T)
    T = rewards.shape[1]
    k = torch.arange(T)
    weights = torch.where(k[None, :] >= k[:, None], (gamma * lam) ** (k[None, :] - k[:, None]).double(), 0.0)
    advantages = (deltas.double() @ weights.T).to(values.dtype) * mask  # (B, T)
    return advantages, (advantages + values) * mask


def policy_loss_with_where(logprobs, old_logprobs, advantages, mask, clip_eps):
    """Right: the clipped term chosen with torch.where, the mean taken with the mask's weights."""
    weights = mask.float() / mask.sum()
    ratio = (logprobs - old_logprobs).exp()
    plain, clipped = ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    per_token = -torch.where(clipped < plain, clipped, plain)  # the smaller objective
    clipfrac = ((clipped < plain).float() * weights).sum()
    approx_kl = (((ratio - 1) - (logprobs - old_logprobs)) * weights).sum()
    return (per_token * weights).sum(), clipfrac.detach(), approx_kl.detach()


def value_loss_by_selection(values, old_values, returns, mask, clip_eps_value):
    """Right: the clipped value by min/max, the mean over the real tokens by boolean indexing."""
    clipped = torch.minimum(torch.maximum(values, old_values - clip_eps_value), old_values + clip_eps_value)
    errors = torch.maximum((values - returns).pow(2), (clipped - returns).pow(2))
    return errors[mask.bool()].mean() / 2


RIGHT_6 = [
    (check_kl_penalized_rewards, rewards_by_rows),
    (check_kl_penalized_rewards, rewards_by_scatter),
    (check_compute_gae, gae_by_rows),
    (check_compute_gae, gae_by_discounted_sums),
    (check_clipped_policy_loss, policy_loss_with_where),
    (check_clipped_value_loss, value_loss_by_selection),
]


def learner_rewards_score_at_end(scores, logprobs, ref_logprobs, mask, kl_coef):
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    rewards[:, -1] += scores
    return rewards


def learner_rewards_kl_as_bonus(scores, logprobs, ref_logprobs, mask, kl_coef):
    rewards = kl_coef * (logprobs - ref_logprobs) * mask
    rewards[torch.arange(len(scores)), mask.sum(1) - 1] += scores
    return rewards


def learner_rewards_penalty_on_padding(scores, logprobs, ref_logprobs, mask, kl_coef):
    rewards = -kl_coef * (logprobs - ref_logprobs)
    rewards[torch.arange(len(scores)), mask.sum(1) - 1] += scores
    return rewards


def learner_gae_forwards(rewards, values, mask, gamma, lam):
    mask = mask.float()
    values = values * mask
    advantages = torch.zeros_like(rewards)
    carried = torch.zeros(rewards.shape[0])
    for t in range(rewards.shape[1]):
        next_values = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        carried = rewards[:, t] + gamma * next_values - values[:, t] + gamma * lam * carried
        advantages[:, t] = carried
    return advantages * mask, (advantages + values) * mask


def learner_gae_uses_padding_values(rewards, values, mask, gamma, lam):
    advantages = torch.zeros_like(rewards)
    following = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        next_values = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        following = rewards[:, t] + gamma * next_values - values[:, t] + gamma * lam * following
        advantages[:, t] = following
    return advantages * mask, (advantages + values) * mask


def learner_policy_loss_min(logprobs, old_logprobs, advantages, mask, clip_eps):
    ratio = torch.exp(logprobs - old_logprobs)
    per_token = torch.minimum(-ratio * advantages, -ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    clipfrac = (-ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages > -ratio * advantages).float()
    approx_kl = (ratio - 1) - (logprobs - old_logprobs)
    m = mask.float()
    return (per_token * m).sum() / m.sum(), (clipfrac * m).sum() / m.sum(), (approx_kl * m).sum() / m.sum()


def learner_value_loss_plain(values, old_values, returns, mask, clip_eps_value):
    m = mask.float()
    return 0.5 * ((values - returns) ** 2 * m).sum() / m.sum()


WRONG_6 = [
    (check_kl_penalized_rewards, learner_rewards_score_at_end, "puts the score on the last column"),
    (check_kl_penalized_rewards, learner_rewards_kl_as_bonus, "rewards the KL instead of penalising it"),
    (check_kl_penalized_rewards, learner_rewards_penalty_on_padding, "charges the KL on padding"),
    (check_compute_gae, learner_gae_forwards, "runs forwards in time"),
    (check_compute_gae, learner_gae_uses_padding_values, "bootstraps from the values of the padding"),
    (check_clipped_policy_loss, learner_policy_loss_min, "keeps the smaller of the two losses"),
    (check_clipped_value_loss, learner_value_loss_plain, "does not clip"),
]


def test_lesson_6_inputs_hold_padded_replies_and_the_edge_cases():
    for exercise in (KL_PENALIZED_REWARDS, COMPUTE_GAE, CLIPPED_POLICY_LOSS):
        masks = [x["mask"] for x in exercise.inputs()]
        assert any((m == 0).any() for m in masks)  # a reply that stopped early
        assert all((m.sum(dim=1) >= 1).all() for m in masks)  # every reply has a token
    assert any(x["kl_coef"] == 0.0 for x in KL_PENALIZED_REWARDS.inputs())
    assert any(x["lam"] == 0.0 for x in COMPUTE_GAE.inputs())
    assert any((x["logprobs"] - x["old_logprobs"]).abs().max() > 0.4 for x in CLIPPED_POLICY_LOSS.inputs())


# ----------------------------------------------------------------------------------------------
# Lesson 7 (after PPO): the DPO loss, GRPO's group advantages, best-of-n
# ----------------------------------------------------------------------------------------------


def dpo_loss_by_softplus(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                         beta):
    """Right: each implicit reward first, then -log σ(x) = softplus(-x)."""
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)
    return F.softplus(rejected - chosen).mean()


def group_advantages_by_groups(scores, group_size):
    """Right: one prompt's replies at a time, by slicing."""
    advantages = []
    for start in range(0, len(scores), group_size):
        group = scores[start:start + group_size]
        advantages.append((group - group.mean()) / (group.std() + 1e-4))
    return torch.cat(advantages)


def best_of_n_in_python(scores, n):
    """Right: the first best score among each prompt's n replies, found with max over indices."""
    values = scores.tolist()
    return torch.tensor([max(range(start, start + n), key=lambda i: values[i])
                         for start in range(0, len(values), n)])


RIGHT_7 = [
    (check_dpo_loss, dpo_loss_by_softplus),
    (check_group_advantages, group_advantages_by_groups),
    (check_best_of_n, best_of_n_in_python),
]


def learner_dpo_policy_only(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                            beta):
    return F.softplus(beta * (policy_rejected_logps - policy_chosen_logps)).mean()


def learner_dpo_beta_outside(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             beta):
    margin = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    return beta * F.softplus(-margin).mean()


def learner_group_whole_batch(scores, group_size):
    std, mean = torch.std_mean(scores)
    return (scores - mean) / (std + 1e-4)


def learner_group_without_eps(scores, group_size):
    groups = scores.reshape(-1, group_size)
    return ((groups - groups.mean(dim=1, keepdim=True)) / groups.std(dim=1, keepdim=True)).flatten()


def learner_best_of_n_place_in_group(scores, n):
    values = scores.tolist()
    return torch.tensor([max(range(n), key=lambda j: values[start + j])
                         for start in range(0, len(values), n)])


def learner_best_of_n_worst(scores, n):
    return torch.stack([group.argmin() + i * n for i, group in enumerate(scores.split(n))])


WRONG_7 = [
    (check_dpo_loss, learner_dpo_policy_only, "ignores the reference model"),
    (check_dpo_loss, learner_dpo_beta_outside, "puts beta outside the log-sigmoid"),
    (check_group_advantages, learner_group_whole_batch, "normalises over the whole batch"),
    (check_group_advantages, learner_group_without_eps, "divides by zero"),
    (check_best_of_n, learner_best_of_n_place_in_group, "place within its group"),
    (check_best_of_n, learner_best_of_n_worst, "keeps the worst reply"),
]


# ----------------------------------------------------------------------------------------------
# The tables of every lesson, run
# ----------------------------------------------------------------------------------------------


def _cases(tables: dict[int, list[tuple]]) -> list:
    """The cases of the lessons' tables, each with an id: its lesson and its answer's name."""
    return [pytest.param(*case, id=f"lesson{lesson}-{case[1].__name__.removeprefix('learner_')}")
            for lesson, table in tables.items() for case in table]


RIGHT = _cases({1: RIGHT_1, 2: RIGHT_2, 3: RIGHT_3, 4: RIGHT_4, 5: RIGHT_5, 6: RIGHT_6, 7: RIGHT_7})
WRONG = _cases({1: WRONG_1, 2: WRONG_2, 3: WRONG_3, 4: WRONG_4, 5: WRONG_5, 6: WRONG_6, 7: WRONG_7})


@pytest.mark.parametrize("check, right", RIGHT)
def test_a_right_answer_written_another_way_passes(check, right, capsys):
    check(right)
    name = check.__name__.removeprefix("check_")
    assert capsys.readouterr().out.startswith(f"✓ {name} matches the reference on ")


@pytest.mark.parametrize("check, wrong, fragment", WRONG)
def test_a_wrong_answer_written_by_a_learner_is_named(check, wrong, fragment):
    """The diagnosis must not depend on the exact code: the listed mistake is named all the same."""
    with pytest.raises(CheckFailed) as failed:
        check(wrong)
    assert fragment in str(failed.value)
    assert str(failed.value) in {m.message for m in EXERCISES[check.__name__.removeprefix("check_")].mistakes}


# ----------------------------------------------------------------------------------------------
# A loss with the right value but no gradient (cut off from autograd) fails its check
# ----------------------------------------------------------------------------------------------


def _rebuilt(loss):
    """The right value, rebuilt from a number: ``torch.tensor(loss.item())`` has no gradient."""
    def rebuilt(*args):
        out = loss(*args)
        if isinstance(out, tuple):
            return (torch.tensor(out[0].item()),) + tuple(out[1:])
        return torch.tensor(out.item())
    return rebuilt


def _on_detached(loss, position):
    """The right loss computed from a detached copy of the argument at ``position``."""
    def detached(*args):
        args = list(args)
        args[position] = args[position].detach()
        return loss(*args)
    return detached


LOSSES = {  # check -> the positions of the arguments the gradient flows to
    check_next_token_loss: (0,),
    check_sft_loss: (0,),
    check_bradley_terry_loss: (0, 1),
    check_ranking_loss: (0,),
    check_reinforce_loss: (0,),
    check_clipped_policy_loss: (0,),
    check_clipped_value_loss: (0,),
    check_dpo_loss: (0, 1),
}


def _kit(check):
    """The kit's own loss that ``check`` compares with."""
    return EXERCISES[check.__name__.removeprefix("check_")].reference_function()


@pytest.mark.parametrize("check", LOSSES, ids=lambda c: c.__name__)
def test_a_loss_rebuilt_from_a_number_fails_with_autograd_named(check):
    with pytest.raises(CheckFailed, match="cut off from autograd"):
        check(_rebuilt(_kit(check)))


@pytest.mark.parametrize("check", LOSSES, ids=lambda c: c.__name__)
def test_a_loss_on_a_detached_input_fails(check):
    for position in LOSSES[check]:
        with pytest.raises(CheckFailed, match="autograd|no gradient flows back"):
            check(_on_detached(_kit(check), position))


@pytest.mark.parametrize("check", LOSSES, ids=lambda c: c.__name__)
def test_the_kit_s_own_loss_passes_with_its_gradients(check, capsys):
    check(_kit(check))
    assert capsys.readouterr().out.startswith("✓ ")
    exercise = EXERCISES[check.__name__.removeprefix("check_")]
    assert exercise.grad_inputs  # the gradient is compared, not only the value


def test_only_losses_compare_gradients():
    assert {name for name, e in EXERCISES.items() if e.grad_inputs} == {
        c.__name__.removeprefix("check_") for c in LOSSES}


def test_a_prediction_is_compared_with_the_run_and_the_reason_given_either_way(capsys):
    why = "a lower temperature picks the writers' most common habit."
    checks.check_prediction(" Lower", "lower", ("higher", "lower", "the same"), why)
    assert capsys.readouterr().out == f"✓ You predicted 'lower', and the run says 'lower': {why}\n"
    with pytest.raises(checks.CheckFailed, match=r"^You predicted 'higher', but the run says 'lower': a lower"):
        checks.check_prediction("higher", "lower", ("higher", "lower"), why)


@pytest.mark.parametrize("prediction", [None, "", "up", 3])
def test_a_prediction_that_is_not_one_of_the_choices_says_what_to_write(prediction):
    with pytest.raises(checks.CheckFailed, match=r"^Write your prediction as one of 'higher' or 'lower'"):
        checks.check_prediction(prediction, "lower", ("higher", "lower"), "why.")
    with pytest.raises(ValueError, match="not one of the choices"):
        checks.check_prediction("lower", "sideways", ("higher", "lower"), "why.")
