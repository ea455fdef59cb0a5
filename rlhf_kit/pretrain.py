"""Pretraining: a GPT learns to predict the next token of the toy world's internet.

Given tokens x_1..x_T, the model outputs logits for every position, and pretraining minimises the
average cross-entropy of each next token:

    loss = -1/(T-1) * sum_{t=1}^{T-1} log p(x_{t+1} | x_1..x_t)

That is all GPT-3 was trained to do, on far more text. Nothing in it asks the model to answer
questions, to tell the truth or to be polite; it learns whatever the text does.

Data: the corpus of ``world.py`` joined with ``<|endoftext|>`` into one token stream; each
training example is a random window of ``block_size`` tokens. Reads nothing; writes the
``base`` artifact (model + tokenizer + metadata). The package ships the result of this recipe
for ``base`` and ``big-base`` (``rlhf_kit/data/embedded/``), and the stages are installed from it
(``install_base``): pretraining takes minutes, and on another CPU it gives weights that differ in
their last bits, so shipping them gives every learner the model the lessons' figures come from.
Taught in ``course/01_next_token_prediction.ipynb``; the recipe is GPT-2's (Radford et al., 2019)
at a size a laptop can train.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .artifacts import SHIPPED
from .models import count_parameters, new_gpt, transformers_quiet
from .runtime import NonFiniteLoss, progress_bar, seed_everything
from .tokenizer import EOS, train_tokenizer
from .world import World


@dataclass
class PretrainConfig:
    """Everything that decides the embedded base model. Defaults: about 3 minutes on 2 CPU cores.

    Small batches and many steps: at the same number of tokens, 720 steps of 16 teach the model
    its world's facts far better than 360 steps of 32 (the true value most likely for 85 % of the
    facts instead of 45 %; ``bench/experiments/bench_knowledge.py``), and the later stages need that knowledge.
    """

    seed: int = 0  # world, corpus, initialisation and batches all follow from it
    n_documents: int = 12_000  # documents in the corpus (1k - 100k); ~28 tokens each
    vocab_size: int = 1024  # BPE vocabulary cap (256 - 8192); this small world needs ~850
    n_layer: int = 4  # transformer blocks (2 - 12)
    n_embd: int = 128  # width (64 - 768); a multiple of n_head
    n_head: int = 4  # attention heads (1 - 12)
    block_size: int = 128  # tokens of context (64 - 1024): room for a multi-turn chat later
    batch_size: int = 16  # examples per step (8 - 128)
    steps: int = 720  # optimiser steps (100 - 5000); 720 x 16 x 128 = 1.5M tokens
    lr: float = 4e-3  # peak learning rate (1e-4 - 6e-3), reached after warmup, then cosine decay
    warmup: int = 60  # linear warmup steps
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1  # AdamW decay on matrices (0 - 0.1)
    grad_clip: float = 1.0  # clip the global gradient norm (0.5 - 5)
    log_every: int = 10  # steps between history entries


# ----------------------------------------------------------------------------------------------
# 1. Data: one long stream of tokens, random windows from it
# ----------------------------------------------------------------------------------------------


def token_stream(tokenizer, documents: list[str]) -> torch.Tensor:
    """All documents as one 1-D tensor of ids, each followed by ``<|endoftext|>``."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for encoded in tokenizer(documents, add_special_tokens=False).input_ids:
        ids.extend(encoded)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def random_windows(stream: torch.Tensor, batch_size: int, block_size: int,
                   generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` windows of ``block_size`` consecutive tokens, shape (B, block_size)."""
    starts = torch.randint(0, len(stream) - block_size, (batch_size,), generator=generator)
    return torch.stack([stream[s : s + block_size] for s in starts.tolist()])


# ----------------------------------------------------------------------------------------------
# 2. The loss
# ----------------------------------------------------------------------------------------------


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from position t.

    logits: (B, T, V); input_ids: (B, T). The last position has no next token and the first
    token is never predicted, hence the shift by one.
    """
    predictions = logits[:, :-1, :]  # (B, T-1, V): what each position says comes next
    targets = input_ids[:, 1:]  # (B, T-1): what actually came next
    return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1))


def learning_rate(step: int, total_steps: int, lr: float, warmup: int, min_lr_ratio: float = 0.0,
                  warmup_offset: int = 0) -> float:
    """The learning rate of step ``step`` (from 0) of ``total_steps``: a linear warmup to ``lr``
    over ``warmup`` steps, then a cosine decay to ``lr * min_lr_ratio``.

    A warmup step s gets ``lr * (s + warmup_offset) / warmup``: offset 0 is Hugging Face's
    "cosine" schedule (the reward model's), whose first step has learning rate 0; offset 1
    (pretraining's) starts at ``lr / warmup`` and reaches ``lr`` a step earlier.
    """
    if step < warmup:
        return lr * (step + warmup_offset) / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


# ----------------------------------------------------------------------------------------------
# 3. Training
# ----------------------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and layer-norm gains). ``betas``
    default to torch's and Hugging Face's (the reward model's); pretraining passes GPT-3's (0.9, 0.95)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def train_pretrain(model, stream: torch.Tensor, config: PretrainConfig,
                   progress: bool = True) -> list[dict]:
    """Train ``model`` on random windows of ``stream``; returns the history of metric dicts.

    Raises ``NonFiniteLoss`` naming the step if the loss stops being a finite number.
    """
    generator = seed_everything(config.seed)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, betas=(0.9, 0.95))
    model.train()
    history: list[dict] = []
    tokens_per_step = config.batch_size * config.block_size
    start = time.perf_counter()
    bar = progress_bar(range(config.steps), desc="pretraining", disable=not progress)
    for step in bar:
        # 1. a batch of random windows of the token stream
        batch = random_windows(stream, config.batch_size, config.block_size, generator)
        batch = batch.to(model.device)  # (B, T)
        # 2. the loss of predicting every next token
        loss = next_token_loss(model(input_ids=batch).logits, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"The pretraining loss became {loss.item()} at step {step}: "
                                "lower the learning rate and train again.")
        # 3. one optimiser step at the scheduled learning rate
        lr = learning_rate(step, config.steps, config.lr, config.warmup, config.min_lr_ratio, warmup_offset=1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        # 4. metrics
        if step % config.log_every == 0 or step == config.steps - 1:
            elapsed = time.perf_counter() - start
            history.append({"step": step, "loss/train": loss.item(), "lr": lr,
                            "tokens": (step + 1) * tokens_per_step,
                            "tokens_per_second": (step + 1) * tokens_per_step / elapsed})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return history


# ----------------------------------------------------------------------------------------------
# 4. The embedded base model, end to end
# ----------------------------------------------------------------------------------------------


def build_base(out_dir: str | Path, config: PretrainConfig | None = None,
               progress: bool = True) -> dict:
    """World -> corpus -> tokenizer -> GPT -> pretraining -> ``save_pretrained`` into ``out_dir``.

    Returns the metadata (configuration, corpus size, final loss, run time); the caller writes it.
    """
    config = config or PretrainConfig()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    world = World(seed=config.seed)
    documents = world.corpus(config.n_documents)
    tokenizer = train_tokenizer(documents, vocab_size=config.vocab_size)
    stream = token_stream(tokenizer, documents)
    seed_everything(config.seed)
    model = new_gpt(len(tokenizer), config.n_layer, config.n_embd, config.n_head,
                    config.block_size, eos_token_id=tokenizer.eos_token_id)
    # A window of the token stream holds <|endoftext|>, which is also the pad token, so transformers
    # warns that the input "may be padded": it is not (every token is text). Saving draws a bar.
    with transformers_quiet(warnings=True):
        history = train_pretrain(model, stream, config, progress=progress)
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    final = history[-1]
    return {
        "config": asdict(config),
        "seed": config.seed,
        "corpus": {"documents": len(documents), "tokens": len(stream)},
        "parameters": count_parameters(model),
        "final_loss": final["loss/train"],
        "tokens_per_second": final["tokens_per_second"],
        "seconds": time.perf_counter() - started,
        "history": history,
    }


# ----------------------------------------------------------------------------------------------
# A bigger base model, for lesson 7's comparison
# ----------------------------------------------------------------------------------------------


def big_base_config(seed: int = 0) -> PretrainConfig:
    """The base model's recipe with twice the width: about four times the parameters.

    Same world, corpus, tokenizer, batches, steps and schedule; only the width changes (128 to 256,
    with 4 heads of 64). InstructGPT's headline was that people preferred the replies of its
    1.3-billion-parameter aligned model to those of the 175-billion-parameter GPT-3; lesson 7 puts
    the small aligned model of this course against this bigger base model in the same way.
    """
    return PretrainConfig(seed=seed, n_embd=256)


def build_big_base(out_dir: str | Path, config: PretrainConfig | None = None,
                   progress: bool = True) -> dict:
    """``build_base`` with ``big_base_config()``: the ``big-base`` stage."""
    return build_base(out_dir, config or big_base_config(), progress)



# ----------------------------------------------------------------------------------------------
# The shipped base models
# ----------------------------------------------------------------------------------------------

def shipped_metadata(stage: str) -> dict:
    """The metadata of a shipped model (its build: configuration, loss history, versions)."""
    return json.loads((SHIPPED / stage / "rlhf_kit.json").read_text())


def install_shipped(out_dir: str | Path, stage: str, config: PretrainConfig, progress: bool = True) -> dict:
    """Copy the shipped ``stage`` into ``out_dir``; returns its build's metadata, marked as such.

    Without shipped weights (a package built without its data), or when ``config`` is not the
    configuration they were made with, the model is pretrained here with ``config`` instead.
    """
    folder = SHIPPED / stage
    shipped = shipped_metadata(stage) if (folder / "rlhf_kit.json").exists() else {}
    if shipped.get("config") != asdict(config):
        return build_base(out_dir, config, progress)
    for file in folder.iterdir():
        if file.name != "rlhf_kit.json":
            shutil.copy2(file, Path(out_dir) / file.name)
    metadata = {k: v for k, v in shipped.items() if k not in ("stage", "versions", "embedded")}
    return {**metadata, "installed_from": str(folder), "built_with": shipped["versions"]}


def install_base(out_dir: str | Path, config: PretrainConfig | None = None, progress: bool = True) -> dict:
    """The ``base`` stage: the shipped base model (``build_base`` with the default configuration)."""
    return install_shipped(out_dir, "base", config or PretrainConfig(), progress)


def install_big_base(out_dir: str | Path, config: PretrainConfig | None = None,
                     progress: bool = True) -> dict:
    """The ``big-base`` stage: the shipped bigger base model (``build_big_base``)."""
    return install_shipped(out_dir, "big-base", config or big_base_config(), progress)
