"""The glue between the kit's stages and TRL's trainers (SFT, the reward model, DPO and GRPO).

Every stage that trains with TRL uses its trainer the same way, and this module is that way:

* ``cpu_arguments(device)``: the trainer arguments every stage shares. TRL's defaults are made
  for big models on GPUs (bf16, activation checkpointing); a small model on a CPU needs others.
* ``StopOnNonFinite``: mixed into a TRL trainer, it stops at the first loss that is not a finite
  number, where the loss is computed, before ``backward``. Trainer's logs average the loss over
  several steps and, by default, replace a NaN by earlier values, so a check on the logs would
  come late, after the weights are spoiled, or never.
* ``Progress``: one progress bar (``runtime.progress_bar``), and the Trainer's logs turned into the kit's history, a list
  of metric dicts (``record`` decides what an entry holds).
* ``make`` builds a trainer with these, without ``datasets``' bars or Trainer's printed logs;
  ``train`` runs it and returns the history.

The stage modules keep what is theirs: the TRL configuration of their own settings, the data,
and the message a non-finite loss gives.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import datasets
import torch
from transformers import PrinterCallback, TrainerCallback

from .runtime import NonFiniteLoss, preferred_dtype, progress_bar

Record = Callable[[object, dict, float], "dict | None"]
"""``record(state, logs, seconds)``: the history entry for one of Trainer's logs, or None to skip it."""


def cpu_arguments(device: torch.device) -> dict:
    """Trainer arguments every stage shares: what a CPU (or any device) needs, and no files written."""
    return dict(
        # TRL defaults to bf16 (which raises on a CPU without use_cpu=True, and is slow there) and
        # to activation checkpointing (20 % slower; a small model does not need the memory).
        bf16=preferred_dtype(device) == torch.bfloat16,
        use_cpu=device.type == "cpu",  # else the Trainer moves a CPU model to any GPU present
        activation_checkpointing=False,
        logging_nan_inf_filter=False,  # by default Trainer replaces a NaN loss in its logs
        save_strategy="no",  # nothing is written to output_dir
        report_to="none",
        disable_tqdm=True,  # the kit draws its own bar (Progress)
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",  # pinned memory only helps copies to a GPU
    )


class StopOnNonFinite:
    """Mixed into a TRL trainer (``class T(StopOnNonFinite, trl.XTrainer)``): a training loss that
    is not finite raises ``NonFiniteLoss`` with ``non_finite``, formatted with the loss, the step
    and the number of steps."""

    non_finite = "The loss became {loss} at step {step}: lower the learning rate and train again."

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.check_finite(model, result[0] if return_outputs else result)
        return result

    def check_finite(self, model, loss: torch.Tensor) -> None:
        if model.training and not torch.isfinite(loss):
            raise NonFiniteLoss(self.non_finite.format(loss=loss.item(), step=self.state.global_step + 1,
                                                       steps=self.state.max_steps))


class Progress(TrainerCallback):
    """A progress bar (``runtime.progress_bar``), and the Trainer's logs turned into the kit's history of metric dicts."""

    def __init__(self, progress: bool, description: str, record: Record):
        self.progress, self.description, self.record = progress, description, record
        self.history, self.bar, self.start = [], None, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = progress_bar(total=state.max_steps, desc=self.description, disable=not self.progress)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        entry = self.record(state, logs, time.perf_counter() - self.start)
        if entry is not None:
            self.history.append(entry)
        if "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


def renamed(keys: dict[str, str]) -> Record:
    """A ``record`` for training logs only: step, loss, learning rate, seconds, and TRL's ``keys``
    (``{our name: TRL's name}``) where the log has them."""

    def record(state, logs: dict, seconds: float) -> dict | None:
        if "loss" not in logs:
            return None
        entry = {"step": state.global_step, "loss/train": logs["loss"], "lr": logs.get("learning_rate"),
                 "seconds": seconds}
        entry.update({ours: logs[theirs] for ours, theirs in keys.items() if theirs in logs})
        return entry

    return record


@contextlib.contextmanager
def quiet_datasets():
    """Hide the progress bars of ``datasets`` (TRL tokenizes with ``map``), then restore them."""
    were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not were_disabled:
            datasets.enable_progress_bars()


def make(trainer_class: type, progress: Progress, **kwargs):
    """``trainer_class(**kwargs)`` with ``progress`` as its only callback that prints."""
    with quiet_datasets():
        trainer = trainer_class(callbacks=[progress], **kwargs)
    trainer.remove_callback(PrinterCallback)  # it would print every log as a dict
    return trainer


def progress_of(trainer) -> Progress:
    """The ``Progress`` callback of a trainer made by ``make``."""
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, Progress))


def train(trainer) -> list[dict]:
    """``trainer.train()`` without ``datasets``' bars; the bar is closed even on an error.
    Returns the history its ``Progress`` recorded."""
    callback = progress_of(trainer)
    try:
        with quiet_datasets():
            trainer.train()
    finally:
        callback.close()
    return callback.history
