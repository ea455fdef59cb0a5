"""Runtime: seeds, devices and where artifacts live.

Every stage of the course starts here. Three decisions are made in one place so that no
other module has to guess:

* **seed** - ``seed_everything(seed)`` seeds Python, NumPy (when present) and torch, and turns
  on deterministic kernels, so that a rerun on the same CPU gives the same figures;
* **device** - ``pick_device()`` returns the CPU for the kit's embedded model, and CUDA, then
  Apple MPS, then the CPU for any other model; ``RLHF_KIT_DEVICE`` overrides both, and
  ``preferred_dtype(device)`` says whether bf16 is worth using there;
* **home** - ``artifacts_home()`` is the folder that holds every stage's model. It defaults to
  ``~/.cache/rlhf-kit`` and is overridden by the environment variable ``RLHF_KIT_HOME``.

And one of display: ``progress_bar`` is tqdm.auto's bar, which in a notebook turns into its final
line of text when it closes, so a saved notebook shows where the run ended instead of 0 %.

Nothing is decided at import time: each function reads the environment when it is called.
"""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import torch

HOME_ENV = "RLHF_KIT_HOME"
"""Environment variable that moves the artifacts folder (for example to a bigger disk)."""

MODEL_ENV = "RLHF_KIT_MODEL"
"""Environment variable naming the model every notebook starts from: ``embedded`` (the default),
a local folder, or a Hugging Face hub id such as ``gpt2``."""


DEVICE_ENV = "RLHF_KIT_DEVICE"
"""Environment variable that sets the device of every model (``cpu``, ``cuda``, ``cuda:1``, ``mps``),
overriding the choice ``pick_device`` makes."""


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or infinite loss. Every stage stops on it instead of carrying on."""


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed every random number generator the course uses and return a torch generator.

    With ``deterministic=True`` torch is asked for deterministic kernels (``warn_only`` so that a
    GPU op without a deterministic version warns instead of failing a learner's run).
    """
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for the kit itself
        pass
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def pick_device(prefer: str | None = None, embedded: bool = False) -> torch.device:
    """The device for a model: ``prefer`` if given, else ``$RLHF_KIT_DEVICE`` if set; else the CPU
    for the embedded model (``embedded=True``), and CUDA, then Apple MPS, then the CPU for others.

    The embedded models have one to a few million parameters: their matrices are too small to keep
    a GPU busy, so they run faster on the CPU, deterministically, and give the figures the lessons
    show. A hub model is a hundred times bigger or more, and needs the accelerator.
    """
    chosen = prefer or os.environ.get(DEVICE_ENV, "").strip()
    if chosen:
        return torch.device(chosen)
    if embedded:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def preferred_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware computes in it natively (recent GPUs), float32 everywhere else.

    On a CPU bf16 is emulated for most ops and slower than float32, so the course keeps float32.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def artifacts_home() -> Path:
    """The folder that holds every stage's artifacts (created on first use)."""
    root = os.environ.get(HOME_ENV)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "rlhf-kit"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_choice() -> str:
    """The model the notebooks start from: ``embedded`` unless ``RLHF_KIT_MODEL`` names another."""
    return os.environ.get(MODEL_ENV, "embedded").strip() or "embedded"


def versions() -> dict[str, str]:
    """Versions of the packages a run depends on, for metadata files and the environment check."""
    import importlib.metadata as md

    out = {}
    for name in ("rlhf-kit", "torch", "transformers", "trl", "tokenizers", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment_report() -> dict[str, str]:
    """What a learner's set-up looks like: Python, packages, device, threads, artifacts folder."""
    import platform

    model = model_choice()
    device = pick_device(embedded=model == "embedded")
    report = {"python": platform.python_version(), **versions(), "device": str(device),
              "dtype": str(preferred_dtype(device)).replace("torch.", ""),
              "cpu threads": str(torch.get_num_threads()), "artifacts": str(artifacts_home()),
              "model": model}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    return report


def progress_bar(iterable=None, **kwargs):
    """A tqdm.auto progress bar; in a notebook, replaced by its final line of text when it closes.

    A notebook widget's state is not saved with the notebook, so a saved bar would show the text it
    had when it was first drawn ("0/40"). This bar is displayed with a display id and, on
    ``close``, that output is replaced by the bar's last line ("PPO: 100%|...| 40/40 [00:40<00:00]"),
    which is what a saved notebook keeps. Outside a notebook it is tqdm's usual bar.
    """
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    if not issubclass(tqdm, notebook_tqdm) or kwargs.get("disable"):  # not in a notebook
        return tqdm(iterable, **kwargs)
    return _notebook_bar()(iterable, **kwargs)


@functools.cache
def _notebook_bar() -> type:
    """tqdm's notebook bar, displayed under a display id and replaced by its last line on close."""
    from IPython.display import display
    from tqdm.auto import tqdm

    class NotebookBar(tqdm):
        def __init__(self, iterable=None, **kwargs):
            super().__init__(iterable, display=False, **kwargs)
            self._handle = display(self.container, display_id=True)
            self._replaced = False

        def close(self):
            if self._replaced or self.disable:
                return super().close()
            self._replaced = True
            line = self.format_meter(**self.format_dict)
            super().close()
            self._handle.update({"text/plain": line}, raw=True)

    return NotebookBar
