"""A reward model's scores, and how well they imitate the person.

``reward.py`` trains the reward model; this module holds what reads it:

* the scores: ``score_ids`` scores batches of token ids (gradients flow: the kit's training loop
  uses it), ``score`` scores (prompt, completion) texts for PPO, GRPO, the scoreboard and lessons
  6 and 7, and ``pairwise_accuracy`` is the share of pairs whose chosen side scores higher;
* the evaluation on held-out pairs: ``evaluate_reward`` returns a ``RewardReport`` of the accuracy,
  the accuracy against the noise-free rubric and the best one the labeler's noise allows
  (``noise_ceiling``), the score distributions and the calibration (``calibration_bins``);
* what it learned, by kind of pair: ``accuracy_by_pair_kind`` splits each reply's rubric score into
  its truth and behaviour points (``rubric_parts``) and measures the accuracy on pairs that differ
  in behaviour only, in truth only, or in both (the same way, or opposite ways).

``reward.py`` imports what it uses from here (the lesson reaches all of it as ``reward.X``);
nothing here imports ``reward``. Taught in ``course/05_reward_model.ipynb``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

from .behaviours import CURT_OPENERS, BehaviourWorld, Task, well_formed
from .feedback import SimulatedLabeler
from .pairs import as_pairs, encode
from .sampling import context_length


# ----------------------------------------------------------------------------------------------
# 1. Scores, and the accuracy of a pair
# ----------------------------------------------------------------------------------------------


def score_ids(model, ids: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """Scores (N,) of N token sequences, right-padded like TRL's collator.

    The head reads the hidden state of the last token that is not padding, so padding changes
    nothing. Gradients flow (use ``torch.no_grad`` around it to evaluate).
    """
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x)
        attention_mask[row, : len(x)] = 1
    out = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                use_cache=False)
    return out.logits[:, 0].float()  # (N,): one label, one score


@torch.no_grad()
def score(model, tokenizer, prompts: Sequence[str], completions: Sequence[str],
          batch_size: int = 64) -> torch.Tensor:
    """The reward model's score of each (prompt, completion), shape (N,), float32 on the CPU.

    Each pair is read as ``encode`` writes it with ``tokenizer``, the reward model's own (PPO's
    policy may read other ids: ``train_ppo``'s ``reward_tokenizer``). PPO and GRPO are rewarded
    with it, and the scoreboard and lessons 6 and 7 score with it. A pair longer than the model's context
    raises a ValueError rather than being cut, which would lose its prompt or the end where the
    score is read. No pair of the course comes near: a question and a reply of at most 24 new
    tokens make some 40 of the embedded model's 128 positions.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions: give one "
                         "prompt per completion.")
    ids = [encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    if ids and max(max(x) for x in ids) >= model.get_input_embeddings().num_embeddings:
        raise ValueError("The reward model's vocabulary is smaller than its tokenizer's: pass the "
                         "reward model's own tokenizer as reward_tokenizer.")
    context = context_length(model)
    too_long = [i for i, x in enumerate(ids) if context and len(x) > context]
    if too_long:
        raise ValueError(f"Completion {too_long[0]} is {len(ids[too_long[0]])} tokens long with its "
                         f"prompt, more than the model's context of {context}: shorten it.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    scores = [score_ids(model, ids[i : i + batch_size], pad).cpu() for i in range(0, len(ids), batch_size)]
    model.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0)


def pairwise_accuracy(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Share of pairs whose chosen side scores strictly higher (a tie is not a success, as in TRL)."""
    return (chosen_scores > rejected_scores).float().mean()


# ----------------------------------------------------------------------------------------------
# 2. Evaluation
# ----------------------------------------------------------------------------------------------


@dataclass
class RewardReport:
    """How well a reward model imitates the person on held-out pairs."""

    n_pairs: int
    accuracy: float  # share of held-out pairs ordered as the labeler ordered them
    ideal_accuracy: float | None  # the same against the noise-free rubric (None without a labeler)
    n_ideal_pairs: int  # pairs the rubric orders strictly (its ties say nothing)
    ceiling: float | None  # the best accuracy the labeler's noise allows (the rubric's, expected)
    chosen_scores: list[float]
    rejected_scores: list[float]
    calibration: list[dict]  # bins: {"low", "high", "count", "predicted", "observed"}
    calibration_error: float  # expected calibration error: Σ count/N · |observed − predicted|

    def row(self) -> dict:
        """One row of a table of results."""
        return {"pairs": self.n_pairs, "accuracy": self.accuracy,
                "accuracy vs rubric": self.ideal_accuracy, "noise ceiling": self.ceiling,
                "calibration error": self.calibration_error}


def calibration_bins(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                     bins: int = 5) -> tuple[list[dict], float]:
    """Predicted probability against observed frequency, and the expected calibration error.

    For each pair the model prefers one side with probability p = σ(|r_a − r_b|) ≥ 0.5; pairs are
    binned by p, and in each bin the share where its preferred side was the chosen one is
    compared with the mean p. A calibrated model that says 80 % is right 80 % of the time.
    """
    margin = (chosen_scores - rejected_scores).float()
    predicted = torch.sigmoid(margin.abs())  # (N,): confidence in the preferred side
    right = (margin > 0).float()  # (N,): the preferred side was the chosen one
    edges = torch.linspace(0.5, 1.0, bins + 1)
    table, error = [], 0.0
    for b in range(bins):
        low, high = edges[b].item(), edges[b + 1].item()
        inside = (predicted >= low) & ((predicted < high) if b < bins - 1 else (predicted <= high))
        count = int(inside.sum())
        row = {"low": low, "high": high, "count": count, "predicted": None, "observed": None}
        if count:
            row["predicted"] = predicted[inside].mean().item()
            row["observed"] = right[inside].mean().item()
            error += count / len(margin) * abs(row["observed"] - row["predicted"])
        table.append(row)
    return table, error


def _groups(rows: list[dict]) -> dict[int, tuple[str, list[str]]]:
    """group_id -> (prompt, the distinct completions of that ranking that appear in its pairs)."""
    groups: dict[int, tuple[str, list[str]]] = {}
    for row in rows:
        prompt, completions = groups.setdefault(row["group_id"], (row["prompt"], []))
        for text in (row["chosen"], row["rejected"]):
            if text not in completions:
                completions.append(text)
    return groups


def noise_ceiling(pairs, labeler: SimulatedLabeler) -> float:
    """The expected accuracy of the noise-free rubric on the labeler's own pairs.

    With Gumbel noise β the labeler orders a pair with rubric gap g the rubric's way with
    probability σ(|g|/β) (0.5 when g = 0), so no model can expect to agree with it more often.
    """
    rows = as_pairs(pairs)
    total = 0.0
    for row in rows:
        chosen, rejected = labeler.scores(row["prompt"], [row["chosen"], row["rejected"]])
        gap = abs(chosen - rejected)
        if labeler.noise == 0:
            total += 1.0 if gap else 0.5
        else:
            total += 1.0 / (1.0 + math.exp(-gap / labeler.noise))
    return total / len(rows)


def evaluate_reward(model, tokenizer, pairs, labeler: SimulatedLabeler | None = None,
                    bins: int = 5) -> RewardReport:
    """Held-out accuracy, accuracy against the rubric, score distributions and calibration.

    ``pairs`` are held-out rankings or pair rows. With the ``labeler`` that made them, every two
    completions of a ranking that the noise-free rubric orders strictly are also compared with
    the rubric's order, and the accuracy its noise allows is computed (``noise_ceiling``).
    """
    rows = as_pairs(pairs)
    chosen = score(model, tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = score(model, tokenizer, [r["prompt"] for r in rows], [r["rejected"] for r in rows])
    table, error = calibration_bins(chosen, rejected, bins)
    ideal, n_ideal, ceiling = None, 0, None
    if labeler is not None:
        better, worse = [], []
        for prompt, completions in _groups(rows).values():
            rubric = labeler.scores(prompt, completions)
            for i, j in combinations(range(len(completions)), 2):
                if rubric[i] != rubric[j]:
                    a, b = (i, j) if rubric[i] > rubric[j] else (j, i)
                    better.append((prompt, completions[a]))
                    worse.append((prompt, completions[b]))
        n_ideal = len(better)
        if n_ideal:
            ideal = pairwise_accuracy(score(model, tokenizer, *zip(*better)),
                                      score(model, tokenizer, *zip(*worse))).item()
        ceiling = noise_ceiling(rows, labeler)
    return RewardReport(len(rows), pairwise_accuracy(chosen, rejected).item(), ideal, n_ideal,
                        ceiling, chosen.tolist(), rejected.tolist(), table, error)


# ----------------------------------------------------------------------------------------------
# 3. What it learned: accuracy by kind of pair
# ----------------------------------------------------------------------------------------------

PAIRS_OF = ("all", "well-formed", "garbled")
"""Which pairs ``accuracy_by_pair_kind`` keeps: all, two well-formed replies, or a garbled one."""

PAIR_KINDS = ("behaviour only", "truth only", "both, the same way", "opposite ways")
"""How two replies to one task differ by the rubric: in behaviour points only, in truth points
only, or in both, where the reply with more behaviour points has more (or fewer) truth points."""


def rubric_parts(world: BehaviourWorld, task: Task, reply: str) -> tuple[float, float]:
    """A reply's rubric score in two parts that add up to it: (truth, behaviour).

    Truth: +0.5 per asked fact stated and +2 more when it is true, −2 for any false statement.
    Behaviour: the rest (polite or curt opener, rudeness, a fact nobody asked for, admitting,
    declining, length): ``rubric_score`` with the truth terms left out.
    """
    judgement = world.judge(task, reply)
    curt = reply.lstrip().startswith(CURT_OPENERS)
    behaviour = world.rubric_score(task, {}, False, judgement.rude, curt, judgement.behaviours,
                                   judgement.words)
    return judgement.score - behaviour, behaviour


def accuracy_by_pair_kind(model, tokenizer, world: BehaviourWorld, tasks: Sequence[Task],
                          replies: Sequence[str], pairs_of: str = "all") -> list[dict]:
    """The reward model's accuracy against the rubric, by kind of pair (``PAIR_KINDS``).

    ``tasks`` and ``replies`` are parallel: every two replies to the same task whose rubric scores
    differ make a pair. Each row: the kind, its number of pairs, the share the model orders as the
    rubric does, and, where truth differs, the share where it scores the truer reply higher.
    Behaviour-only pairs in which one judged behaviour alone differs are also counted by that
    behaviour ("only polite", ...). ``pairs_of`` keeps every pair (``"all"``), the pairs of two
    well-formed replies (``"well-formed"``, ``behaviours.well_formed``) or those with a garbled one
    (``"garbled"``): on garbled text the rubric's exact phrases, not the behaviour, decide.
    """
    if pairs_of not in PAIRS_OF:
        raise ValueError(f"pairs_of must be one of {', '.join(map(repr, PAIRS_OF))}, not {pairs_of!r}.")
    formed = [well_formed(r) for r in replies]
    scores = score(model, tokenizer, [t.text for t in tasks], list(replies)).tolist()
    parts = [rubric_parts(world, t, r) for t, r in zip(tasks, replies, strict=True)]
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task.text, []).append(i)
    found: dict[str, list[tuple[bool, bool | None]]] = {k: [] for k in PAIR_KINDS}
    for indices in by_task.values():
        for a, b in combinations(indices, 2):
            if pairs_of != "all" and (formed[a] and formed[b]) != (pairs_of == "well-formed"):
                continue
            # rounded: the length penalty's tenths leave float dust that is not a difference
            truth, behaviour = round(parts[a][0] - parts[b][0], 6), round(parts[a][1] - parts[b][1], 6)
            if truth + behaviour == 0:
                continue  # the rubric ties them: the pair says nothing
            right = (truth + behaviour > 0) == (scores[a] > scores[b])
            truer = None if truth == 0 else (truth > 0) == (scores[a] > scores[b])
            if truth == 0:
                kind = "behaviour only"
                ja, jb = world.judge(tasks[a], replies[a]), world.judge(tasks[b], replies[b])
                differ = [k for k in ja.behaviours if k != "true" and ja.behaviours[k] != jb.behaviours[k]]
                if len(differ) == 1:
                    found.setdefault(f"only {differ[0]}", []).append((right, None))
            elif behaviour == 0:
                kind = "truth only"
            else:
                kind = "both, the same way" if (truth > 0) == (behaviour > 0) else "opposite ways"
            found[kind].append((right, truer))
    rows = []
    for kind, pairs in found.items():
        truer = [t for _, t in pairs if t is not None]
        rows.append({"pairs": kind, "count": len(pairs),
                     "accuracy": sum(r for r, _ in pairs) / len(pairs) if pairs else float("nan"),
                     "prefers the truer reply": sum(truer) / len(truer) if truer else float("nan")})
    return rows
