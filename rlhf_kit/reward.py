"""Reward model: a model learns to score a completion the way a person ranked it.

PPO needs a reward for every completion the policy writes, and no person can rank millions of
them. So a model learns to stand in for the person: the **reward model** reads a prompt and a
completion and returns one number, its score r(x, y). It is the SFT model's body with a scalar
head instead of the next-token head (``AutoModelForSequenceClassification`` with one label, so
any hub model works the same way), and it learns from the preference pairs of lesson 4 under the
**Bradley–Terry** model: the chance that a person prefers ``chosen`` to ``rejected`` is

    P(chosen beats rejected) = σ(r(x, y_chosen) − r(x, y_rejected))

and training maximises the log-probability of the preferences people actually stated. One
ranking of K completions gives C(K,2) = K·(K−1)/2 pairs; as in InstructGPT, the pairs of one
ranking are kept together in one batch and weighed 1/C(K,2), so that every ranking counts once
however large its K (the pairs of one ranking are strongly correlated: spread over many batches
they are seen again and again, and the model overfits):

    loss = − Σ_pairs w · log σ(r_chosen − r_rejected)  /  Σ_pairs w,        w = 1/C(K,2)

Keeping a ranking together is also cheaper: its K completions are scored once each, instead of
twice for each of the C(K,2) pairs.

Sections: loss → training (the kit's own loop, written to be read, and TRL's ``RewardTrainer``,
the path people use) → the embedded ``reward`` stage (completions sampled from the SFT model,
ranked by the simulated labeler). The data (audit, split by prompt, grouping) are in
``pairs.py``; the scores and the evaluation (held-out accuracy, accuracy against the noise-free
rubric, score distributions, calibration) in ``reward_eval.py``.

The reward model reads a pair as the chat template writes it, a user turn then an assistant
turn, exactly as TRL tokenizes a conversational preference dataset, so both trainers see the
same tokens (and so does PPO when it scores the policy's replies).

Reads the ``sft`` artifact (or any model folder or hub id) and rankings; writes the ``reward``
artifact. Taught in ``course/05_reward_model.ipynb``. From Christiano et al. (2017), *Deep
reinforcement learning from human preferences*, and Ouyang et al. (2022), *Training language
models to follow instructions with human feedback* (InstructGPT), section 3.5.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
import trl

from . import trainers
from .artifacts import read_metadata
from .feedback import DEFAULT_NOISE, Item, Ranking, SimulatedLabeler, calibrate_noise, shuffled_order
from .models import load_model, load_tokenizer
from .pairs import audit_pairs, encode, group_batches, split_by_prompt
from .pairs import InvalidPair, as_pairs, read_rankings  # noqa: F401 (the lesson's data, written in pairs.py)
from .pretrain import learning_rate as cosine_schedule, make_optimizer
from .reward_eval import evaluate_reward, pairwise_accuracy, score_ids
from .reward_eval import (  # noqa: F401 (the lesson's scores and evaluation, written in reward_eval.py)
    RewardReport, calibration_bins, noise_ceiling, score)
from .runtime import NonFiniteLoss, progress_bar, seed_everything
from .sampling import context_length, generate
from .tokenizer import chat_prompt
from .behaviours import BehaviourWorld, sample_tasks


@dataclass
class RewardConfig:
    """Everything that decides the reward model. Defaults: about a minute on 2 CPU cores
    (sampling the completions included).

    Not TRL's ``trl.RewardConfig``: this one holds the few settings the course varies, and
    ``trl_arguments`` translates it into TRL's many.
    """

    seed: int = 0  # sampling, labelling, the held-out split, the head's initialisation, batch order
    # -- data (the embedded stage: completions of the SFT model, ranked by the simulated labeler)
    k: int = 4  # completions ranked per prompt (2 - 9; InstructGPT showed 4 to 9)
    n_rankings: int = 1152  # rankings of completions of the world's training tasks (100 - 5000)
    max_new_tokens: int = 32  # length cap of a sampled completion, in tokens (16 - 64)
    temperature: float = 1.0  # sampling temperature (0.7 - 1.3): higher gives more varied sets
    noise: float | None = None  # the simulated labeler's Gumbel noise (0 = the rubric); None: two labelers agree on 73 %
    heldout_share: float = 0.25  # share of prompts held out for evaluation (0.1 - 0.3), never pairs
    max_length: int = 128  # tokens of prompt + completion (64 - 2048); capped at the model's context
    # -- training
    trainer: str = "kit"  # "kit": the grouped loop below; "trl": TRL's RewardTrainer
    epochs: float = 4.0  # passes over the rankings (1 - 8; InstructGPT: 1 on far more data)
    rankings_per_batch: int = 8  # whole rankings per optimiser step (4 - 64; InstructGPT: 64)
    lr: float = 3e-4  # peak learning rate (1e-5 for big hub models - 1e-3 for the embedded one)
    warmup: float = 0.05  # share of the steps spent warming the learning rate up (0 - 0.1)
    weight_decay: float = 0.0  # AdamW decay (0 - 0.1); the run is too short to need it
    grad_clip: float = 1.0  # clip the global gradient norm (0.5 - 5)
    log_every: int = 5  # optimiser steps between history entries
    eval_every: int = 20  # optimiser steps between held-out evaluations (0: only at the end)


class PairCountMismatch(RuntimeError):
    """A trainer kept a different number of pairs than the audit said it would."""


# ----------------------------------------------------------------------------------------------
# 1. The loss
# ----------------------------------------------------------------------------------------------
# The data (pairs in, checked, split by prompt, grouped by ranking) are in pairs.py; the
# scores, the accuracy that goes with the loss and the evaluation are in reward_eval.py.


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """The Bradley–Terry loss: − log σ(r_chosen − r_rejected), averaged over the pairs.

    chosen_scores, rejected_scores: (B,), the reward model's scores of the two sides of B pairs.
    weights: (B,) or None. With weights the average is weighted, Σ w·loss / Σ w: with
    w = 1/C(K,2) every ranking of a batch counts once. Equal scores give ln 2 (a coin flip).
    """
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.dim() != 1:
        raise ValueError(f"Expected chosen_scores and rejected_scores of the same shape (B,); got "
                         f"{tuple(chosen_scores.shape)} and {tuple(rejected_scores.shape)}.")
    # logsigmoid, not log(sigmoid()): σ of a large negative margin is 0 in float32, and log(0) = -inf.
    losses = -F.logsigmoid(chosen_scores - rejected_scores)  # (B,)
    if weights is None:
        return losses.mean()
    return (weights * losses).sum() / weights.sum()


def ranking_loss(scores: torch.Tensor, ranking: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """The loss of one ranking of K completions: the Bradley–Terry loss over all its C(K,2) pairs.

    scores: (K,), one score per completion; ranking: completion indices, best first. Every
    completion beats each one ranked below it, and the C(K,2) pairs are averaged.
    """
    ranking = torch.as_tensor(ranking, device=scores.device)
    ordered = scores[ranking]  # (K,): best first
    better, worse = torch.triu_indices(len(ordered), len(ordered), offset=1, device=scores.device)
    return bradley_terry_loss(ordered[better], ordered[worse])


# ----------------------------------------------------------------------------------------------
# 2. Training
# ----------------------------------------------------------------------------------------------


def effective_max_length(model, config: RewardConfig) -> int:
    """``config.max_length``, capped at the model's context."""
    return min(config.max_length, context_length(model) or config.max_length)


def learning_rate(step: int, total_steps: int, config: RewardConfig) -> float:
    """Linear warmup, then cosine decay to 0: Hugging Face's "cosine" schedule, step by step
    (``pretrain.learning_rate``); ``config.warmup`` is a share of the steps below 1, else steps."""
    warmup = math.ceil(config.warmup * total_steps) if config.warmup < 1 else int(config.warmup)
    return cosine_schedule(step, total_steps, config.lr, warmup)


def _disable_dropout(model) -> None:
    """Dropout off (TRL does the same): a score should not depend on a coin flip."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _prepare(model, tokenizer) -> None:
    """Padding token on the tokenizer and the model (the head needs it to find the last token)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id


def _steps_per_epoch(rows: list[dict], rankings_per_batch: int) -> int:
    return math.ceil(len({row["group_id"] for row in rows}) / rankings_per_batch)


class _Texts:
    """Token ids of every (prompt, completion) of some pairs, each encoded once.

    ``chosen[i]`` and ``rejected[i]`` index ``ids`` for pair i: the completions of one ranking
    appear in several pairs, and are scored once per batch.
    """

    def __init__(self, tokenizer, rows: list[dict]):
        index: dict[tuple[str, str], int] = {}
        self.ids: list[list[int]] = []
        self.chosen, self.rejected = [], []
        for row in rows:
            for side, out in (("chosen", self.chosen), ("rejected", self.rejected)):
                key = (row["prompt"], row[side])
                if key not in index:
                    index[key] = len(self.ids)
                    self.ids.append(encode(tokenizer, *key))
                out.append(index[key])

    def scores(self, model, pad_token_id: int, pairs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of the chosen and rejected sides of ``pairs``, each (len(pairs),)."""
        needed = sorted({self.chosen[i] for i in pairs} | {self.rejected[i] for i in pairs})
        position = {text: n for n, text in enumerate(needed)}
        scores = score_ids(model, [self.ids[t] for t in needed], pad_token_id)  # (U,)
        chosen = torch.tensor([position[self.chosen[i]] for i in pairs], device=scores.device)
        rejected = torch.tensor([position[self.rejected[i]] for i in pairs], device=scores.device)
        return scores[chosen], scores[rejected]


@torch.no_grad()
def _evaluate_loss(model, texts: _Texts, rows: list[dict], pad_token_id: int,
                   batch_size: int = 64) -> dict:
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(rows), batch_size):
        c, r = texts.scores(model, pad_token_id, list(range(start, min(len(rows), start + batch_size))))
        chosen.append(c)
        rejected.append(r)
    model.train()
    chosen, rejected = torch.cat(chosen), torch.cat(rejected)
    weights = torch.tensor([row["weight"] for row in rows], device=chosen.device)
    return {"loss/eval": bradley_terry_loss(chosen, rejected, weights).item(),
            "reward/eval_accuracy": pairwise_accuracy(chosen, rejected).item()}


def train_reward(model, tokenizer, pairs, config: RewardConfig | None = None, eval_pairs=None,
                 progress: bool = True) -> list[dict]:
    """Train ``model`` (one score per sequence) on preference pairs with the kit's grouped loop.

    ``pairs`` are rankings or pair rows (see ``as_pairs``); each optimiser step takes
    ``rankings_per_batch`` whole rankings. Returns the history of metric dicts: ``loss/train``,
    ``reward/accuracy`` and ``reward/margin`` (averaged since the previous entry), plus
    ``loss/eval`` and ``reward/eval_accuracy`` when ``eval_pairs`` are given. Raises
    ``InvalidPair`` for a bad pair and ``NonFiniteLoss``, naming the step, if the loss stops
    being a finite number.
    """
    config = config or RewardConfig()
    generator = seed_everything(config.seed)
    _prepare(model, tokenizer)
    _disable_dropout(model)
    max_length = effective_max_length(model, config)
    # 1. the checks: no empty or identical pair; over-long pairs listed and left out
    rows = audit_pairs(pairs, tokenizer, max_length, verbose=progress).kept
    eval_rows = audit_pairs(eval_pairs, tokenizer, max_length, verbose=False).kept if eval_pairs else []
    texts, eval_texts = _Texts(tokenizer, rows), _Texts(tokenizer, eval_rows)
    weights = torch.tensor([row["weight"] for row in rows], dtype=torch.float, device=model.device)
    per_epoch = _steps_per_epoch(rows, config.rankings_per_batch)
    total_steps = max(1, math.ceil(config.epochs * per_epoch))
    optimizer = make_optimizer(model, config.lr, config.weight_decay)  # Hugging Face's AdamW
    model.train()
    history: list[dict] = []
    window: dict[str, list[float]] = {"loss/train": [], "reward/accuracy": [], "reward/margin": []}
    start = time.perf_counter()
    bar = progress_bar(total=total_steps, desc="training the reward model", disable=not progress)
    batches: list[list[int]] = []
    try:
        for step in range(1, total_steps + 1):
            # 2. a batch of whole rankings: each completion is scored once, then paired
            if not batches:
                batches = group_batches(rows, config.rankings_per_batch, generator)
            batch = batches.pop(0)
            chosen, rejected = texts.scores(model, tokenizer.pad_token_id, batch)  # (B,), (B,)
            # 3. the Bradley–Terry loss, each ranking weighed once (w = 1/C(K,2))
            loss = bradley_terry_loss(chosen, rejected, weights[batch])
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"The reward model's loss became {loss.item()} at step {step} "
                                    f"of {total_steps}: lower the learning rate and train again.")
            # 4. one optimiser step at the scheduled learning rate
            lr = learning_rate(step - 1, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            # 5. metrics, averaged over the steps since the last entry (as TRL logs them)
            with torch.no_grad():
                window["loss/train"].append(loss.item())
                window["reward/accuracy"].append(pairwise_accuracy(chosen, rejected).item())
                window["reward/margin"].append((chosen - rejected).mean().item())
            bar.update(1)
            if step % config.log_every == 0 or step == total_steps:
                entry = {"step": step, "epoch": step / per_epoch, "lr": lr,
                         "seconds": time.perf_counter() - start}
                entry |= {k: sum(v) / len(v) for k, v in window.items()}
                history.append(entry)
                window = {k: [] for k in window}
                bar.set_postfix(loss=f"{entry['loss/train']:.3f}", acc=f"{entry['reward/accuracy']:.2f}")
            if eval_rows and ((config.eval_every and step % config.eval_every == 0) or step == total_steps):
                history.append({"step": step, "epoch": step / per_epoch,
                                **_evaluate_loss(model, eval_texts, eval_rows, tokenizer.pad_token_id),
                                "seconds": time.perf_counter() - start})
    finally:
        bar.close()
    model.eval()
    return history


# -- the same with TRL's RewardTrainer ----------------------------------------------------------


def to_trl_dataset(rows: list[dict], tokenizer) -> datasets.Dataset:
    """Pairs in TRL's preference format: conversational with a chat template, plain otherwise.

    Only prompt, chosen and rejected go in: TRL's loss is a plain mean over the pairs of a batch
    and its default ``remove_unused_columns`` would drop group_id and weight without a word.
    A plain prompt gets a line break at its end, since TRL joins prompt and completion directly.
    """
    if tokenizer.chat_template:
        data = {"prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows],
                "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
                "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows]}
    else:
        data = {"prompt": [r["prompt"] + "\n" for r in rows], "chosen": [r["chosen"] for r in rows],
                "rejected": [r["rejected"] for r in rows]}
    return datasets.Dataset.from_dict(data)


def pairs_per_batch(rows: list[dict], rankings_per_batch: int) -> int:
    """TRL's batch size (in pairs) for as many optimiser steps as the grouped loop takes."""
    n_groups = len({row["group_id"] for row in rows})
    return max(1, round(rankings_per_batch * len(rows) / n_groups))


def trl_arguments(config: RewardConfig, output_dir: str, device: torch.device, batch_size: int,
                  max_length: int, evaluate: bool = False) -> trl.RewardConfig:
    """The kit's config in TRL's terms, with the CPU-friendly choices the kit makes for you."""
    return trl.RewardConfig(
        output_dir=output_dir,  # nothing is saved there (save_strategy="no")
        seed=config.seed,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        learning_rate=config.lr,  # TRL's default, 1e-4, is for big pretrained models
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup,  # a float below 1 is a share of the steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.grad_clip,
        max_length=max_length,  # longer pairs are dropped silently: audit_pairs lists them first
        center_rewards_coefficient=None,  # the kit's loss has no centring term either
        logging_steps=config.log_every,
        eval_strategy="steps" if evaluate and config.eval_every else ("epoch" if evaluate else "no"),
        eval_steps=config.eval_every or None,
        **trainers.cpu_arguments(device),
    )


class _RewardTrainer(trainers.StopOnNonFinite, trl.RewardTrainer):
    """TRL's RewardTrainer that stops at the first non-finite training loss."""

    non_finite = ("The reward model's loss became {loss} at step {step} of {steps}: lower the learning "
                  "rate and train again.")


def _record(state, logs: dict, seconds: float) -> dict | None:
    """The history entry of one of Trainer's logs: a training or an evaluation entry."""
    if "loss" in logs:
        return {"step": state.global_step, "epoch": logs.get("epoch"), "lr": logs.get("learning_rate"),
                "seconds": seconds, "loss/train": logs["loss"], "reward/accuracy": logs.get("accuracy"),
                "reward/margin": logs.get("margin")}
    if "eval_loss" in logs:
        return {"step": state.global_step, "epoch": logs.get("epoch"), "loss/eval": logs["eval_loss"],
                "reward/eval_accuracy": logs.get("eval_accuracy"), "seconds": seconds}
    return None


def make_trl_trainer(model, tokenizer, rows: list[dict], config: RewardConfig, output_dir: str,
                     eval_rows: list[dict] | None = None, progress: bool = True) -> trl.RewardTrainer:
    """A ``RewardTrainer`` ready to ``train()`` on pair rows, as they are (no audit here)."""
    max_length = effective_max_length(model, config)
    batch_size = pairs_per_batch(rows, config.rankings_per_batch)
    args = trl_arguments(config, output_dir, model.device, batch_size, max_length, bool(eval_rows))
    progress_bar = trainers.Progress(progress, "training the reward model (TRL)", _record)
    return trainers.make(_RewardTrainer, progress_bar, model=model, args=args, processing_class=tokenizer,
                         train_dataset=to_trl_dataset(rows, tokenizer),
                         eval_dataset=to_trl_dataset(eval_rows, tokenizer) if eval_rows else None)


def train_reward_trl(model, tokenizer, pairs, config: RewardConfig | None = None, eval_pairs=None,
                     progress: bool = True) -> list[dict]:
    """Train ``model`` on the same pairs with TRL's ``RewardTrainer``; returns the history.

    The same checks run first, and the pairs TRL keeps are counted: a difference from the audit
    raises ``PairCountMismatch``. TRL shuffles single pairs and takes their plain mean (no
    grouping, no weights); with every ranking of the same K and no ties that is the same
    objective as the kit's loop, only batched differently.
    """
    config = config or RewardConfig()
    seed_everything(config.seed)
    _prepare(model, tokenizer)
    max_length = effective_max_length(model, config)
    rows = audit_pairs(pairs, tokenizer, max_length, verbose=progress).kept
    eval_rows = audit_pairs(eval_pairs, tokenizer, max_length, verbose=False).kept if eval_pairs else None
    with tempfile.TemporaryDirectory(prefix="rlhf-kit-reward-") as output_dir:
        trainer = make_trl_trainer(model, tokenizer, rows, config, output_dir, eval_rows, progress)
        if len(trainer.train_dataset) != len(rows):
            raise PairCountMismatch(f"{len(rows)} pairs went into TRL's RewardTrainer but it kept "
                                    f"{len(trainer.train_dataset)}: check max_length and the "
                                    "tokenizer's chat template.")
        history = trainers.train(trainer)
    model.eval()
    return history


# ----------------------------------------------------------------------------------------------
# 3. The embedded reward model: completions of the SFT model, ranked by the simulated labeler
# ----------------------------------------------------------------------------------------------


def sample_completions(model, tokenizer, prompts: Sequence[str], k: int = 4,
                       max_new_tokens: int = 24, temperature: float = 1.0, seed: int = 0,
                       max_rounds: int = 10) -> list[list[str]]:
    """K different, non-empty completions of each prompt, sampled from a chat model.

    Each round samples K more completions for every prompt that still lacks some; identical
    (after stripping spaces) and empty ones are thrown away, since a ranking refuses them. A prompt
    that has fewer than K after ``max_rounds`` rounds gets what it has (fewer than 2: none).
    """
    found: list[list[str]] = [[] for _ in prompts]
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    for round_ in range(max_rounds):
        pending = [i for i, f in enumerate(found) if len(f) < k]
        if not pending:
            break
        asked = [i for i in pending for _ in range(k)]
        out = generate(model, tokenizer, [texts[i] for i in asked], max_new_tokens=max_new_tokens,
                       temperature=temperature, seed=seed + 100_003 * round_)
        for i, completion in zip(asked, out.completions):
            text = completion.strip()
            if text and len(found[i]) < k and text not in found[i]:
                found[i].append(text)
    return [f if len(f) >= 2 else [] for f in found]


def simulated_rankings(model, tokenizer, world: BehaviourWorld, config: RewardConfig,
                       model_name: str = "sft") -> list[Ranking]:
    """Rankings of completions sampled from ``model``, by the simulated labeler of lesson 4.

    ``config.n_rankings`` sets of ``config.k`` completions, each of a task of the world's ``train``
    split (``behaviours.sample_tasks``: half fact questions, a quarter about unknown people, a
    quarter requests to insult), ranked by the labeler of ``labeler_for``.
    """
    return sample_and_rank(model, tokenizer, world, config, model_name)[0]


def sample_and_rank(model, tokenizer, world: BehaviourWorld, config: RewardConfig,
                    model_name: str = "sft") -> tuple[list[Ranking], SimulatedLabeler]:
    """``simulated_rankings``, and the labeler who ranked them."""
    prompts = [t.text for t in sample_tasks(world, config.n_rankings, "train", config.seed)]
    sets = sample_completions(model, tokenizer, prompts, config.k, config.max_new_tokens,
                              config.temperature, config.seed)
    labeler = labeler_for(world, config, [Item(p, tuple(c), model_name) for p, c in zip(prompts, sets) if c])
    return rank_sets(labeler, prompts, sets, model_name), labeler


def labeler_for(world: BehaviourWorld, config: RewardConfig, items: Sequence[Item]) -> SimulatedLabeler:
    """``SimulatedLabeler(world, noise, seed=config.seed)``: at ``config.noise``, or, when it is None,
    at the noise with which two such labelers agree on 73 % of the pairs of ``items``, as
    InstructGPT's people agreed (``feedback.calibrate_noise``; about 1.1 on the SFT model's
    completions). Completions the rubric can hardly tell apart (a model that writes nothing but
    noise) cannot be calibrated on: the labeler then takes ``feedback.DEFAULT_NOISE`` (1.13, close
    to the 1.08 to 1.11 found on the SFT model's completions, ``bench/RESULTS.md``)."""
    noise = config.noise
    if noise is None:
        try:
            noise = calibrate_noise(world, items)
        except ValueError:  # even the noise-free rubric agrees with itself less than 73 % on these
            noise = DEFAULT_NOISE
    return SimulatedLabeler(world, noise=noise, seed=config.seed)


def rank_sets(labeler: SimulatedLabeler, prompts: Sequence[str], sets: Sequence[Sequence[str]],
              model_name: str = "sft") -> list[Ranking]:
    """The labeler's ranking of each set of completions (a set of fewer than 2 is skipped)."""
    rankings = []
    for prompt, completions in zip(prompts, sets):
        if len(completions) < 2:
            continue
        key = Item(prompt, tuple(completions), model_name).key(labeler.name)  # seeds the noise
        ranking, ties = labeler.rank(prompt, completions, key)
        rankings.append(Ranking(prompt, tuple(completions), ranking, ties,
                                shown_order=shuffled_order(key, len(completions)),
                                model=model_name, labeler=labeler.name, labeler_kind="simulated"))
    return rankings


def train(model, tokenizer, pairs, config: RewardConfig, eval_pairs=None,
          progress: bool = True) -> list[dict]:
    """``train_reward`` or ``train_reward_trl``, as ``config.trainer`` says."""
    if config.trainer == "kit":
        return train_reward(model, tokenizer, pairs, config, eval_pairs, progress)
    if config.trainer == "trl":
        return train_reward_trl(model, tokenizer, pairs, config, eval_pairs, progress)
    raise ValueError(f"trainer must be 'kit' or 'trl', not {config.trainer!r}.")


def build_reward(out_dir: str | Path, config: RewardConfig | None = None, *, sft: str | Path,
                 rankings: Iterable[Ranking] | None = None, progress: bool = True) -> dict:
    """SFT model -> sampled completions -> simulated rankings -> reward model -> ``save_pretrained``.

    ``sft`` is the SFT model (the ``sft`` stage's folder, another model folder or a hub id): it
    writes the completions and gives the reward model its body. ``rankings`` replaces the sampled
    ones (a learner's own, or ``feedback.load_example_rankings()``). Rankings are split by prompt;
    the held-out ones are evaluated. Returns the metadata; the caller writes it.
    """
    config = config or RewardConfig()
    source_dir = sft
    started = time.perf_counter()
    # The world the SFT model read about judges its completions.
    world = BehaviourWorld(seed=read_metadata(source_dir).get("seed", 0))
    tokenizer = load_tokenizer(source_dir)
    labeler = None  # the simulated labeler who ranked, when it did
    if rankings is None:
        policy = load_model(source_dir)
        rankings, labeler = sample_and_rank(policy, tokenizer, world, config)
        del policy
    rankings = list(rankings)
    sampled_seconds = time.perf_counter() - started
    train_rows, heldout_rows = split_by_prompt(rankings, config.heldout_share, config.seed)
    # The head is initialised from the global generator: seeded, so a rebuild gives the same model.
    seed_everything(config.seed)
    model = load_model(source_dir, kind="reward")
    history = train(model, tokenizer, train_rows, config, heldout_rows, progress)
    max_length = effective_max_length(model, config)
    audit = audit_pairs(train_rows, tokenizer, max_length, verbose=False)
    heldout_rows = audit_pairs(heldout_rows, tokenizer, max_length, verbose=False).kept
    simulated = all(r.labeler_kind == "simulated" for r in rankings)
    if labeler is None and simulated:  # rankings given: the labeler is judged at the noise of their items
        labeler = labeler_for(world, config, [Item(r.prompt, r.completions, r.model) for r in rankings])
    report = evaluate_reward(model, tokenizer, heldout_rows, labeler if simulated else None)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    train_entries = [h for h in history if "loss/train" in h]
    return {
        "config": asdict(config),
        "seed": world.seed,  # the world's seed, as in the earlier stages' metadata
        "source": str(source_dir),
        "rankings": len(rankings),
        "labeler_noise": labeler.noise if labeler is not None and simulated else None,
        "pairs": {"train": audit.n_pairs, "kept": len(audit.kept),
                  "dropped": [d["index"] for d in audit.dropped], "heldout": len(heldout_rows),
                  "heldout_prompts": len({r["prompt"] for r in heldout_rows})},
        "final_loss": train_entries[-1]["loss/train"],
        "heldout": report.row(),
        "calibration": report.calibration,
        "sampling_seconds": sampled_seconds,
        "seconds": time.perf_counter() - started,
        "history": history,
    }
