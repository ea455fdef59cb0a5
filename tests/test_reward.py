"""Reward model: the loss by hand, grouping, data checks, training both ways, evaluation, the stage.

Every model here is the tiny one of ``conftest.py`` (context of 64 tokens), with a scalar head.
Training runs on a planted-signal dataset: short completions of world words where the best one
of each ranking holds the word "please", which a tiny model learns in a few dozen steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from rlhf_kit import artifacts, reward, stages
from rlhf_kit.checks import (
    CheckFailed,
    check_bradley_terry_loss,
    check_pairwise_accuracy,
    check_ranking_loss,
)
from rlhf_kit.behaviours import BehaviourWorld, writer_items
from rlhf_kit.feedback import (
    DEFAULT_NOISE,
    TARGET_AGREEMENT,
    Ranking,
    RankingStore,
    SimulatedLabeler,
    calibrate_noise,
    expand_pairs,
    expected_agreement,
    score_gaps,
    load_example_rankings,
    pairs_dataset,
    template_items,
)
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.world import PEOPLE, VALUES, World

TINY_REWARD = reward.RewardConfig(k=3, n_rankings=48, max_new_tokens=10, epochs=3, lr=3e-3,
                                  rankings_per_batch=8, max_length=64, log_every=5, eval_every=0)
LN2 = math.log(2)


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir):
    return load_tokenizer(tiny_base_dir)


def fresh_model(path, seed: int = 0):
    """The tiny model with a new scalar head, initialised from ``seed``."""
    torch.manual_seed(seed)
    return load_model(path, kind="reward", device="cpu")


WORDS = list(PEOPLE[:12]) + [v for values in VALUES.values() for v in values[:4]]


def planted_rankings(n: int, seed: int) -> list[Ranking]:
    """Rankings of 3 completions of world words; the best holds "please", the other two tie."""
    rng = random.Random(seed)
    questions = [q.text for q in World(seed=0).questions()]
    rng.shuffle(questions)
    rankings = []
    for prompt in questions[:n]:
        texts: list[str] = []
        while len(texts) < 3:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 5)))
            if text not in texts:
                texts.append(text)
        words = texts[0].split()
        words.insert(rng.randint(0, len(words)), "please")
        texts[0] = " ".join(words)
        shown = [0, 1, 2]
        rng.shuffle(shown)
        completions = tuple(texts[i] for i in shown)
        best = shown.index(0)
        others = tuple(i for i in range(3) if i != best)
        rankings.append(Ranking(prompt, completions, (best, *others), ties=(others,)))
    return rankings


@pytest.fixture(scope="module")
def planted():
    """Train and held-out pairs of the planted signal, from different prompts."""
    rankings = planted_rankings(124, seed=0)
    return expand_pairs(rankings[:64])[0], expand_pairs(rankings[64:])[0]


def flip_half(rows, seed):
    """The same pairs with chosen and rejected swapped at random: labels with no signal."""
    rng = random.Random(seed)
    return [dict(r, chosen=r["rejected"], rejected=r["chosen"]) if rng.random() < 0.5 else r
            for r in rows]


# ----------------------------------------------------------------------------------------------
# The loss, by hand
# ----------------------------------------------------------------------------------------------


def test_bradley_terry_loss_by_hand():
    def bt(chosen, rejected, weights=None):
        w = None if weights is None else torch.tensor(weights)
        return reward.bradley_terry_loss(torch.tensor(chosen), torch.tensor(rejected), w).item()

    assert bt([0.0], [0.0]) == pytest.approx(LN2)  # equal scores: a coin flip
    assert bt([3.0, -1.0], [3.0, -1.0]) == pytest.approx(LN2)
    assert bt([1.0], [0.0]) == pytest.approx(math.log(1 + math.exp(-1)))  # -log σ(1) = 0.3133
    assert bt([0.0], [1.0]) == pytest.approx(math.log(1 + math.e))  # the wrong way round: 1.3133
    assert bt([2.0, 0.0], [0.0, 2.0]) == pytest.approx(
        (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2)
    # weighted: Σ w·loss / Σ w
    assert bt([1.0, 0.0], [0.0, 1.0], [1.0, 3.0]) == pytest.approx(
        (math.log(1 + math.exp(-1)) + 3 * math.log(1 + math.e)) / 4)
    # far apart: finite, no log(0)
    assert bt([-100.0], [100.0]) == pytest.approx(200.0)
    assert bt([100.0], [-100.0]) == pytest.approx(0.0, abs=1e-6)
    # the gradient at equal scores: each chosen score is pushed up by 1/(2B)
    chosen = torch.zeros(4, requires_grad=True)
    reward.bradley_terry_loss(chosen, torch.zeros(4)).backward()
    torch.testing.assert_close(chosen.grad, torch.full((4,), -0.125))


def test_bradley_terry_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"same shape \(B,\)"):
        reward.bradley_terry_loss(torch.zeros(3), torch.zeros(2))


def test_ranking_loss_is_the_mean_over_every_pair_of_the_ranking():
    scores = torch.tensor([0.5, -1.0, 2.0])  # completions 0, 1, 2
    # ranking (2, 0, 1): 2 beats 0, 2 beats 1, 0 beats 1
    expected = -(F.logsigmoid(torch.tensor(1.5)) + F.logsigmoid(torch.tensor(3.0))
                 + F.logsigmoid(torch.tensor(1.5))) / 3
    torch.testing.assert_close(reward.ranking_loss(scores, [2, 0, 1]), expected)
    torch.testing.assert_close(reward.ranking_loss(torch.zeros(6), torch.randperm(6)), torch.tensor(LN2))
    # the same as the pairs expand_pairs makes of that ranking
    record = Ranking("Where does Alice live?", ("a", "b", "c"), (2, 0, 1))
    rows = expand_pairs([record])[0]
    index = {"a": 0, "b": 1, "c": 2}
    chosen = torch.stack([scores[index[r["chosen"]]] for r in rows])
    rejected = torch.stack([scores[index[r["rejected"]]] for r in rows])
    torch.testing.assert_close(reward.bradley_terry_loss(chosen, rejected), expected)


def test_a_ranking_of_nine_weighs_as_much_as_a_ranking_of_four():
    nine = Ranking("Where does Alice live?", tuple(f"reply {i}" for i in range(9)), tuple(range(9)))
    four = Ranking("What is Bruno's job?", tuple(f"answer {i}" for i in range(4)), (3, 1, 0, 2))
    rows, stats = expand_pairs([nine, four])
    assert stats.pairs == 36 + 6
    weights = torch.tensor([r["weight"] for r in rows])
    in_nine = torch.tensor([r["group_id"] == 0 for r in rows])
    assert weights[in_nine].sum().item() == pytest.approx(1.0)
    assert weights[~in_nine].sum().item() == pytest.approx(1.0)
    generator = torch.Generator().manual_seed(0)
    s9, s4 = torch.randn(9, generator=generator), torch.randn(4, generator=generator)
    score = {**{f"reply {i}": s9[i] for i in range(9)}, **{f"answer {i}": s4[i] for i in range(4)}}
    chosen = torch.stack([score[r["chosen"]] for r in rows])
    rejected = torch.stack([score[r["rejected"]] for r in rows])
    grouped = reward.bradley_terry_loss(chosen, rejected, weights)
    l9, l4 = reward.ranking_loss(s9, nine.ranking), reward.ranking_loss(s4, four.ranking)
    torch.testing.assert_close(grouped, (l9 + l4) / 2)  # each ranking counts once
    # without the weights the ranking of nine would count six times as much
    torch.testing.assert_close(reward.bradley_terry_loss(chosen, rejected), (36 * l9 + 6 * l4) / 42)


def test_pairwise_accuracy_counts_strict_wins_only():
    chosen, rejected = torch.tensor([2.0, 1.0, 0.5, -1.0]), torch.tensor([1.0, 1.0, 0.7, -3.0])
    assert reward.pairwise_accuracy(chosen, rejected).item() == pytest.approx(0.5)
    assert reward.pairwise_accuracy(torch.ones(3), torch.ones(3)).item() == 0.0


# ----------------------------------------------------------------------------------------------
# The exercises: right answers written another way pass, the usual slip is named
# ----------------------------------------------------------------------------------------------


def test_the_exercise_checks_accept_other_right_answers(capsys):
    def bt_softplus(chosen_scores, rejected_scores, weights=None):
        losses = F.softplus(rejected_scores - chosen_scores)  # -log σ(x) = softplus(-x)
        if weights is None:
            weights = torch.ones_like(losses)
        return (weights * losses).sum() / weights.sum()

    def ranking_by_loops(scores, ranking):
        ranking = [int(i) for i in ranking]
        losses = [-F.logsigmoid(scores[a] - scores[b])
                  for n, a in enumerate(ranking) for b in ranking[n + 1 :]]
        return torch.stack(losses).mean()

    def accuracy_by_counting(chosen_scores, rejected_scores):
        return (chosen_scores > rejected_scores).sum() / len(chosen_scores)

    check_bradley_terry_loss(bt_softplus)
    check_ranking_loss(ranking_by_loops)
    check_pairwise_accuracy(accuracy_by_counting)
    assert capsys.readouterr().out.count("✓") == 3


def test_a_loss_written_with_log_sigmoid_by_hand_is_told_to_use_logsigmoid():
    def unstable(chosen_scores, rejected_scores, weights=None):
        losses = -torch.log(1 / (1 + torch.exp(rejected_scores - chosen_scores)))
        return losses.mean() if weights is None else (weights * losses).sum() / weights.sum()

    with pytest.raises(CheckFailed, match="use F.logsigmoid"):
        check_bradley_terry_loss(unstable)


# ----------------------------------------------------------------------------------------------
# Data: split by prompt, grouped by ranking, audited before training
# ----------------------------------------------------------------------------------------------


def test_the_split_is_by_prompt_and_keeps_rankings_whole():
    rankings = load_example_rankings()
    train, heldout = reward.split_by_prompt(rankings, 0.25, seed=0)
    assert len(train) + len(heldout) == 96 * 6
    train_prompts, heldout_prompts = {r["prompt"] for r in train}, {r["prompt"] for r in heldout}
    assert not train_prompts & heldout_prompts
    assert len(heldout_prompts) == 12  # a quarter of the 48 prompts
    assert not {r["group_id"] for r in train} & {r["group_id"] for r in heldout}
    assert reward.split_by_prompt(rankings, 0.25, seed=0) == (train, heldout)
    assert reward.split_by_prompt(rankings, 0.25, seed=1)[1] != heldout
    with pytest.raises(ValueError, match="between 0 and 1"):
        reward.split_by_prompt(rankings, 1.0)


def test_batches_hold_whole_rankings_and_each_pair_once_per_epoch():
    rows = expand_pairs(load_example_rankings()[:20])[0]
    batches = reward.group_batches(rows, 8, torch.Generator().manual_seed(0))
    assert [len({rows[i]["group_id"] for i in b}) for b in batches] == [8, 8, 4]
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))
    assert batches != reward.group_batches(rows, 8, torch.Generator().manual_seed(1))


def test_rows_come_from_rankings_rows_or_an_exported_dataset():
    rankings = load_example_rankings()[:3]
    rows = expand_pairs(rankings)[0]
    assert reward.as_pairs(rankings) == rows
    assert reward.as_pairs(pairs_dataset(rankings)) == rows
    single = reward.as_pairs([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert single == [{"prompt": "p", "chosen": "a", "rejected": "b", "group_id": -1, "weight": 1.0}]
    with pytest.raises(reward.InvalidPair, match="Pair 0, row"):
        reward.as_pairs([{"prompt": "p", "chosen": "a"}])


@pytest.mark.parametrize("row, field", [
    ({"prompt": "Where does Alice live?", "chosen": "  ", "rejected": "No."}, "chosen"),
    ({"prompt": "", "chosen": "Yes.", "rejected": "No."}, "prompt"),
    ({"prompt": "Where does Alice live?", "chosen": "Alice lives in Ashford.",
      "rejected": "Alice lives in Ashford. "}, "rejected"),
    ({"prompt": "Where does Alice live?", "chosen": "Yes.", "rejected": "No.", "weight": 0.0}, "weight"),
])
def test_empty_or_identical_pairs_are_refused_by_name(tokenizer, row, field):
    good = {"prompt": "What is Bruno's job?", "chosen": "Bruno works as a baker.", "rejected": "No."}
    with pytest.raises(reward.InvalidPair) as error:
        reward.audit_pairs([good, row], tokenizer, max_length=64, verbose=False)
    assert error.value.index == 1 and error.value.field == field
    assert str(error.value).startswith(f"Pair 1, {field}: ")


def long_pairs_fixture():
    """Ten pairs; pairs 2 and 7 have a long side (chosen in 2, rejected in 7)."""
    rows = []
    for i in range(10):
        prompt = f"Where does {PEOPLE[i]} live?"
        chosen, rejected = f"{PEOPLE[i]} lives in Ashford.", "I don't know."
        if i == 2:
            chosen = " ".join([chosen] * 12)
        if i == 7:
            rejected = " ".join(["Nobody cares, loser."] * 12)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "group_id": i, "weight": 1.0})
    return rows


def test_the_audit_names_exactly_the_pairs_trl_drops(tiny_base_dir, tokenizer, tmp_path, capsys):
    rows = long_pairs_fixture()
    audit = reward.audit_pairs(rows, tokenizer, max_length=40)
    assert [d["index"] for d in audit.dropped] == [2, 7]
    assert audit.dropped[0]["chosen_tokens"] > 40 >= audit.dropped[0]["rejected_tokens"]
    assert audit.dropped[1]["rejected_tokens"] > 40 >= audit.dropped[1]["chosen_tokens"]
    assert capsys.readouterr().out == ("Pairs: 10 in, 8 kept, 2 dropped as longer than "
                                       "max_length=40 tokens (pairs 2, 7); raise max_length or "
                                       "shorten them.\n")
    # TRL, given every pair, silently keeps the same 8, tokenized exactly as the kit reads them
    config = reward.RewardConfig(max_length=40)
    trainer = reward.make_trl_trainer(fresh_model(tiny_base_dir), tokenizer, rows, config,
                                      str(tmp_path), progress=False)
    kept = trainer.train_dataset
    assert len(kept) == len(audit.kept) == 8
    assert kept["chosen_ids"] == [reward.encode(tokenizer, r["prompt"], r["chosen"]) for r in audit.kept]
    assert kept["rejected_ids"] == [reward.encode(tokenizer, r["prompt"], r["rejected"]) for r in audit.kept]


def test_without_a_chat_template_the_kit_still_reads_what_trl_reads(tiny_base_dir, tokenizer, tmp_path):
    """TRL joins a plain prompt and completion with nothing between; the kit adds a line break
    to the prompt it hands TRL, and reads the same tokens itself."""
    plain = load_tokenizer(tiny_base_dir)
    plain.chat_template = None
    rows = long_pairs_fixture()[:3]
    trainer = reward.make_trl_trainer(fresh_model(tiny_base_dir), plain, rows, reward.RewardConfig(),
                                      str(tmp_path), progress=False)
    ids = reward.encode(plain, rows[0]["prompt"], rows[0]["chosen"])
    assert trainer.train_dataset["chosen_ids"][0] == ids
    assert plain.decode(ids) == "Where does Alice live?\nAlice lives in Ashford.<|endoftext|>"


# ----------------------------------------------------------------------------------------------
# Training: it learns a planted signal, both ways; not noise; same seed, same weights
# ----------------------------------------------------------------------------------------------


def test_a_planted_signal_is_learned_and_every_parameter_moves(tiny_base_dir, tokenizer, planted):
    train, heldout = planted
    model = fresh_model(tiny_base_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    history = reward.train_reward(model, tokenizer, train, TINY_REWARD, eval_pairs=heldout, progress=False)
    report = reward.evaluate_reward(model, tokenizer, heldout)
    assert report.accuracy >= 0.95
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []
    steps = [h for h in history if "loss/train" in h]
    assert {"step", "epoch", "lr", "seconds", "loss/train", "reward/accuracy", "reward/margin"} <= steps[0].keys()
    assert steps[-1]["step"] == 3 * 64 // 8  # epochs x batches of 8 rankings
    assert steps[-1]["loss/train"] < steps[0]["loss/train"]
    assert steps[-1]["reward/margin"] > 0
    assert history[-1]["reward/eval_accuracy"] == pytest.approx(report.accuracy)


def test_shuffled_labels_stay_near_chance(tiny_base_dir, tokenizer, planted):
    train, heldout = (flip_half(rows, seed) for rows, seed in zip(planted, (1, 2)))
    model = fresh_model(tiny_base_dir)
    reward.train_reward(model, tokenizer, train, TINY_REWARD, progress=False)
    assert abs(reward.evaluate_reward(model, tokenizer, heldout).accuracy - 0.5) <= 0.15


def test_trl_learns_the_same_signal_from_the_same_pairs(tiny_base_dir, tokenizer, planted):
    train, heldout = planted
    model = fresh_model(tiny_base_dir)
    history = reward.train_reward_trl(model, tokenizer, train, TINY_REWARD, eval_pairs=heldout,
                                      progress=False)
    assert reward.evaluate_reward(model, tokenizer, heldout).accuracy >= 0.95
    steps = [h for h in history if "loss/train" in h]
    # as many optimiser steps as the grouped loop: batches of 8 rankings' worth of pairs
    assert max(h["step"] for h in history) == 3 * 64 // 8
    assert all(math.isfinite(h["loss/train"]) and 0 <= h["reward/accuracy"] <= 1 for h in steps)
    assert any("reward/eval_accuracy" in h for h in history)


@pytest.mark.parametrize("train", [reward.train_reward, reward.train_reward_trl], ids=["kit", "trl"])
def test_a_nan_at_one_step_stops_training_and_names_the_step(tiny_base_dir, tokenizer, planted, train):
    model = fresh_model(tiny_base_dir)
    calls = []

    def poison(module, inputs, output):  # the third training forward pass returns NaN scores
        if module.training:
            calls.append(1)
            if len(calls) == 3:
                return output * float("nan")
        return output

    model.score.register_forward_hook(poison)
    with pytest.raises(reward.NonFiniteLoss, match=r"became nan at step 3 of \d+"):
        train(model, tokenizer, planted[0], TINY_REWARD, progress=False)


@pytest.mark.parametrize("train", [reward.train_reward, reward.train_reward_trl], ids=["kit", "trl"])
def test_the_same_seed_gives_the_same_weights(tiny_base_dir, tokenizer, planted, train):
    config = reward.RewardConfig(**{**TINY_REWARD.__dict__, "epochs": 1})
    weights = []
    for _ in range(2):
        model = fresh_model(tiny_base_dir, seed=3)
        train(model, tokenizer, planted[0][:64], config, progress=False)
        weights.append(model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_pairs_longer_than_the_context_are_left_out_not_crashed_on(tiny_base_dir, tokenizer, capsys):
    rows = long_pairs_fixture()
    config = reward.RewardConfig(**{**TINY_REWARD.__dict__, "epochs": 1, "max_length": 2048})
    reward.train_reward(fresh_model(tiny_base_dir), tokenizer, rows, config)
    # max_length is capped at the tiny model's context of 64 tokens
    assert "Pairs: 10 in, 8 kept, 2 dropped as longer than max_length=64 tokens (pairs 2, 7)" in \
        capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def test_calibration_bins_compare_confidence_with_frequency():
    # margins: 0.1 right, 0.2 wrong (reversed), 3 right, 3 right; σ(0.1)=0.525, σ(0.2)=0.55, σ(3)=0.953
    chosen = torch.tensor([0.1, 0.0, 3.0, 1.0])
    rejected = torch.tensor([0.0, 0.2, 0.0, -2.0])
    table, error = reward.calibration_bins(chosen, rejected, bins=5)
    assert [row["count"] for row in table] == [2, 0, 0, 0, 2]
    assert table[0]["observed"] == 0.5 and table[4]["observed"] == 1.0
    assert table[0]["predicted"] == pytest.approx((torch.sigmoid(torch.tensor(0.1)).item()
                                                   + torch.sigmoid(torch.tensor(0.2)).item()) / 2)
    s3 = torch.sigmoid(torch.tensor(3.0)).item()
    expected = 0.5 * abs(0.5 - table[0]["predicted"]) + 0.5 * abs(1.0 - s3)
    assert error == pytest.approx(expected)


def test_the_noise_ceiling_follows_the_labelers_noise():
    world = World(seed=0)
    question = world.question_about("Alice", "town")
    true, false = question.reference, world.statement("Alice", "town", "Foxhill" if question.answer != "Foxhill" else "Oakridge")
    rows = [{"prompt": question.text, "chosen": true, "rejected": false, "group_id": 0, "weight": 1.0}]
    gap = 4.0  # +2.5 for the true answer, -2 + 0.5 for the false one
    assert reward.noise_ceiling(rows, SimulatedLabeler(world, noise=0.0)) == 1.0
    assert reward.noise_ceiling(rows, SimulatedLabeler(world, noise=2.0)) == pytest.approx(
        1 / (1 + math.exp(-gap / 2.0)))


def test_evaluate_reward_reports_accuracy_rubric_scores_and_calibration(tiny_base_dir, tokenizer):
    rankings = load_example_rankings()
    _, heldout = reward.split_by_prompt(rankings, 0.25, seed=0)
    heldout = reward.audit_pairs(heldout, tokenizer, 64, verbose=False).kept
    model = fresh_model(tiny_base_dir)
    report = reward.evaluate_reward(model, tokenizer, heldout, SimulatedLabeler(BehaviourWorld(seed=0)))
    assert report.n_pairs == len(heldout) == len(report.chosen_scores) == len(report.rejected_scores)
    assert 0 <= report.accuracy <= 1 and 0 <= report.ideal_accuracy <= 1
    assert 0 < report.n_ideal_pairs <= report.n_pairs
    assert 0.5 < report.ceiling < 1  # the example rankings are noisy (DEFAULT_NOISE)
    assert sum(row["count"] for row in report.calibration) == report.n_pairs
    assert set(report.row()) == {"pairs", "accuracy", "accuracy vs rubric", "noise ceiling",
                                 "calibration error"}
    scores = reward.score(model, tokenizer, [heldout[0]["prompt"]], [heldout[0]["chosen"]])
    assert scores.item() == pytest.approx(report.chosen_scores[0], abs=1e-5)


def test_score_refuses_a_text_longer_than_the_context(tiny_base_dir, tokenizer):
    with pytest.raises(ValueError, match="more than the model's context of 64"):
        reward.score(fresh_model(tiny_base_dir), tokenizer, ["Where does Alice live?"],
                     [" ".join(["Alice lives in Ashford."] * 20)])


# ----------------------------------------------------------------------------------------------
# The stage: sampled completions, simulated rankings, the artifact
# ----------------------------------------------------------------------------------------------


def test_sampled_sets_hold_k_different_completions(tiny_base_dir, tokenizer):
    policy = load_model(tiny_base_dir, device="cpu")  # the tiny base model stands in for SFT
    prompts = ["Where does Alice live?", "What is Bruno's job?", "Where does Alice live?"]
    sets = reward.sample_completions(policy, tokenizer, prompts, k=4, max_new_tokens=8, seed=0)
    assert len(sets) == 3
    for completions in sets:
        assert len(completions) == 4 and len(set(completions)) == 4
        assert all(c.strip() == c and c for c in completions)
    assert sets[0] != sets[2]  # the same prompt twice gets two different draws
    assert sets == reward.sample_completions(policy, tokenizer, prompts, k=4, max_new_tokens=8, seed=0)


def test_simulated_rankings_are_the_labelers_rankings(tiny_base_dir, tokenizer):
    policy = load_model(tiny_base_dir, device="cpu")
    world = BehaviourWorld(seed=0)
    config = reward.RewardConfig(k=3, n_rankings=48, max_new_tokens=8, noise=0.0)
    rankings = reward.simulated_rankings(policy, tokenizer, world, config)
    assert len(rankings) == 48
    train = {t.text for t in world.questions("train")}
    assert all(r.prompt in train for r in rankings)  # never a held-out task
    labeler = SimulatedLabeler(world, noise=0.0)
    for record in rankings[:10]:
        assert (record.ranking, record.ties) == labeler.ideal_ranking(record.prompt, record.completions)
        assert record.model == "sft" and record.labeler_kind == "simulated"


def test_the_labeler_is_calibrated_to_people_s_agreement_unless_told_its_noise(tiny_base_dir, tokenizer):
    world = BehaviourWorld(seed=0)
    config = reward.RewardConfig(k=3, n_rankings=48, max_new_tokens=8)
    items = writer_items(world, k=4)[:200]  # replies the rubric tells apart, as an SFT model's are
    labeler = reward.labeler_for(world, config, items)
    assert labeler.noise == pytest.approx(calibrate_noise(world, items)) and labeler.noise > 0
    assert expected_agreement(score_gaps(world, items), labeler.noise) == pytest.approx(TARGET_AGREEMENT, abs=1e-3)
    assert reward.labeler_for(world, dataclasses.replace(config, noise=0.5), items).noise == 0.5
    # replies the rubric cannot tell apart (an untrained model's noise) cannot be calibrated on
    policy = load_model(tiny_base_dir, device="cpu")
    rankings, untrained = reward.sample_and_rank(policy, tokenizer, world, config)
    assert untrained.noise == DEFAULT_NOISE and len(rankings) == 48


def test_build_reward_saves_a_reward_model_that_loads(tiny_base_dir, tokenizer, tmp_path):
    rankings = load_example_rankings()[:32]
    config = reward.RewardConfig(**{**TINY_REWARD.__dict__, "epochs": 1})
    metadata = reward.build_reward(tmp_path, config, sft=tiny_base_dir, rankings=rankings,
                                   progress=False)
    assert metadata["rankings"] == 32 and metadata["seed"] == 0
    assert metadata["pairs"]["heldout_prompts"] == 8  # a quarter of the 32 prompts
    assert metadata["pairs"]["train"] == metadata["pairs"]["kept"] + len(metadata["pairs"]["dropped"])
    assert math.isfinite(metadata["final_loss"])
    assert 0 <= metadata["heldout"]["accuracy"] <= 1 and metadata["heldout"]["noise ceiling"] > 0.5
    model = load_model(tmp_path, kind="reward", device="cpu")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    assert load_tokenizer(tmp_path).chat_template == tokenizer.chat_template


def test_ensure_stage_builds_a_missing_sft_model_first(tiny_base_dir, tmp_path, monkeypatch, capsys):
    """The reward stage asks for the SFT stage; here a copy of the tiny base model stands in."""
    monkeypatch.setenv("RLHF_KIT_HOME", str(tmp_path))

    def copy_tiny(out_dir, config=None, *, base, progress=True):
        shutil.copytree(tiny_base_dir, out_dir, dirs_exist_ok=True)
        return {"seed": 0}

    monkeypatch.setitem(stages.STAGES, "sft", dataclasses.replace(stages.STAGES["sft"], build=copy_tiny))
    monkeypatch.setattr(reward, "RewardConfig", functools.partial(
        reward.RewardConfig, **{**TINY_REWARD.__dict__, "k": 2, "epochs": 1}))
    path = stages.ensure_stage("reward")
    out = capsys.readouterr().out  # what a stage needs is built first
    assert out.index("'sft' model is not built") < out.index("'reward' model is not built")
    assert artifacts.is_ready("sft") and artifacts.is_ready("reward")
    metadata = artifacts.read_metadata(path)
    assert metadata["source"] == str(artifacts.stage_dir("sft")) and metadata["rankings"] == 48
    assert load_model(path, kind="reward", device="cpu").config.num_labels == 1


def test_read_rankings_reads_a_copy_and_leaves_the_store_untouched(tmp_path):
    world = World(seed=0)
    path = tmp_path / "rankings.sqlite"
    assert reward.read_rankings(path) == [] and not path.exists()  # no store is created
    store = RankingStore(path)
    SimulatedLabeler(world, seed=0).label(store, template_items(world, k=3)[:4])
    mine = Ranking("Where does Alice live?", ("Alice lives in Foxhill.", "I don't know."), (0, 1), (),
                   model="sft", labeler="you", labeler_kind="person")
    store.add(mine)  # still open, as while a widget is in use: the newest rows may be in the log only
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert [r.key for r in reward.read_rankings(path, model="sft")] == [mine.key]
    assert reward.read_rankings(path, model="templates") == []
    assert len(reward.read_rankings(path, labeler_kind=None)) == 5
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    store.close()


def test_accuracy_by_pair_kind_splits_pairs_by_what_differs_and_by_well_formed_replies(monkeypatch):
    from rlhf_kit import reward_eval
    from rlhf_kit.behaviours import ADMIT, BehaviourWorld

    world = BehaviourWorld(seed=0)
    fact = next(t for t in world.questions("heldout") if t.kind == "fact")
    unknown = next(t for t in world.questions("heldout") if t.kind == "unknown")
    true = world.statement(fact.person, fact.relation)
    replies = {fact: [f"Sure! {true}", f"Fine. {true}", f"Sure! {fact.person} lives in Nowhere."],
               unknown: [f"Sorry, {ADMIT}", f"Sure! {unknown.person} lives in Foxhill.", "Nure! I don't kn"]}
    tasks = [t for t, rs in replies.items() for _ in rs]
    texts = [r for rs in replies.values() for r in rs]
    rubric = [world.judge(t, r).score for t, r in zip(tasks, texts)]

    def rows(scores, pairs_of="all"):
        monkeypatch.setattr(reward_eval, "score", lambda *_: torch.tensor(scores))
        found = reward_eval.accuracy_by_pair_kind(None, None, world, tasks, texts, pairs_of)
        return {row["pairs"]: row for row in found}

    agrees, reversed_ = rows(rubric), rows([-s for s in rubric])
    assert agrees["behaviour only"]["count"] == 2  # "Sure!" or "Fine." on one fact; admitting or a garble
    assert agrees["behaviour only"]["accuracy"] == 1.0 and reversed_["behaviour only"]["accuracy"] == 0.0
    counted = sum(row["count"] for row in agrees.values() if row["pairs"] in reward_eval.PAIR_KINDS)
    assert counted == 6  # every pair of the 3 + 3 replies differs by the rubric
    kept = {which: sum(row["count"] for name, row in rows(rubric, which).items() if name in reward_eval.PAIR_KINDS)
            for which in ("well-formed", "garbled")}
    assert kept == {"well-formed": 2, "garbled": 4}  # "Nowhere" is no town and "Nure!" no opener
    with pytest.raises(ValueError, match="pairs_of must be one of"):
        rows(rubric, "clean")
