"""Learning from rewards: bandits, policy gradient, and a reward learned from comparisons.

Pretraining (lesson 1) and SFT (lesson 3) learn by imitation: every example shows the right next
token. PPO (lesson 6) gets something poorer, a single number saying how good a whole reply was.
This module is reinforcement learning at its smallest, where that idea can be watched in a second,
taught in lesson 2, before the stages that use it.

An *agent* repeatedly picks one of K *actions* (the arms of a slot machine, or K possible
replies); each pick earns a noisy *reward*; nobody tells it which action was right. This is the
K-armed bandit of Sutton & Barto (2018, chapter 2). Two ways to learn:

* **value estimates**: keep the average reward of each arm, updated after every pull as
  ``Q ← Q + (r − Q) / n``, and play ε-greedy: the best-looking arm, or with probability ε a
  random one, so that the other arms keep being tried;
* **policy gradient** (REINFORCE, Williams 1992): keep a softmax policy π = softmax(θ) over the
  arms and push up the log-probability of each action by how much better than usual it did,

      θ ← θ + α · (r − b) · ∇θ log π(a),        ∇θ log π(a) = onehot(a) − π,

  where the *baseline* b (here the average reward so far) leaves the expected gradient as it is
  and makes each estimate far less noisy. As a loss for autograd: −(r − b) · log π(a).

Then the RLHF twist (Christiano et al., 2017; Ouyang et al., 2022): there is no reward function,
only a judge who looks at two attempts and says which is better. Under the Bradley–Terry model
the judge prefers a to b with probability

      P(a beats b) = σ(s_a − s_b),

so the scores s can be *learned* from comparisons (``fit_bradley_terry``: a reward model with one
number per action) and then used as the reward for the policy gradient. Lesson 5 learns s with a
network that reads text; lesson 6 runs the policy gradient on a language model, with PPO.

Everything works on R independent runs at once: a tensor's first dimension is the run, so one
call learns 1,000 bandits and the learning curves are averages over them. All randomness comes
from the ``torch.Generator`` passed in, so the same seed gives the same curves.
Taught in ``course/02_learning_from_rewards.ipynb``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

RewardFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""``reward_fn(actions, generator) -> rewards``: actions (R,) of arm indices, rewards (R,)."""

Judge = Callable[[int, int], "int | None"]
"""``judge(a, b) -> 0 or 1``: which of two attempts (arm indices) is better; None for no verdict."""


# ----------------------------------------------------------------------------------------------
# 1. Bandits
# ----------------------------------------------------------------------------------------------


def make_testbed(n_runs: int, n_arms: int = 10, generator: torch.Generator | None = None,
                 offset: float = 0.0) -> torch.Tensor:
    """The true mean reward of every arm of ``n_runs`` bandits, (R, K), each drawn from N(offset, 1).

    Sutton & Barto's 10-armed testbed; ``offset=4`` makes every reward large and positive, where a
    policy gradient without a baseline struggles (their figure 2.5).
    """
    return offset + torch.randn(n_runs, n_arms, generator=generator)


def expected_rewards(means: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The mean reward of the arms taken: means (K,) shared by every run, or (R, K); actions (R,)."""
    if means.dim() == 1:
        return means[actions]
    return means.gather(1, actions[:, None]).squeeze(1)  # (R,)


def pull(means: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None,
         noise: float = 1.0) -> torch.Tensor:
    """Pull ``actions`` (R,): each reward is its arm's mean plus N(0, noise²) noise, (R,)."""
    mean = expected_rewards(means, actions)
    return mean + noise * torch.randn(mean.shape, generator=generator)


# ----------------------------------------------------------------------------------------------
# 2. Value estimates: sample averages and ε-greedy
# ----------------------------------------------------------------------------------------------


def sample_average_update(estimate: torch.Tensor, count: torch.Tensor,
                          reward: torch.Tensor) -> torch.Tensor:
    """The running average after one more reward: Q_n = Q_{n-1} + (r_n − Q_{n-1}) / n.

    ``count`` is n, the number of rewards *including* this one, so the first reward (n = 1)
    replaces the initial estimate. Elementwise, any shape; returns a new tensor. Moving the
    estimate 1/n of the way towards the new reward is the same as averaging all n rewards,
    without storing them.
    """
    return estimate + (reward - estimate) / count


def greedy(estimates: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The arm with the highest estimate in each row of (R, K), ties broken at random: (R,)."""
    best = estimates == estimates.max(dim=-1, keepdim=True).values  # (R, K): every arm at the top
    lottery = torch.rand(estimates.shape, generator=generator)  # a random number for each arm
    return torch.where(best, lottery, -1.0).argmax(dim=-1)  # the top arm with the highest draw


def epsilon_greedy(estimates: torch.Tensor, epsilon: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy actions, except that with probability ``epsilon`` a run picks an arm at random: (R,)."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon is a probability, between 0 and 1, not {epsilon}.")
    n_runs, n_arms = estimates.shape
    explore = torch.rand(n_runs, generator=generator) < epsilon  # (R,)
    random_arms = torch.randint(n_arms, (n_runs,), generator=generator)
    return torch.where(explore, random_arms, greedy(estimates, generator))


def _record(step: int, actions: torch.Tensor, rewards: torch.Tensor,
            true_values: torch.Tensor | None, probs: torch.Tensor | None = None) -> dict:
    """One history entry: rewards averaged over the runs, and what a bystander who knows the
    true values sees (the expected reward of the actions, the share of runs on a best arm)."""
    row = {"step": step, "reward": rewards.mean().item()}
    if true_values is not None:
        row["true reward"] = expected_rewards(true_values, actions).mean().item()
        is_best = true_values == true_values.max(dim=-1, keepdim=True).values  # (K,) or (R, K)
        row["optimal"] = expected_rewards(is_best.float(), actions).mean().item()
    if probs is not None:
        row["policy"] = probs.mean(dim=0).tolist()  # (K,): the average policy over the runs
    return row


def run_epsilon_greedy(reward_fn: RewardFn, n_runs: int, n_arms: int, steps: int, epsilon: float,
                       generator: torch.Generator, true_values: torch.Tensor | None = None,
                       ) -> tuple[list[dict], torch.Tensor]:
    """Learn ``n_runs`` bandits at once with sample averages and ε-greedy actions.

    Each step: (1) pick ε-greedy actions, (2) get rewards, (3) update the picked arms' averages.
    Returns the history (one dict per step: ``reward``, and with ``true_values`` (K,) or (R, K)
    also ``true reward`` and ``optimal``) and the final estimates, (R, K).
    """
    estimates = torch.zeros(n_runs, n_arms)  # Q: the average reward of each arm so far
    counts = torch.zeros(n_runs, n_arms)  # n: how often each arm was pulled
    runs = torch.arange(n_runs)
    history = []
    for step in range(1, steps + 1):
        actions = epsilon_greedy(estimates, epsilon, generator)  # (1)
        rewards = reward_fn(actions, generator)  # (2)
        counts[runs, actions] += 1  # (3)
        estimates[runs, actions] = sample_average_update(estimates[runs, actions],
                                                         counts[runs, actions], rewards)
        history.append(_record(step, actions, rewards, true_values))
    return history, estimates


# ----------------------------------------------------------------------------------------------
# 3. Policy gradient: REINFORCE with a softmax policy
# ----------------------------------------------------------------------------------------------


def sample_actions(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One action per row of logits (R, K), drawn from softmax(logits): (R,).

    Inverse-CDF sampling: the first arm whose cumulative probability exceeds a uniform number u
    (the same distribution as ``torch.multinomial``, and faster for many small rows).
    """
    cumulative = torch.softmax(logits, dim=-1).cumsum(dim=-1)  # (R, K), ends at 1
    u = torch.rand(logits.shape[:-1] + (1,), generator=generator)  # (R, 1)
    return (cumulative <= u).sum(dim=-1).clamp(max=logits.shape[-1] - 1)  # clamp: rounding at 1


def log_policy_gradient(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """∇ of log π(a) = log softmax(logits)[a] with respect to the logits: onehot(a) − π, (R, K).

    Taking a raises its own logit and lowers every logit in proportion to its probability; the
    components add up to 0, so the logits only move relative to each other.
    """
    probs = torch.softmax(logits, dim=-1)  # (R, K)
    return F.one_hot(actions, logits.shape[-1]).to(probs.dtype) - probs


def reinforce_loss(logits: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                   baseline: float | torch.Tensor = 0.0) -> torch.Tensor:
    """The REINFORCE loss −mean((r − b) · log π(a)), whose gradient is the policy gradient.

    logits (R, K); actions, rewards (R,); baseline a number or (R,). Returns a 0-dim tensor.
    The advantage r − b is a constant here (rewards carry no gradient): only log π(a) is
    differentiated, so minimising the loss makes better-than-baseline actions more likely.
    """
    logprobs = torch.log_softmax(logits, dim=-1)  # (R, K)
    taken = logprobs.gather(-1, actions[..., None]).squeeze(-1)  # (R,): log π(a)
    advantages = rewards - baseline  # (R,)
    return -(advantages * taken).mean()


def run_reinforce(reward_fn: RewardFn, n_runs: int, n_arms: int, steps: int, lr: float,
                  generator: torch.Generator, baseline: bool = True,
                  true_values: torch.Tensor | None = None, record_policy: bool = False,
                  ) -> tuple[list[dict], torch.Tensor]:
    """Learn ``n_runs`` bandits at once with REINFORCE and a softmax policy (all logits start at 0).

    Each step: (1) sample actions from π = softmax(θ), (2) get rewards, (3) the advantage r − b,
    where b is the average of the run's earlier rewards (0 without a baseline; 0 advantage on the
    first step, when there is no earlier reward), (4) θ ← θ + lr · (r − b) · (onehot(a) − π),
    (5) update the average reward. This is Sutton & Barto's gradient bandit algorithm (section
    2.8). Returns the history (as ``run_epsilon_greedy``'s, plus ``policy`` when asked: the
    average policy, a list of K probabilities) and the final logits, (R, K).
    """
    logits = torch.zeros(n_runs, n_arms)  # θ: all arms equally likely at first
    average = torch.zeros(n_runs)  # the average reward of each run so far
    history = []
    for step in range(1, steps + 1):
        probs = torch.softmax(logits, dim=-1)
        actions = sample_actions(logits, generator)  # (1)
        rewards = reward_fn(actions, generator)  # (2)
        if not torch.isfinite(rewards).all():
            raise ValueError(f"reward_fn returned a non-finite reward at step {step}; "
                             "rewards must be finite numbers.")
        if baseline:  # (3)
            b = average if step > 1 else rewards
            advantages = rewards - b
        else:
            advantages = rewards
        logits = logits + lr * advantages[:, None] * log_policy_gradient(logits, actions)  # (4)
        average = sample_average_update(average, torch.tensor(float(step)), rewards)  # (5)
        history.append(_record(step, actions, rewards, true_values,
                               probs if record_policy else None))
    return history, logits


# ----------------------------------------------------------------------------------------------
# 4. Why a baseline: the variance of the gradient estimate
# ----------------------------------------------------------------------------------------------


def policy_gradient_estimates(logits: torch.Tensor, reward_fn: RewardFn, n_samples: int,
                              baseline: float, generator: torch.Generator) -> torch.Tensor:
    """``n_samples`` one-sample estimates of the policy gradient at one policy: (N, K).

    Each is (r − b) · ∇ log π(a) for one action a ~ π = softmax(logits (K,)) and its reward r.
    Their mean is the gradient of the expected reward whatever the baseline b (since
    E[∇ log π(a)] = ∇ Σ_a π(a) = 0); their spread is what a baseline changes.
    """
    batch = logits.expand(n_samples, -1)  # (N, K): the same policy for every sample
    actions = sample_actions(batch, generator)
    rewards = reward_fn(actions, generator)
    return (rewards - baseline)[:, None] * log_policy_gradient(batch, actions)


def total_variance(estimates: torch.Tensor) -> float:
    """The summed variance of the components of (N, K) gradient estimates (trace of their
    covariance): how far one estimate typically lands from the true gradient, squared."""
    return estimates.var(dim=0).sum().item()


# ----------------------------------------------------------------------------------------------
# 5. A reward learned from comparisons: Bradley–Terry
# ----------------------------------------------------------------------------------------------


def preference_probability(score_a: torch.Tensor, score_b: torch.Tensor) -> torch.Tensor:
    """The Bradley–Terry probability that a is preferred to b: σ(s_a − s_b), elementwise.

    Equal scores give 1/2; only the difference matters, so scores are defined up to a constant.
    ``torch.sigmoid`` of the difference stays finite where exp(s_a) / (exp(s_a) + exp(s_b))
    would overflow.
    """
    return torch.sigmoid(score_a - score_b)


def noisy_judge(true_scores: torch.Tensor, generator: torch.Generator,
                noise: float = 1.0) -> Judge:
    """A simulated judge: prefers a to b with probability σ((s_a − s_b) / noise), by ``true_scores``.

    The same model that ``fit_bradley_terry`` assumes (noise 0 would always pick the better one).
    """
    def judge(a: int, b: int) -> int:
        p = preference_probability(true_scores[a] / noise, true_scores[b] / noise)
        return 0 if float(torch.rand((), generator=generator)) < float(p) else 1

    return judge


def sample_pairs(logits: torch.Tensor, n_pairs: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_pairs`` pairs of two different attempts drawn from the policy softmax(logits (K,)).

    Both attempts come from the policy, as in InstructGPT, where the model wrote every
    completion people ranked; a pair of two equal attempts is drawn again. Returns (first,
    second), each (n_pairs,).
    """
    probs = torch.softmax(logits, dim=-1)
    if (probs > 0).sum() < 2:
        raise ValueError("The policy gives probability to fewer than two actions, so it cannot "
                         "make two different attempts.")
    first, second = [], []
    while len(first) < n_pairs:
        a, b = torch.multinomial(probs, 2, replacement=True, generator=generator).tolist()
        if a != b:
            first.append(a)
            second.append(b)
    return torch.tensor(first), torch.tensor(second)


def judge_pairs(first: torch.Tensor, second: torch.Tensor,
                judge: Judge) -> tuple[torch.Tensor, torch.Tensor]:
    """Ask ``judge`` about every pair; returns (winners, losers), pairs without a verdict dropped."""
    winners, losers = [], []
    for a, b in zip(first.tolist(), second.tolist()):
        verdict = judge(a, b)
        if verdict is None:
            continue
        winners.append((a, b)[verdict])
        losers.append((b, a)[verdict])
    return torch.tensor(winners, dtype=torch.long), torch.tensor(losers, dtype=torch.long)


def bradley_terry_nll(scores: torch.Tensor, winners: torch.Tensor,
                      losers: torch.Tensor) -> torch.Tensor:
    """The mean of −log σ(s_winner − s_loser) over the comparisons: lesson 5's loss, one score
    per arm. ``F.logsigmoid`` keeps it finite for any gap."""
    return -F.logsigmoid(scores[winners] - scores[losers]).mean()


def fit_bradley_terry(n_arms: int, winners: torch.Tensor, losers: torch.Tensor, steps: int = 300,
                      lr: float = 0.5, l2: float = 0.01) -> torch.Tensor:
    """Scores (K,) that make the observed comparisons likely under Bradley–Terry, centred at 0.

    Full-batch gradient descent on ``bradley_terry_nll`` plus ``l2`` · mean(s²): without that
    small pull towards 0, an arm that won every comparison it was in would have its score grow
    for ever. The gradient is written out (it is short, and a fit then takes milliseconds): each
    comparison pulls its winner's score up and its loser's down by 1 − σ(s_winner − s_loser), how
    surprised the current scores are by the verdict. Deterministic; an arm never compared keeps
    the score 0.
    """
    if len(winners) == 0:
        raise ValueError("There are no comparisons to learn from: judge some pairs first.")
    scores = torch.zeros(n_arms)
    for _ in range(steps):
        surprise = 1 - torch.sigmoid(scores[winners] - scores[losers])  # (N,)
        # d nll / d s: -surprise / N at each winner, +surprise / N at each loser
        gradient = (torch.zeros(n_arms).index_add(0, losers, surprise)
                    - torch.zeros(n_arms).index_add(0, winners, surprise)) / len(winners)
        gradient += 2 * l2 * scores / n_arms  # d (l2 · mean(s²)) / d s
        scores = scores - lr * gradient
    return scores - scores.mean()


def order_agreement(scores: torch.Tensor, true_scores: torch.Tensor) -> float:
    """The share of arm pairs that ``scores`` order as ``true_scores`` do (1: the same order,
    0.5: a coin's, 0: reversed). Pairs tied in ``true_scores`` are left out; a pair tied in
    ``scores`` only counts half."""
    i, j = torch.triu_indices(len(scores), len(scores), offset=1)
    truth = torch.sign(true_scores[i] - true_scores[j])
    agree = torch.sign(scores[i] - scores[j]) * truth  # 1 agree, -1 disagree, 0 tied
    ordered = truth != 0
    if not ordered.any():
        raise ValueError("true_scores are all equal, so there is no order to agree with.")
    return ((agree[ordered] + 1) / 2).mean().item()
