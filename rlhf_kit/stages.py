"""The stages of the recipe: the one table of what each builds from, and how a missing one is built.

Every stage of the embedded model is a folder (``artifacts.stage_dir``) written by one builder.
A builder is a function ``build(out_dir, config=None, *, progress=True, **inputs) -> metadata``:
``inputs`` are the folders of the stages it needs, passed by their names (``base=``, ``sft=``,
``reward=``), and it never builds another stage. This module is the only place that knows the
order: ``ensure_stage`` builds what a stage needs first, then the stage itself, and
``pipeline.run_stages`` and ``rlhf-kit build`` read the same table. It sits at the top of the
package's imports: the stage modules do not import it.

=========  ======================  ==========  ===========================================
stage      needs                   lesson      what it is
=========  ======================  ==========  ===========================================
base       (shipped)               1           the GPT pretrained on the world's internet
sft        base                    2           fine-tuned on demonstrations
reward     sft                     3 and 4     the SFT body with a scalar head, on rankings
ppo        sft, reward             6           the SFT model after PPO against the reward model
dpo        sft, reward             7           the SFT model after DPO on the reward stage's pairs
grpo       sft, reward             7           the SFT model after GRPO against the reward model
big-base   (shipped)               7           a base model four times bigger, same corpus
=========  ======================  ==========  ===========================================

The two pretrained stages are installed from the weights the package ships (seconds);
``pretrain_from_scratch`` runs their recipe instead (minutes), and removes the stages built from
the old base, since they no longer follow from the new one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import alternatives, pretrain, ppo, reward, sft
from .artifacts import build_folder, is_ready, stage_dir


@dataclass(frozen=True)
class Stage:
    """One stage: its name, the stages it is built from, and the function that builds it."""

    name: str
    needs: tuple[str, ...]
    build: Callable[..., dict]  # build(out_dir, config=None, *, progress=True, **{need: folder})
    lesson: str
    about: str
    from_scratch: Callable[..., dict] | None = None  # the recipe of a shipped stage, run here


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("base", (), pretrain.install_base, "1", "the GPT pretrained on the world's internet",
          from_scratch=pretrain.build_base),
    Stage("sft", ("base",), sft.build_sft, "2", "fine-tuned on demonstrations"),
    Stage("reward", ("sft",), reward.build_reward, "3 and 4", "the SFT body with a scalar head, "
          "trained on simulated rankings"),
    Stage("ppo", ("sft", "reward"), ppo.build_ppo, "6", "the SFT model after PPO against the reward model"),
    Stage("dpo", ("sft", "reward"), alternatives.build_dpo, "7", "the SFT model after DPO on the "
          "reward stage's pairs"),
    Stage("grpo", ("sft", "reward"), alternatives.build_grpo, "7", "the SFT model after GRPO against "
          "the reward model"),
    Stage("big-base", (), pretrain.install_big_base, "7", "a base model four times bigger, on the "
          "same corpus", from_scratch=pretrain.build_big_base),
)}
"""Every stage of the embedded model, in the order they are built."""


def unknown_stage(stage: str) -> str:
    """The sentence that refuses a stage name the kit does not know."""
    return f"Unknown stage {stage!r}; the stages are: {', '.join(STAGES)}."


def stage(name: str) -> Stage:
    """The table's entry for ``name``; ``KeyError`` with the list of stages for an unknown one."""
    if name not in STAGES:
        raise KeyError(unknown_stage(name))
    return STAGES[name]


def built_from(name: str) -> list[str]:
    """``name`` and every stage built from it, directly or not, in the table's order."""
    found = [name]
    for other in STAGES.values():
        if any(need in found for need in other.needs):
            found.append(other.name)
    return [s for s in STAGES if s in found]


RECIPE = tuple(built_from("base"))
"""The stages of one run of the recipe, from the base model (``rlhf-kit run``): all but big-base."""


def build_stage(name: str, out_dir: str | Path, inputs: dict[str, str | Path], config=None,
                progress: bool = True) -> dict:
    """Run ``name``'s builder into ``out_dir`` from the folders of the stages it needs."""
    entry = stage(name)
    missing = [need for need in entry.needs if need not in inputs]
    if missing:
        raise ValueError(f"The {name} stage is built from {', '.join(entry.needs)}: pass the folder "
                         f"of {', '.join(missing)}.")
    return entry.build(out_dir, config, progress=progress, **{need: inputs[need] for need in entry.needs})


def ensure_stage(name: str, verbose: bool = True) -> Path:
    """The folder of the embedded model's stage ``name``, built with its default configuration
    (and the stages it needs before it) if it is missing."""
    entry = stage(name)
    target = stage_dir(name)
    if is_ready(name):
        return target
    inputs = {need: ensure_stage(need, verbose) for need in entry.needs}
    build_folder(target, lambda out: build_stage(name, out, inputs, progress=verbose), name, verbose,
                 embedded=True, shipped=not entry.needs)
    return target


def pretrain_from_scratch(name: str = "base", progress: bool = True) -> tuple[Path, list[str]]:
    """Pretrain ``base`` or ``big-base`` with the kit's recipe, in place of the shipped weights.

    Pretraining on another CPU gives other weights in the last bits, so the stages built from
    the old model no longer follow from the new one: they are removed, and rebuilt from it when
    next asked for. The new model is built beside the old one and replaces it only when complete,
    so an interrupted run changes nothing. Returns the stage's folder and the stages removed.
    """
    entry = stage(name)
    if entry.from_scratch is None:
        shipped = [s.name for s in STAGES.values() if s.from_scratch]
        raise KeyError(f"Only {' and '.join(shipped)} are pretrained from scratch, not {name!r}; "
                       f"the other stages are built from the base with `rlhf-kit build STAGE`.")
    fresh = stage_dir(name).with_name(f"{name}.from-scratch")
    if fresh.exists():  # left by an interrupted run: the lock of build_folder is not held on it
        shutil.rmtree(fresh)
    build_folder(fresh, lambda out: entry.from_scratch(out, progress=progress), name, embedded=True)
    removed = [s for s in built_from(name)[1:] if stage_dir(s).exists()]
    for old in [name, *removed]:
        if stage_dir(old).exists():
            shutil.rmtree(stage_dir(old))
    fresh.rename(stage_dir(name))
    return stage_dir(name), removed
