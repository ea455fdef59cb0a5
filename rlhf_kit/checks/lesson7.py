"""Lesson 7 (let's chat, and what came after PPO): the checks of ``dpo_loss``, ``group_advantages``
(GRPO) and ``best_of_n``, against ``rlhf_kit.alternatives`` and ``rlhf_kit.compare``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .framework import Exercise, Inputs, Mistake


# References: ``rlhf_kit.alternatives.dpo_loss`` and ``group_advantages``, and
# ``rlhf_kit.compare.best_of_n_indices``. Log-probabilities of whole replies are sums over tokens,
# tens of nats below zero; the policy's differ from the reference's by a few nats, in both
# directions, so a forgotten reference or a swapped pair shows. Edge cases: a policy equal to
# its reference (the loss is ln 2), a margin of -400 nats (σ underflows to 0 in float32), a
# group whose replies all scored the same (its standard deviation is 0), ties for the best score.


def _l07_batch(generator: torch.Generator) -> int:
    return int(torch.randint(1, 17, (), generator=generator))


def _draw_dpo(generator: torch.Generator) -> Inputs:
    b = _l07_batch(generator)
    ref_chosen = -(5 + 55 * torch.rand(b, generator=generator))
    ref_rejected = -(5 + 55 * torch.rand(b, generator=generator))
    beta = [0.05, 0.1, 0.5, 1.0][int(torch.randint(0, 4, (), generator=generator))]
    return {"policy_chosen_logps": ref_chosen + 3 * torch.randn(b, generator=generator),
            "policy_rejected_logps": ref_rejected + 3 * torch.randn(b, generator=generator),
            "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected, "beta": beta}


def _dpo_edges() -> list[Inputs]:
    same = torch.tensor([-12.0, -30.5, -7.25])
    return [
        # the policy is still its reference: every implicit reward is 0, the loss is ln 2
        {"policy_chosen_logps": same, "policy_rejected_logps": same - 4, "ref_chosen_logps": same,
         "ref_rejected_logps": same - 4, "beta": 0.1},
        # the policy made the rejected reply 400 nats likelier: σ(-40) and σ(-400) underflow
        {"policy_chosen_logps": torch.tensor([-50.0, -20.0]),
         "policy_rejected_logps": torch.tensor([-10.0, 0.0]),
         "ref_chosen_logps": torch.tensor([-50.0, -20.0]),
         "ref_rejected_logps": torch.tensor([-410.0, -400.0]),
         "beta": 1.0},
        # one pair
        {"policy_chosen_logps": torch.tensor([-3.0]), "policy_rejected_logps": torch.tensor([-9.0]),
         "ref_chosen_logps": torch.tensor([-4.0]), "ref_rejected_logps": torch.tensor([-8.0]), "beta": 0.5},
    ]


def _dpo_margin(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def _dpo_no_beta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -F.logsigmoid(_dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                     ref_rejected_logps)).mean()


def _dpo_no_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)).mean()


def _dpo_swapped(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -F.logsigmoid(-beta * _dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                             ref_rejected_logps)).mean()


def _dpo_beta_outside(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -beta * F.logsigmoid(_dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                            ref_rejected_logps)).mean()


def _dpo_sum(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -F.logsigmoid(beta * _dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                            ref_rejected_logps)).sum()


def _dpo_unstable(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -torch.log(torch.sigmoid(beta * _dpo_margin(policy_chosen_logps, policy_rejected_logps,
                                                       ref_chosen_logps, ref_rejected_logps))).mean()


DPO_LOSS = Exercise(
    name="dpo_loss",
    reference="rlhf_kit.alternatives:dpo_loss",
    grad_inputs=("policy_chosen_logps", "policy_rejected_logps"),
    draw=_draw_dpo,
    edge_cases=_dpo_edges,
    mistakes=(
        Mistake("dpo_loss leaves out beta: the implicit reward is beta times the log-ratio, "
                "beta * (policy_logps - ref_logps), and beta sets how far the policy may move.",
                _dpo_no_beta),
        Mistake("dpo_loss puts beta outside the log-sigmoid: multiply the margin by beta first, "
                "-logsigmoid(beta * margin), since beta scales the implicit reward.",
                _dpo_beta_outside),
        Mistake("dpo_loss ignores the reference model: each implicit reward is a log-ratio, "
                "policy_logps - ref_logps, not the policy's log-probability alone.",
                _dpo_no_reference),
        Mistake("dpo_loss rewards the rejected reply: the margin is the chosen reply's log-ratio "
                "minus the rejected reply's, each log-ratio being policy minus reference.",
                _dpo_swapped),
        Mistake("dpo_loss adds up the pair losses: average them, so the loss does not grow with "
                "the batch.",
                _dpo_sum),
        Mistake("dpo_loss overflows when the policy prefers the rejected reply by far: σ(-400) is "
                "0 in float32 and log(0) is -inf; use F.logsigmoid.",
                _dpo_unstable),
    ),
)


def check_dpo_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    beta)`` against ``rlhf_kit.alternatives.dpo_loss``."""
    __tracebackhide__ = True
    DPO_LOSS.check(fn)


def _draw_groups(generator: torch.Generator) -> Inputs:
    size = int(torch.randint(2, 9, (), generator=generator))
    prompts = int(torch.randint(2, 7, (), generator=generator))
    offsets = 3 * torch.randn(prompts, generator=generator)  # prompts differ in how well they can score
    scores = (offsets.repeat_interleave(size) + torch.randn(prompts * size, generator=generator))
    return {"scores": scores, "group_size": size}


def _group_edges() -> list[Inputs]:
    return [
        # the second prompt's replies all scored the same: no reply is better than its group
        {"scores": torch.tensor([1.0, 2.0, 4.0, 0.5, 0.5, 0.5]), "group_size": 3},
        # one prompt, two replies
        {"scores": torch.tensor([-1.0, 1.0]), "group_size": 2},
        # groups on very different scales
        {"scores": torch.tensor([100.0, 101.0, 99.0, 100.0, 0.01, 0.02, 0.0, 0.03]), "group_size": 4},
    ]


def _groups_of(scores, group_size):
    return scores.view(-1, group_size)


def _group_batch(scores, group_size):
    return (scores - scores.mean()) / (scores.std() + 1e-4)


def _group_no_scale(scores, group_size):
    groups = _groups_of(scores, group_size)
    return (groups - groups.mean(dim=1, keepdim=True)).reshape(-1)


def _group_biased_std(scores, group_size):
    groups = _groups_of(scores, group_size)
    return ((groups - groups.mean(dim=1, keepdim=True))
            / (groups.std(dim=1, unbiased=False, keepdim=True) + 1e-4)).reshape(-1)


def _group_no_eps(scores, group_size):
    groups = _groups_of(scores, group_size)
    return ((groups - groups.mean(dim=1, keepdim=True)) / groups.std(dim=1, keepdim=True)).reshape(-1)


def _group_strided(scores, group_size):
    groups = scores.view(group_size, -1)  # reply j of every prompt together: the wrong groups
    return ((groups - groups.mean(dim=0, keepdim=True))
            / (groups.std(dim=0, keepdim=True) + 1e-4)).reshape(-1)


def _group_variance(scores, group_size):
    groups = _groups_of(scores, group_size)
    return ((groups - groups.mean(dim=1, keepdim=True))
            / (groups.var(dim=1, keepdim=True) + 1e-4)).reshape(-1)


GROUP_ADVANTAGES = Exercise(
    name="group_advantages",
    reference="rlhf_kit.alternatives:group_advantages",
    draw=_draw_groups,
    edge_cases=_group_edges,
    mistakes=(
        Mistake("group_advantages normalises over the whole batch: compare each reply with the "
                "other replies to its own prompt, scores.view(-1, group_size), mean and std per row.",
                _group_batch),
        Mistake("group_advantages groups the wrong replies: the replies to one prompt are "
                "consecutive, so the groups are the rows of scores.view(-1, group_size).",
                _group_strided),
        Mistake("group_advantages does not divide by the group's standard deviation: GRPO scales "
                "(score - group mean) by 1 / (group std + 1e-4).",
                _group_no_scale),
        Mistake("group_advantages divides by the variance: divide by the standard deviation, so "
                "the advantages of a group have unit spread.",
                _group_variance),
        Mistake("group_advantages divides by zero when a group's replies all scored the same: add "
                "1e-4 to the standard deviation, so those advantages are 0, not NaN.",
                _group_no_eps),
        Mistake("group_advantages uses the population standard deviation: use torch's default, "
                "std(dim=1), which divides by group_size - 1, as TRL does.",
                _group_biased_std),
    ),
)


def check_group_advantages(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(scores, group_size)`` against ``rlhf_kit.alternatives.group_advantages``."""
    __tracebackhide__ = True
    GROUP_ADVANTAGES.check(fn)


def _draw_best_of_n(generator: torch.Generator) -> Inputs:
    n = int(torch.randint(2, 9, (), generator=generator))
    prompts = int(torch.randint(2, 7, (), generator=generator))
    return {"scores": torch.randn(prompts * n, generator=generator) * 2, "n": n}


def _best_of_n_edges() -> list[Inputs]:
    return [
        # ties for the best score: the first of them is kept
        {"scores": torch.tensor([1.0, 3.0, 3.0, -1.0, 0.0, 0.0]), "n": 3},
        # one reply per prompt: nothing to choose
        {"scores": torch.tensor([0.5, -2.0, 1.0]), "n": 1},
        # one prompt
        {"scores": torch.tensor([-3.0, -1.0, -2.0, -5.0]), "n": 4},
    ]


def _best_worst(scores, n):
    return scores.view(-1, n).argmin(dim=1) + n * torch.arange(scores.numel() // n)


def _best_in_group(scores, n):
    return scores.view(-1, n).argmax(dim=1)


def _best_strided(scores, n):
    groups = scores.view(n, -1)  # reply j of every prompt together: the wrong groups
    return groups.argmax(dim=0) * groups.shape[1] + torch.arange(groups.shape[1])


def _best_scores(scores, n):
    return scores.view(-1, n).max(dim=1).values


BEST_OF_N = Exercise(
    name="best_of_n",
    reference="rlhf_kit.compare:best_of_n_indices",
    draw=_draw_best_of_n,
    edge_cases=_best_of_n_edges,
    mistakes=(
        Mistake("best_of_n keeps the worst reply: the reward model's highest score is the best, "
                "so use argmax.",
                _best_worst),
        Mistake("best_of_n returns each reply's place within its group: add n times the prompt's "
                "number, so each index points into the flat list of replies.",
                _best_in_group),
        Mistake("best_of_n groups the wrong replies: the n replies to one prompt are consecutive, "
                "so the groups are the rows of scores.view(-1, n).",
                _best_strided),
        Mistake("best_of_n returns the best scores: return their indices into the flat list "
                "(argmax, not max).",
                _best_scores),
    ),
)


def check_best_of_n(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(scores, n)`` against ``rlhf_kit.compare.best_of_n_indices``."""
    __tracebackhide__ = True
    BEST_OF_N.check(fn)


LESSON_EXERCISES = (DPO_LOSS, GROUP_ADVANTAGES, BEST_OF_N)
"""This lesson's exercises, in the order its notebook asks for them."""
