"""After PPO (lesson 7): DPO and GRPO, on the same data as the course's PPO, through TRL.

PPO (lesson 6) holds four models at once: the policy, the frozen SFT reference, the reward model
and a value model, and it samples replies as it trains. Two later methods keep its goal, raise a
reward while staying near the reference, and drop parts of that machinery.

**DPO** (direct preference optimisation; Rafailov et al., 2023, "Your language model is secretly
a reward model") drops the reward model and the sampling. The policy that maximises
reward − β·KL(policy ‖ reference) is the reference reweighted by exp(reward / β); turned around,
every policy defines the reward r(x, y) = β·log π(y|x)/π_ref(y|x), up to a term that depends on
the prompt alone and cancels when two replies to one prompt are compared. Put that reward into
lesson 5's Bradley–Terry loss and the policy learns from the preference pairs directly::

    loss = -log σ( β·[log π(y_w|x) − log π_ref(y_w|x)] − β·[log π(y_l|x) − log π_ref(y_l|x)] )

for a chosen reply y_w and a rejected one y_l (``dpo_loss``). Here it learns from exactly the
pairs the reward model learned from (the ``reward`` stage's rankings, split the same way), with
TRL's ``DPOTrainer``. Tied replies give no pair, to either. TRL weighs every pair alike and
shuffles single pairs, where the kit's reward loop keeps a ranking's pairs in one batch and
weighs each 1/C(K,2), so that every ranking counts once. Rankings of the same K give the same
objective either way; in the embedded stage 513 of the 569 rankings have K = 4 and the rest 3 or
2 (questions whose sampled replies kept repeating), so the two are nearly the same objective,
batched differently, with DPO giving those few small rankings less say than the reward model.

**GRPO** (group relative policy optimisation; Shao et al., 2024, DeepSeekMath) keeps the reward
model and the sampling, and drops the value model. It samples a group of G replies to each
prompt, scores them with the reward model, and takes as each reply's advantage how much better
it scored than its group, (r − mean) / (std + 1e-4) (``group_advantages``): lesson 2's baseline,
computed from the group instead of learned. The update is PPO's clipped one, with a KL penalty to
the reference (β) added to the loss instead of to the reward. Here it uses PPO's reward model and
prompts, through TRL's ``GRPOTrainer``; the world's rubric is logged next to the reward model's
score with weight 0, watched and never trained on, as in PPO.

Both are stages: ``build_dpo`` and ``build_grpo`` read the ``sft`` and ``reward`` artifacts
and write a model folder, and ``stages.ensure_stage("dpo")`` / ``("grpo")`` build them (and
any missing predecessor) once. Taught in ``course/07_lets_chat.ipynb``, section 6.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
import trl

from . import trainers
from .runtime import seed_everything
from .sampling import context_length
from .tokenizer import chat_prompt

# ----------------------------------------------------------------------------------------------
# 1. The two objectives, as small functions (lesson 7's exercises)
# ----------------------------------------------------------------------------------------------


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """The DPO loss of a batch of pairs; each argument but ``beta`` is (B,): the log-probability
    of a whole reply (summed over its tokens) under the policy or the reference.

    The implicit reward of a reply is β times its log-ratio policy/reference; the loss is the
    Bradley–Terry loss on those rewards, averaged over the pairs. It is ln 2 while the policy is
    still its reference. (What TRL's ``DPOTrainer`` computes with ``loss_type="sigmoid"``.)
    """
    chosen = policy_chosen_logps - ref_chosen_logps  # (B,) log-ratios, in nats
    rejected = policy_rejected_logps - ref_rejected_logps
    return -F.logsigmoid(beta * (chosen - rejected)).mean()


def group_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's advantages: each reply's score against its group's, (r − mean) / (std + 1e-4).

    ``scores`` (N,) holds ``group_size`` replies per prompt, one prompt after another. The
    standard deviation divides by group_size − 1 (torch's default, as TRL's); the 1e-4 keeps a
    group that all scored the same at 0.
    """
    groups = scores.view(-1, group_size)  # (prompts, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)
    return ((groups - mean) / (std + 1e-4)).reshape(-1)


@torch.no_grad()
def reply_logprobs(model, tokenizer, prompts: list[str], replies: list[str], batch_size: int = 64) -> torch.Tensor:
    """log π(reply | prompt) of each pair, summed over the reply's tokens and its ``<|end|>``, (N,).

    The prompt is read through the chat template, as the chat models read it: these are the
    numbers DPO's loss is made of.
    """
    rows = []
    for p, r in zip(prompts, replies):
        prompt_ids = tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False).input_ids
        full = tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                             tokenize=True, return_dict=True)["input_ids"]
        rows.append((list(full), len(prompt_ids)))
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chunk], device=model.device)
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chunk],
                                 device=model.device)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]
        positions = torch.arange(1, width, device=model.device)[None, :]  # the position of each predicted token
        starts = torch.tensor([n for _, n in chunk], device=model.device)[:, None]
        mask = (positions >= starts) & attention[:, 1:].bool()  # the reply's tokens only
        out.append((token_logps * mask).sum(dim=1).cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# 2. DPO on the reward model's pairs
# ----------------------------------------------------------------------------------------------


@dataclass
class DPOConfig:
    """Everything that decides the DPO stage. Defaults: about 1.5 minutes on 2 idle CPU cores,
    a third of it re-making the reward stage's rankings, the rest one pass over its pairs.

    Not TRL's ``trl.DPOConfig``: this one holds the few settings the course varies, and
    ``trl_dpo_arguments`` translates it into TRL's many.
    """

    seed: int = 0  # batch order
    beta: float = 0.1  # how much a nat of log-ratio is worth (0.01 - 0.5): small lets the policy drift far
    epochs: float = 1.0  # passes over the training pairs (1 - 3)
    batch_size: int = 16  # pairs per optimiser step (8 - 64)
    lr: float = 5e-5  # peak learning rate (5e-7 for big hub models - 1e-4)
    warmup: float = 0.1  # share of the steps spent warming the learning rate up
    max_length: int = 128  # tokens of prompt + reply (64 - 2048); capped at the model's context
    log_every: int = 5  # optimiser steps between history entries


def preference_pairs(sft_dir: str | Path, reward_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """The reward stage's (train, held-out) pairs, made again from its recorded configuration.

    The reward stage samples the SFT model's replies and has the simulated labeler rank them,
    seeded: the same configuration gives the same rankings on the same machine. The counts in its
    metadata are checked, so DPO never trains on other pairs than the reward model did without
    saying so. Only the simulated rankings can be made again: for a reward model trained on a
    learner's own rankings, split them with ``reward.split_by_prompt`` and call ``train_dpo``.
    """
    from .artifacts import read_metadata
    from .models import load_model, load_tokenizer
    from .behaviours import BehaviourWorld
    from .reward import RewardConfig, as_pairs, simulated_rankings, split_by_prompt

    meta = read_metadata(reward_dir)
    if "config" not in meta:
        raise ValueError(f"{reward_dir} records no reward configuration: DPO needs the reward stage's "
                         "rankings; build the reward model with reward.build_reward first.")
    config = RewardConfig(**meta["config"])
    world = BehaviourWorld(seed=read_metadata(sft_dir).get("seed", 0))
    policy = load_model(sft_dir)
    rankings = simulated_rankings(policy, load_tokenizer(sft_dir), world, config)
    if len(rankings) != meta.get("rankings", len(rankings)):
        raise RuntimeError(f"Sampling the SFT model again gave {len(rankings)} rankings where the reward "
                           f"stage recorded {meta['rankings']}, so it learned from other rankings (yours, or "
                           "sampled on another machine): rebuild it here with its defaults, or give your "
                           "rankings' pairs to train_dpo.")
    train, heldout = split_by_prompt(as_pairs(rankings), config.heldout_share, config.seed)
    recorded = meta.get("pairs", {}).get("train")
    if recorded is not None and len(train) != recorded:
        raise RuntimeError(f"{len(train)} training pairs where the reward stage recorded {recorded}, so it "
                           "learned from other rankings: rebuild it here with its defaults, or give your "
                           "rankings' pairs to train_dpo.")
    # The reward model did not train on pairs longer than its max_length (reward.audit_pairs);
    # TRL's DPOTrainer would cut them short instead, so they are left out here too.
    dropped = set(meta.get("pairs", {}).get("dropped", []))
    return [row for i, row in enumerate(train) if i not in dropped], heldout


def to_dpo_dataset(rows: list[dict]) -> datasets.Dataset:
    """Pairs in TRL's conversational preference format: the prompt a user turn, each reply an
    assistant turn, so TRL renders them through the chat template (the reply ends in ``<|end|>``)."""
    return datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])


def trl_dpo_arguments(config: DPOConfig, output_dir: str, device: torch.device) -> trl.DPOConfig:
    """The kit's DPO settings in TRL's terms, with the CPU-friendly choices made for you."""
    return trl.DPOConfig(
        output_dir=output_dir,  # nothing is saved there (save_strategy="no")
        seed=config.seed,
        beta=config.beta,
        loss_type=["sigmoid"],  # the original DPO loss: dpo_loss above
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,  # TRL's default, 1e-6, is for big pretrained models
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup,  # below 1: a share of the steps
        max_length=config.max_length,
        logging_steps=config.log_every,
        logging_first_step=True,
        **trainers.cpu_arguments(device),
    )


class _DPOTrainer(trainers.StopOnNonFinite, trl.DPOTrainer):
    """TRL's DPOTrainer that stops at the first non-finite loss, before ``backward``."""

    non_finite = "The DPO loss became {loss} at step {step}: lower the learning rate or raise beta, and train again."


DPO_KEYS = {"dpo/accuracy": "rewards/accuracies", "dpo/margin": "rewards/margins",
            "dpo/chosen_reward": "rewards/chosen", "dpo/rejected_reward": "rewards/rejected"}
"""Our history's names for TRL's DPO logs (the implicit rewards β·log π/π_ref of the batch)."""


def make_dpo_trainer(model, ref_model, tokenizer, rows: list[dict], config: DPOConfig, output_dir: str,
                     progress: bool = True) -> trl.DPOTrainer:
    """A ``DPOTrainer`` ready to ``train()``, its pairs tokenized (see ``train_dpo``).

    TRL renders each pair through the chat template: ``prompt_ids`` are the user turn and the
    assistant's tag, exactly what ``tokenizer.chat_prompt`` gives the model when it answers, and
    ``chosen_ids``/``rejected_ids`` are the reply and its ``<|end|>`` (no EOS is added to a
    conversation), so DPO trains on the tokens the model writes.
    """
    context = context_length(model)
    if context and config.max_length > context:
        config = DPOConfig(**{**asdict(config), "max_length": context})
    trainer = trainers.make(_DPOTrainer, trainers.Progress(progress, "DPO", trainers.renamed(DPO_KEYS)),
                            model=model, ref_model=ref_model,
                            args=trl_dpo_arguments(config, output_dir, model.device),
                            train_dataset=to_dpo_dataset(rows), processing_class=tokenizer)
    if len(trainer.train_dataset) != len(rows):  # TRL drops a pair whose prompt fills max_length
        raise ValueError(f"{len(rows)} pairs went into TRL's DPOTrainer and it kept {len(trainer.train_dataset)}: "
                         "raise max_length or shorten the prompts.")
    return trainer


def train_dpo(model, ref_model, tokenizer, rows: list[dict], config: DPOConfig | None = None,
              progress: bool = True) -> list[dict]:
    """DPO on preference rows ``{prompt, chosen, rejected}`` with TRL; returns the history.

    ``ref_model`` is the frozen reference (the SFT model); it is never updated.
    """
    config = config or DPOConfig()
    if not rows:
        raise ValueError("DPO needs at least one preference pair.")
    same = [i for i, r in enumerate(rows) if r["chosen"].strip() == r["rejected"].strip()]
    if same:
        raise ValueError(f"Pair {same[0]} has the same text chosen and rejected: drop it, it says nothing.")
    seed_everything(config.seed)
    for parameter in ref_model.parameters():
        parameter.requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="rlhf-kit-dpo-") as output_dir:
        trainer = make_dpo_trainer(model, ref_model, tokenizer, rows, config, output_dir, progress)
        history = trainers.train(trainer)
    model.eval()
    return history


def implicit_accuracy(model, ref_model, tokenizer, rows: list[dict], beta: float) -> float:
    """How often DPO's implicit reward, β·log π/π_ref, ranks a held-out pair as the labeler did."""
    prompts = [r["prompt"] for r in rows]
    chosen = (reply_logprobs(model, tokenizer, prompts, [r["chosen"] for r in rows])
              - reply_logprobs(ref_model, tokenizer, prompts, [r["chosen"] for r in rows]))
    rejected = (reply_logprobs(model, tokenizer, prompts, [r["rejected"] for r in rows])
                - reply_logprobs(ref_model, tokenizer, prompts, [r["rejected"] for r in rows]))
    return ((beta * chosen > beta * rejected).float().mean().item()) if rows else float("nan")


def build_dpo(out_dir: str | Path, config: DPOConfig | None = None, *, sft: str | Path,
              reward: str | Path, progress: bool = True) -> dict:
    """SFT model + the reward stage's pairs -> DPO -> ``save_pretrained``. Returns the metadata.

    ``sft`` is the folder of the SFT model, the policy's start and the reference; ``reward`` the
    reward stage's folder, whose rankings DPO learns from (the reward model is not otherwise used).
    """
    from .models import load_model, load_tokenizer

    config = config or DPOConfig()
    sft_dir, reward_dir = sft, reward
    started = time.perf_counter()
    train, heldout = preference_pairs(sft_dir, reward_dir)
    sampled_seconds = time.perf_counter() - started
    tokenizer = load_tokenizer(sft_dir)
    model, ref_model = load_model(sft_dir), load_model(sft_dir)
    history = train_dpo(model, ref_model, tokenizer, train, config, progress)
    accuracy = implicit_accuracy(model, ref_model, tokenizer, heldout, config.beta)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    from .artifacts import read_metadata

    return {
        "config": asdict(config),
        "seed": read_metadata(sft_dir).get("seed", 0),
        "source": str(sft_dir),
        "reward_source": str(reward_dir),
        "pairs": {"train": len(train), "heldout": len(heldout)},
        "heldout_implicit_accuracy": accuracy,
        "final_loss": history[-1]["loss/train"],
        "sampling_seconds": sampled_seconds,  # re-making the reward stage's rankings
        "seconds": time.perf_counter() - started,
        "history": history,
    }


# ----------------------------------------------------------------------------------------------
# 3. GRPO against the reward model
# ----------------------------------------------------------------------------------------------


@dataclass
class GRPOConfig:
    """Everything that decides the GRPO stage. Defaults: about 20 s on 2 idle CPU cores.

    Not TRL's ``trl.GRPOConfig``: the few settings the course varies (``trl_grpo_arguments``
    translates them). Sampling matches PPO's: temperature 1, at most 24 new tokens, and the
    defaults sample as many replies as the ``ppo`` stage does (40 steps x 8 prompts x 4 = 1,280,
    PPO's 40 batches of 32), so the two spend the same samples: PPO reuses each batch for 16
    updates (4 epochs of 4 minibatches), GRPO for one.
    """

    seed: int = 0  # prompt order and sampling
    steps: int = 40  # optimiser steps, one per batch of sampled groups (20 - 1000)
    prompts_per_step: int = 8  # prompts per batch (4 - 64)
    group_size: int = 4  # replies sampled per prompt, G (2 - 16; DeepSeekMath: 64)
    beta: float = 0.05  # KL penalty to the reference, in the loss (0 - 0.1; TRL's default is 0)
    lr: float = 1e-4  # AdamW learning rate (1e-6 for big hub models - 3e-4)
    epsilon: float = 0.2  # PPO's clip on the probability ratio (0.1 - 0.3)
    temperature: float = 1.0  # sampling temperature
    max_new_tokens: int = 32  # length cap of a reply, in tokens
    log_every: int = 1  # steps between history entries


def trl_grpo_arguments(config: GRPOConfig, output_dir: str, device: torch.device) -> trl.GRPOConfig:
    """The kit's GRPO settings in TRL's terms, with the CPU-friendly choices made for you."""
    return trl.GRPOConfig(
        output_dir=output_dir,
        seed=config.seed,
        max_steps=config.steps,
        per_device_train_batch_size=config.prompts_per_step * config.group_size,  # replies per step
        num_generations=config.group_size,
        steps_per_generation=1,  # each sampled batch is used for one update, as on-policy as it gets
        num_iterations=1,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        beta=config.beta,
        epsilon=config.epsilon,
        loss_type="grpo",  # the paper's loss: each reply's token losses averaged, then the replies
        scale_rewards="group",  # group_advantages above
        learning_rate=config.lr,
        lr_scheduler_type="constant",
        reward_weights=[1.0, 0.0],  # the reward model trains; the rubric is only watched
        # TRL's GRPO keeps dropout on by default (its DPO turns it off): with dropout the log-probs
        # of training and of sampling differ, and the ratio and the KL measure noise. PPO has none.
        disable_dropout=True,
        logging_steps=config.log_every,
        **trainers.cpu_arguments(device),
    )


def _texts(prompts, completions) -> tuple[list[str], list[str]]:
    """TRL passes conversational prompts and completions as message lists; the kit scores text."""
    questions = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
    replies = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return questions, [r.strip() for r in replies]


def reward_model_reward(reward_model, reward_tokenizer):
    """GRPO's reward function: the reward model's score of each reply (``reward_eval.score``)."""
    from .reward_eval import score

    def reward_model_score(prompts, completions, **_):
        questions, replies = _texts(prompts, completions)
        return score(reward_model, reward_tokenizer, questions, replies).tolist()

    return reward_model_score


def rubric_reward(world):
    """The world's rubric of each reply's first line, logged by GRPO with weight 0 (never trained on)."""
    from .ppo import rubric_watch

    watch = rubric_watch(world)

    def rubric_score(prompts, completions, **_):
        return watch(*_texts(prompts, completions))

    return rubric_score


GRPO_KEYS = {"grpo/reward_model_score": "rewards/reward_model_score/mean",
             "grpo/rubric_score": "rewards/rubric_score/mean", "grpo/kl": "kl",
             "grpo/reward_std": "reward_std", "grpo/clip_ratio": "clip_ratio/region_mean",
             "grpo/length": "completions/mean_length", "grpo/entropy": "entropy"}
"""Our history's names for TRL's GRPO logs. ``grpo/kl`` is TRL's KL estimate averaged over tokens;
the ``ppo`` stage's ``ppo/kl`` is summed over a reply's tokens (about 11 here): not one scale."""


def checked_reward(fn):
    """``fn`` as a GRPO reward function that stops the run on a score that is not a finite number.

    TRL sums the reward functions' scores with ``nansum``: a reward function may return None or
    NaN for replies it does not apply to, and those are left out of the sum without a word, so a
    broken reward model would go unnoticed. TRL passes its ``trainer_state``: the scores are for the step after
    ``global_step``. The wrapper keeps ``fn``'s name, under which TRL logs its mean.
    """
    from .ppo import NonFiniteReward

    @functools.wraps(fn)
    def reward(prompts, completions, **kwargs):
        scores = fn(prompts, completions, **kwargs)
        bad = [s for s in scores if s is None or not math.isfinite(s)]
        if bad:
            state = kwargs.get("trainer_state")
            step = f" at step {state.global_step + 1}" if state is not None else ""
            raise NonFiniteReward(f"The reward function {fn.__name__} gave {bad[0]}{step}: "
                                  "check the reward model (or function) before training with it.")
        return scores

    return reward


class _GRPOTrainer(trainers.StopOnNonFinite, trl.GRPOTrainer):
    """TRL's GRPOTrainer that stops at the first non-finite loss, before ``backward``."""

    non_finite = ("The GRPO loss became {loss} at step {step}: check the reward function's scores, lower "
                  "the learning rate, and train again.")


def train_grpo(policy, tokenizer, prompts: list[str], reward_funcs: list,
               config: GRPOConfig | None = None, progress: bool = True) -> list[dict]:
    """GRPO on ``prompts`` with TRL; ``reward_funcs`` are [trained on, watched]. Returns the history.

    The reference of the KL penalty (when beta > 0) is the SFT model, and TRL does not copy it
    from ``policy``: it loads it again from the folder ``policy`` was loaded from
    (``policy.config._name_or_path``). So ``policy`` must be a model as saved, not one changed
    in memory since; that is checked, and a mismatch raises ``ValueError``.
    """
    from .models import transformers_quiet
    from .tokenizer import end_of_turn_id

    config = config or GRPOConfig()
    seed_everything(config.seed)
    # Generation must stop where a chat turn ends, at <|end|>, as the kit's own sampler does.
    stops = [tokenizer.eos_token_id, end_of_turn_id(tokenizer)]
    policy.generation_config.eos_token_id = sorted(set(stops))
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    # transformers_quiet: TRL's reload of the reference would draw a "Loading weights" bar
    with transformers_quiet():
        with tempfile.TemporaryDirectory(prefix="rlhf-kit-grpo-") as output_dir:
            trainer = trainers.make(_GRPOTrainer, trainers.Progress(progress, "GRPO", trainers.renamed(GRPO_KEYS)),
                                    model=policy, reward_funcs=[checked_reward(f) for f in reward_funcs],
                                    args=trl_grpo_arguments(config, output_dir, policy.device),
                                    train_dataset=dataset, processing_class=tokenizer)
            _check_reference(trainer.ref_model, policy)
            history = trainers.train(trainer)
    policy.eval()
    return history


def _check_reference(ref_model, policy) -> None:
    """Refuse to train when TRL's reference (reloaded from disk) is not the policy as passed."""
    if ref_model is None:  # beta = 0: no KL penalty, no reference
        return
    reference = dict(ref_model.named_parameters())
    for name, parameter in policy.named_parameters():
        if name in reference and not torch.equal(parameter.detach(), reference[name].detach().to(parameter)):
            raise ValueError(f"TRL reloaded GRPO's reference from {policy.config._name_or_path}, and its weights "
                             "differ from the policy's: save the policy with save_pretrained and load it from "
                             "that folder, so that the reference is the policy as training starts.")


def build_grpo(out_dir: str | Path, config: GRPOConfig | None = None, *, sft: str | Path,
               reward: str | Path, progress: bool = True) -> dict:
    """SFT model + reward model -> GRPO on the world's training tasks -> ``save_pretrained``.

    ``sft`` is the folder of the SFT model (the policy's start, and the reference) and ``reward``
    that of the reward model. The same tasks as the ``ppo`` stage (each once): the behaviour
    world's ``train`` split, whose replies the reward model learned from.
    """
    from .artifacts import read_metadata
    from .behaviours import BehaviourWorld, sample_tasks
    from .models import load_model, load_tokenizer

    config = config or GRPOConfig()
    policy_dir, reward_dir = sft, reward
    started = time.perf_counter()
    world = BehaviourWorld(seed=read_metadata(policy_dir).get("seed", 0))
    prompts = sorted({t.text for t in sample_tasks(world, 2000, "train", config.seed + 1)})
    tokenizer = load_tokenizer(policy_dir)
    reward_model, reward_tokenizer = load_model(reward_dir, kind="reward"), load_tokenizer(reward_dir)
    policy = load_model(policy_dir)
    history = train_grpo(policy, tokenizer, prompts,
                         [reward_model_reward(reward_model, reward_tokenizer), rubric_reward(world)],
                         config, progress)
    policy.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "config": asdict(config),
        "seed": world.seed,
        "policy_source": str(policy_dir),
        "reward_source": str(reward_dir),
        "prompts": len(prompts),
        "final": history[-1] if history else {},
        "seconds": time.perf_counter() - started,
        "history": history,
    }
