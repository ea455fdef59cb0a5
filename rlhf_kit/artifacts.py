"""Artifacts: where each stage's output lives, and how a folder is written safely.

Each stage of the course writes one folder under ``artifacts_home()`` (``~/.cache/rlhf-kit``,
or ``$RLHF_KIT_HOME``)::

    embedded-v5/base/   the pretrained GPT and its tokenizer (lesson 1)
    embedded-v5/sft/    the fine-tuned assistant (lesson 3), and so on
    embedded-v5/big-base/  a base model four times bigger, on the same corpus (lesson 7)

The two pretrained stages, ``base`` and ``big-base``, are installed from the weights the package
ships (``SHIPPED``, made by the same recipe), so a learner's first reply comes in seconds. Which
stage is built from which, and how, is the table in ``stages.py``; this module only knows folders.

A folder holds what ``save_pretrained`` writes plus ``rlhf_kit.json``, a small metadata file
(configuration, seed, data size, final loss, package versions). A folder counts as ready only
when that file exists: it is written last.

``build_folder`` writes one folder. It is safe when two processes (two notebooks, or two test
workers) ask at once: the first takes a file lock and builds into a temporary folder that is
renamed into place when complete; the second waits for the lock and then finds the folder. A
kernel killed half-way leaves only a temporary folder, never a half-written stage.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from .runtime import artifacts_home, versions

FORMAT = "embedded-v5"
"""Bumped when the embedded world or model changes, so old caches are not reused by mistake."""

METADATA = "rlhf_kit.json"

SHIPPED = Path(__file__).parent / "data" / "embedded"
"""The ``base`` and ``big-base`` models as ``pretrain.build_base`` made them with the default
configurations, one folder each, with the metadata of their build (``rlhf_kit.json``)."""


class StageNotBuilt(FileNotFoundError):
    """An embedded stage asked for by ``load_model`` that is not built yet."""


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
                 verbose: bool = False, embedded: bool = False, shipped: bool = False) -> bool:
    """Write ``target`` with ``build(tmp) -> metadata`` unless it is complete; True if it built.

    The work goes into a temporary folder next to ``target``, renamed into place when the
    metadata is written, under a file lock: two processes asking at once build it once, and an
    interrupted build leaves no half-written folder behind. ``shipped`` says, when ``verbose``,
    that the stage is installed from the package rather than built.
    """
    target = Path(target)
    if (target / METADATA).exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / METADATA).exists():  # another process built it while we waited for the lock
            return False
        if verbose and shipped:
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


def embedded_folder(stage: str) -> Path:
    """The folder ``models.load_model`` reads for an embedded stage; nothing is built here.

    A built stage is read from the artifacts home. A shipped one (``base``, ``big-base``) that is
    not installed yet is read from the package itself. Any other raises ``StageNotBuilt``, whose
    sentence names the command that builds it.
    """
    if is_ready(stage):
        return stage_dir(stage)
    if (SHIPPED / stage / METADATA).exists():
        return SHIPPED / stage
    raise StageNotBuilt(f"The embedded {stage!r} stage is not built yet: build it with `rlhf-kit build "
                        f"{stage}` in a terminal, or with `ensure_stage({stage!r})` from rlhf_kit.stages.")
