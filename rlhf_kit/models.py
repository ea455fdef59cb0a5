"""Models: one way to load every stage's model, whatever it is.

The course never cares where a model came from. ``load_model(source)`` takes

* ``"embedded"`` - the kit's own small GPT, pretrained on the toy world, or with ``stage=`` one
  of its later stages (``stages.py`` builds them; this module only loads),
* a local folder written by ``save_pretrained`` (a stage artifact, or any saved model), or
* a Hugging Face hub id such as ``"gpt2"`` or ``"HuggingFaceTB/SmolLM2-135M"``,

and returns the model through the same ``from_pretrained`` call in every case. ``kind="reward"``
loads the body with a scalar head (``AutoModelForSequenceClassification`` with one label), which
is what the reward model and PPO's value model are.

Also here: ``new_gpt(...)``, the GPT-2-shaped architecture of the embedded model.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
)

from transformers.utils import logging as hf_logging

from .artifacts import SHIPPED, embedded_folder, embedded_home, read_metadata
from .runtime import pick_device

EMBEDDED = "embedded"


class ModelNotFound(FileNotFoundError):
    """A model source that is neither ``embedded``, a folder with a saved model, nor a hub id."""


def new_gpt(vocab_size: int, n_layer: int = 4, n_embd: int = 256, n_head: int = 4,
            n_positions: int = 128, eos_token_id: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2-shaped model (the architecture of the embedded default).

    Dropout is off: the corpus is small, the run is short, and determinism is easier to teach.
    """
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def resolve(source: str | Path, stage: str = "base") -> str:
    """Turn a model source into what ``from_pretrained`` accepts: a folder path or a hub id.

    ``"embedded"`` becomes the folder of the embedded model's ``stage``. Nothing is built here:
    a stage that is not built yet raises ``artifacts.StageNotBuilt``, whose sentence names the
    command that builds it (``stages.ensure_stage`` builds it from a notebook).
    """
    source = str(source)
    if source == EMBEDDED:
        return str(embedded_folder(stage))
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFound(
                f"{path} has no config.json: point at a folder written by save_pretrained, "
                "or use 'embedded' or a hub id such as 'gpt2'."
            )
        return str(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelNotFound(f"No model folder at {source}: check the path, or use 'embedded'.")
    return source  # a hub id; from_pretrained downloads it (needs a network the first time)


def is_embedded(path: str | Path) -> bool:
    """Whether a model folder holds the kit's embedded model or a stage built from it.

    Such a folder says so in its metadata (``stages.ensure_stage`` writes it), or lies among the
    embedded stages or the shipped models; a hub id, or any other folder, is not.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    return (bool(read_metadata(path).get("embedded"))
            or path.resolve().parent in (embedded_home().resolve(), SHIPPED.resolve()))


def load_tokenizer(source: str | Path = EMBEDDED, stage: str = "base"):
    """The tokenizer saved with a model. Hub tokenizers without a pad token get EOS as pad."""
    tokenizer = AutoTokenizer.from_pretrained(resolve(source, stage))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(source: str | Path = EMBEDDED, stage: str = "base", kind: str = "causal",
               device: str | torch.device | None = None, dtype: torch.dtype | None = None
               ) -> PreTrainedModel:
    """Load a causal LM (``kind="causal"``) or a one-score model (``kind="reward"``).

    A causal checkpoint loaded as ``kind="reward"`` keeps its body and gets a new scalar head;
    the head's pad token is set so that the score is read at the last real token.
    """
    if kind not in ("causal", "reward"):
        raise ValueError(f"kind must be 'causal' or 'reward', not {kind!r}.")
    path = resolve(source, stage)
    # The embedded model and its stages run on the CPU unless told otherwise (runtime.pick_device).
    device = pick_device(embedded=is_embedded(path)) if device is None else torch.device(device)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    # transformers draws a "Loading weights" bar on stderr; for a model of a few MB it is noise.
    # A causal checkpoint read as a reward model has no score head yet, so transformers would
    # report that head as missing: that is expected (it starts random and is trained), and the
    # report is left out. Any other load keeps its warnings.
    new_head = kind == "reward" and _is_causal_checkpoint(path)
    with transformers_quiet(warnings=new_head):
        if kind == "causal":
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
            if model.config.pad_token_id is None:
                model.config.pad_token_id = model.config.eos_token_id
    return model.to(device).eval()


def _is_causal_checkpoint(path) -> bool:
    """True when the checkpoint at ``path`` was saved as a causal LM (it has no score head)."""
    try:
        architectures = AutoConfig.from_pretrained(path).architectures or []
    except (OSError, ValueError):
        return False
    return any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)


@contextmanager
def transformers_quiet(warnings: bool = False):
    """Inside the block, transformers draws no progress bars (and, with ``warnings=True``, logs no
    warnings); its settings are restored after, even on an error."""
    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if warnings:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
