"""Artifacts: where each stage's output lives, and how a missing one is rebuilt.

Each stage of the course writes one folder under ``artifacts_home()`` (``~/.cache/rlhf-kit``,
or ``$RLHF_KIT_HOME``)::

    embedded-v4/base/   the pretrained GPT and its tokenizer (lesson 1)
    embedded-v4/sft/    the fine-tuned assistant (lesson 2), and so on
    embedded-v4/big-base/  a base model four times bigger, on the same corpus (lesson 7)

The two pretrained stages, ``base`` and ``big-base``, are installed from the weights the package
ships (``rlhf_kit/data/embedded/``, made by the same recipe; ``pretrain.install_base``), so a
learner's first reply comes in seconds; ``pretrain_from_scratch`` (``rlhf-kit build base
--from-scratch``) runs the recipe instead.

A folder holds what ``save_pretrained`` writes plus ``rlhf_kit.json``, a small metadata file
(configuration, seed, data size, final loss, package versions). A folder counts as ready only
when that file exists: it is written last.

``ensure_stage(stage)`` returns the folder of a stage, building it with the default
configuration when it is missing. Building is safe when two processes (two notebooks, or two
test workers) ask at once: the first takes a file lock and builds into a temporary folder that
is renamed into place when complete; the second waits for the lock and then finds the folder.
A kernel killed half-way leaves only a temporary folder, never a half-written stage.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from .runtime import artifacts_home, versions

FORMAT = "embedded-v4"
"""Bumped when the embedded world or model changes, so old caches are not reused by mistake."""

METADATA = "rlhf_kit.json"

# stage -> function(out_dir: Path) -> dict of metadata. Stage modules register themselves lazily
# (see _builders) so that importing artifacts does not import every stage.
Builder = Callable[[Path], dict]


def _builders() -> dict[str, Builder]:
    from . import alternatives, ppo, pretrain, reward, sft

    # The two pretrained models are installed from the weights the package ships (seconds);
    # ``pretrain_from_scratch`` runs the recipe instead (minutes).
    builders: dict[str, Builder] = {"base": pretrain.install_base, "sft": sft.build_sft,
                                    "reward": reward.build_reward}
    builders["ppo"] = ppo.build_ppo
    builders["dpo"] = alternatives.build_dpo  # lesson 7: after PPO, on the same data
    builders["grpo"] = alternatives.build_grpo
    builders["big-base"] = pretrain.install_big_base  # lesson 7: four times the base model's size
    return builders


def unknown_stage(stage: str) -> str:
    """The sentence that refuses a stage name the kit does not know."""
    return f"Unknown stage {stage!r}; the stages are: {', '.join(known_stages())}."


def known_stages() -> list[str]:
    """The names of the embedded model's stages, in the order they are built."""
    return list(_builders())


PRETRAINED = ("base", "big-base")
"""The stages that are pretrained from scratch; every other stage starts from ``base``."""


def embedded_home() -> Path:
    """The folder that holds every stage of the embedded model."""
    return artifacts_home() / FORMAT


def stage_dir(stage: str) -> Path:
    """The folder of a stage of the embedded model (it may not exist yet)."""
    return embedded_home() / stage


def is_ready(stage: str) -> bool:
    """True when the stage's folder is complete."""
    return (stage_dir(stage) / METADATA).exists()


def read_metadata(path: str | Path) -> dict:
    """The metadata of a stage folder (empty for a folder the kit did not write)."""
    file = Path(path) / METADATA
    return json.loads(file.read_text()) if file.exists() else {}


def write_metadata(path: str | Path, metadata: dict) -> None:
    """Write the metadata file (last, so that its presence marks the folder complete)."""
    data = {**metadata, "versions": versions()}
    (Path(path) / METADATA).write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


def build_folder(target: str | Path, build: Callable[[Path], dict], stage: str,
                 verbose: bool = False, embedded: bool = False) -> bool:
    """Write ``target`` with ``build(tmp) -> metadata`` unless it is complete; True if it built.

    The work goes into a temporary folder next to ``target``, renamed into place when the
    metadata is written, under a file lock: two processes asking at once build it once, and an
    interrupted build leaves no half-written folder behind.
    """
    target = Path(target)
    if (target / METADATA).exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / METADATA).exists():  # another process built it while we waited for the lock
            return False
        if verbose and stage in PRETRAINED:
            print(f"Installing the embedded '{stage}' model shipped with rlhf-kit (once, into {target}).")
        elif verbose:
            print(f"The embedded '{stage}' model is not built yet: building it now "
                  f"(once, into {target}).")
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=target.parent))
        try:
            metadata = build(tmp)
            # ``embedded`` marks the kit's own small model, which runs on the CPU (models.load_model)
            write_metadata(tmp, {"stage": stage, **metadata, **({"embedded": True} if embedded else {})})
            if target.exists():  # an incomplete folder left by an older kit
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return True


def ensure_stage(stage: str, verbose: bool = True) -> Path:
    """The folder of ``stage``, built with the default configuration if it is missing."""
    target = stage_dir(stage)
    if is_ready(stage):
        return target
    builders = _builders()
    if stage not in builders:
        raise KeyError(unknown_stage(stage))
    build_folder(target, builders[stage], stage, verbose, embedded=True)
    return target


def pretrain_from_scratch(stage: str = "base", progress: bool = True) -> tuple[Path, list[str]]:
    """Pretrain ``base`` or ``big-base`` with the kit's recipe, in place of the shipped weights.

    Pretraining on another CPU gives other weights in the last bits, so the stages built from
    the old base no longer follow from the new one: they are removed, and rebuilt from it when
    next asked for. The new model is built beside the old one and replaces it only when complete,
    so an interrupted run changes nothing. Returns the stage's folder and the stages removed.
    """
    from . import pretrain

    if stage not in PRETRAINED:
        raise KeyError(f"Only {' and '.join(PRETRAINED)} are pretrained from scratch, not {stage!r}; "
                       f"the other stages are built from the base with `rlhf-kit build STAGE`.")
    build = pretrain.build_base if stage == "base" else pretrain.build_big_base
    fresh = stage_dir(stage).with_name(f"{stage}.from-scratch")
    if fresh.exists():  # left by an interrupted run: the lock of build_folder is not held on it
        shutil.rmtree(fresh)
    build_folder(fresh, lambda out: build(out, progress=progress), stage, embedded=True)
    later = [] if stage == "big-base" else [s for s in _builders() if s not in PRETRAINED]
    removed = [s for s in later if stage_dir(s).exists()]
    for name in [stage, *removed]:
        if stage_dir(name).exists():
            shutil.rmtree(stage_dir(name))
    fresh.rename(stage_dir(stage))
    return stage_dir(stage), removed
