"""Learning from rewards: the small functions by hand, and the learners on planted problems.

Every run here is a few hundred steps on tensors of a few thousand numbers: the whole file takes
a few seconds on one CPU thread.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_kit import bandits as B


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: on a busy 2-core machine a second thread makes every op ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


PLANTED = torch.tensor([0.0, 0.3, 1.0, -0.5, 0.2])  # arm 2 is the best, by 0.7


def planted_rewards(a, g):
    return B.pull(PLANTED, a, g)


# ----------------------------------------------------------------------------------------------
# The small functions, checked by hand
# ----------------------------------------------------------------------------------------------


def test_sample_average_update_is_the_running_mean():
    rewards = [4.0, 2.0, 6.0, -1.0]
    estimate = torch.tensor(10.0)  # the initial guess is forgotten at the first reward
    for n, r in enumerate(rewards, 1):
        estimate = B.sample_average_update(estimate, torch.tensor(float(n)), torch.tensor(r))
        assert estimate.item() == pytest.approx(sum(rewards[:n]) / n)


def test_greedy_breaks_ties_at_random_and_epsilon_explores():
    estimates = torch.tensor([[0.0, 1.0, 1.0, 0.5]]).expand(4000, -1)
    picked = B.greedy(estimates, gen())
    assert set(picked.tolist()) == {1, 2}
    assert abs((picked == 1).float().mean().item() - 0.5) < 0.05
    explored = B.epsilon_greedy(estimates, 0.2, gen())
    # 80 % greedy (arm 1 or 2), 20 % uniform over 4 arms: arm 0 gets 5 %
    assert abs((explored == 0).float().mean().item() - 0.05) < 0.015
    with pytest.raises(ValueError, match="between 0 and 1"):
        B.epsilon_greedy(estimates, 1.5, gen())


def test_sampled_actions_follow_the_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    actions = B.sample_actions(logits.expand(50_000, -1), gen())
    share = torch.bincount(actions, minlength=4).float() / 50_000
    torch.testing.assert_close(share, torch.softmax(logits, -1), atol=0.01, rtol=0)


def test_log_policy_gradient_is_autograds_gradient_of_log_pi():
    logits = torch.randn(6, 5, generator=gen(1), requires_grad=True)
    actions = torch.tensor([0, 4, 2, 2, 1, 3])
    taken = torch.log_softmax(logits, -1).gather(-1, actions[:, None]).sum()
    (expected,) = torch.autograd.grad(taken, logits)
    torch.testing.assert_close(B.log_policy_gradient(logits.detach(), actions), expected)
    # by hand, for one row: onehot(a) - pi
    probs = torch.softmax(torch.tensor([0.0, math.log(3.0)]), -1)  # (1/4, 3/4)
    torch.testing.assert_close(B.log_policy_gradient(torch.tensor([[0.0, math.log(3.0)]]),
                                                     torch.tensor([0])),
                               torch.tensor([[1 - probs[0], -probs[1]]]))


def test_reinforce_loss_gradient_is_the_policy_gradient_step():
    logits = torch.randn(8, 4, generator=gen(2), requires_grad=True)
    actions = torch.randint(4, (8,), generator=gen(3))
    rewards = torch.randn(8, generator=gen(4)) + 3
    loss = B.reinforce_loss(logits, actions, rewards, baseline=3.0)
    assert loss.dim() == 0
    (gradient,) = torch.autograd.grad(loss, logits)
    step = (rewards - 3.0)[:, None] * B.log_policy_gradient(logits.detach(), actions) / 8
    torch.testing.assert_close(-gradient, step)  # gradient descent on the loss = the REINFORCE step


def test_preference_probability_by_hand_and_far_apart():
    a, b = torch.tensor([0.0, 1.0, 100.0, -100.0]), torch.tensor([0.0, 0.0, 90.0, 100.0])
    p = B.preference_probability(a, b)
    torch.testing.assert_close(p, torch.tensor([0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-10)), 0.0]))
    torch.testing.assert_close(p + B.preference_probability(b, a), torch.ones(4))


def test_order_agreement():
    truth = torch.tensor([2.0, 0.0, 0.0, -1.0])  # one tied pair, left out
    assert B.order_agreement(truth * 3 + 1, truth) == 1.0
    assert B.order_agreement(-truth, truth) == 0.0
    # only pair (0, 2) is ordered the other way: 4 of the 5 untied pairs agree
    assert B.order_agreement(torch.tensor([2.0, 0.0, 5.0, -1.0]), truth) == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="no order"):
        B.order_agreement(truth, torch.zeros(4))


# ----------------------------------------------------------------------------------------------
# The learners, on planted bandits
# ----------------------------------------------------------------------------------------------


def test_epsilon_greedy_finds_the_planted_arm():
    history, estimates = B.run_epsilon_greedy(planted_rewards, 300, 5, 400, 0.1, gen(),
                                              true_values=PLANTED)
    assert history[-1]["step"] == 400 and set(history[0]) == {"step", "reward", "true reward", "optimal"}
    late = sum(h["optimal"] for h in history[-50:]) / 50
    assert late > 0.8  # at most 10 % explore, and a few runs stuck on arm 1
    assert (estimates.argmax(-1) == 2).float().mean() > 0.8
    # the estimate of the best arm is its sample average: close to the true mean
    assert abs(estimates[:, 2][estimates.argmax(-1) == 2].mean().item() - 1.0) < 0.1


def test_reinforce_picks_the_best_arm_of_a_planted_bandit():
    history, logits = B.run_reinforce(planted_rewards, 300, 5, 500, 0.2, gen(), true_values=PLANTED)
    policy = torch.softmax(logits, -1)
    assert (policy.argmax(-1) == 2).float().mean() > 0.9
    assert sum(h["optimal"] for h in history[-50:]) / 50 > 0.9
    assert history[0]["optimal"] == pytest.approx(0.2, abs=0.1)  # it starts uniform
    assert sum(h["true reward"] for h in history[-50:]) / 50 > 0.9


def test_reinforce_learns_from_a_deterministic_reward_of_words():
    """Rewards that never vary (a rubric's score per reply): it settles on the best reply."""
    scores = torch.tensor([2.5, -1.5, -2.0, 1.1, 0.0, 0.0])
    history, _ = B.run_reinforce(lambda a, g: scores[a], 100, 6, 300, 0.1, gen(),
                                 true_values=scores, record_policy=True)
    assert history[-1]["policy"][0] > 0.9 and len(history[-1]["policy"]) == 6
    assert history[0]["policy"] == pytest.approx([1 / 6] * 6)


def test_a_non_finite_reward_stops_reinforce_with_a_sentence():
    with pytest.raises(ValueError, match="non-finite reward at step 1"):
        B.run_reinforce(lambda a, g: torch.full(a.shape, float("nan")), 2, 3, 5, 0.1, gen())


def test_same_seed_same_curve_other_seed_other_curve():
    def curve(seed):
        history, _ = B.run_reinforce(planted_rewards, 50, 5, 60, 0.2, gen(seed), true_values=PLANTED)
        return [h["reward"] for h in history]

    def greedy_curve(seed):
        history, _ = B.run_epsilon_greedy(planted_rewards, 50, 5, 60, 0.1, gen(seed))
        return [h["reward"] for h in history]

    assert curve(7) == curve(7) and curve(7) != curve(8)
    assert greedy_curve(7) == greedy_curve(7) and greedy_curve(7) != greedy_curve(8)


# ----------------------------------------------------------------------------------------------
# The baseline
# ----------------------------------------------------------------------------------------------


def test_the_baseline_reduces_the_measured_gradient_variance_and_keeps_its_mean():
    means = PLANTED + 4.0  # large positive rewards: the case a baseline is for
    logits = torch.tensor([0.5, 0.0, -0.5, 0.2, 0.0])

    def rewards(a, g):
        return B.pull(means, a, g)

    without = B.policy_gradient_estimates(logits, rewards, 20_000, 0.0, gen(1))
    expected = (torch.softmax(logits, -1) * means).sum().item()
    with_ = B.policy_gradient_estimates(logits, rewards, 20_000, expected, gen(1))
    assert B.total_variance(with_) < B.total_variance(without) / 5
    # unbiased: both means estimate the exact gradient of the expected reward, pi * (means - E r)
    probs = torch.softmax(logits, -1)
    exact = probs * (means - expected)
    torch.testing.assert_close(with_.mean(0), exact, atol=0.02, rtol=0)
    torch.testing.assert_close(without.mean(0), exact, atol=0.1, rtol=0)


def test_the_baseline_learns_faster_when_rewards_are_offset():
    means = B.make_testbed(300, 10, gen(0), offset=4.0)

    def optimal_late(baseline):
        history, _ = B.run_reinforce(lambda a, g: B.pull(means, a, g), 300, 10, 300, 0.1, gen(1),
                                     baseline=baseline, true_values=means)
        return sum(h["optimal"] for h in history[-50:]) / 50

    assert optimal_late(True) > optimal_late(False) + 0.15


# ----------------------------------------------------------------------------------------------
# Rewards learned from comparisons
# ----------------------------------------------------------------------------------------------


def test_bradley_terry_recovers_the_arm_ordering_from_noisy_comparisons():
    true_scores = torch.tensor([1.5, -0.5, 0.0, 2.5, -1.5, 0.8])
    first, second = B.sample_pairs(torch.zeros(6), 600, gen(0))
    assert (first != second).all()
    winners, losers = B.judge_pairs(first, second, B.noisy_judge(true_scores, gen(1)))
    assert len(winners) == 600
    # the better arm wins most of its comparisons, not all (the judge is noisy)
    better = true_scores[winners] > true_scores[losers]
    assert 0.65 < better.float().mean() < 0.95
    scores = B.fit_bradley_terry(6, winners, losers)
    assert B.order_agreement(scores, true_scores) == 1.0
    assert abs(scores.mean().item()) < 1e-5
    # with the judge's noise scale of 1 the learned scores estimate the true ones up to a constant
    torch.testing.assert_close(scores, true_scores - true_scores.mean(), atol=0.5, rtol=0)


def test_bradley_terry_with_a_perfect_winner_stays_finite():
    winners, losers = torch.tensor([0, 0, 0, 1]), torch.tensor([1, 2, 1, 2])
    scores = B.fit_bradley_terry(3, winners, losers)
    assert torch.isfinite(scores).all() and scores[0] > scores[1] > scores[2]
    with pytest.raises(ValueError, match="no comparisons"):
        B.fit_bradley_terry(3, torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))


def test_judge_pairs_drops_ties_and_keeps_the_winner_first():
    first, second = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    verdicts = iter([1, None, 0])
    winners, losers = B.judge_pairs(first, second, lambda a, b: next(verdicts))
    assert winners.tolist() == [1, 2] and losers.tolist() == [0, 0]


def test_a_policy_with_one_action_cannot_make_two_attempts():
    with pytest.raises(ValueError, match="two different attempts"):
        B.sample_pairs(torch.tensor([0.0, float("-inf")]), 3, gen())


def test_policy_gradient_on_the_learned_reward_finds_the_best_arm():
    """The RLHF loop in miniature: compare, fit Bradley-Terry, then REINFORCE on the fit."""
    true_scores = torch.tensor([0.0, 2.0, -1.0, 1.0])
    first, second = B.sample_pairs(torch.zeros(4), 300, gen(2))
    winners, losers = B.judge_pairs(first, second, B.noisy_judge(true_scores, gen(3)))
    learned = B.fit_bradley_terry(4, winners, losers)
    history, logits = B.run_reinforce(lambda a, g: learned[a], 100, 4, 300, 0.2, gen(4),
                                      true_values=true_scores)
    assert (logits.argmax(-1) == 1).float().mean() > 0.9
    assert history[-1]["true reward"] > 1.8


def test_the_written_out_bradley_terry_gradient_is_autograds():
    """fit_bradley_terry steps along a hand-written gradient: one step from given scores equals a
    step of gradient descent on bradley_terry_nll + l2 * mean(s^2) computed by autograd."""
    winners, losers = torch.tensor([0, 2, 1, 0, 3]), torch.tensor([1, 1, 3, 2, 0])
    one_step = B.fit_bradley_terry(4, winners, losers, steps=1, lr=0.3, l2=0.1)
    scores = torch.zeros(4, requires_grad=True)
    loss = B.bradley_terry_nll(scores, winners, losers) + 0.1 * scores.pow(2).mean()
    (gradient,) = torch.autograd.grad(loss, scores)
    expected = -0.3 * gradient
    torch.testing.assert_close(one_step, expected - expected.mean())
    # and at the end of a fit the gradient of the (regularised) loss is zero
    fitted = B.fit_bradley_terry(4, winners, losers, steps=2000, l2=0.1).requires_grad_(True)
    loss = B.bradley_terry_nll(fitted, winners, losers) + 0.1 * fitted.pow(2).mean()
    (gradient,) = torch.autograd.grad(loss, fitted)
    assert gradient.abs().max() < 1e-4
