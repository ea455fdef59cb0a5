"""Benchmark: fine-tune the embedded base model (SFT) and measure lesson 3's figures.

Prints, for the default ``SFTConfig`` on this machine (fixed seeds throughout):

* the wall time of the whole SFT build (loading the base model, demonstrations, TRL's set-up,
  training, saving) and of the training steps alone;
* on the behaviour world's held-out tasks (each asked 4 times at temperature 1, seed 0, as in
  lesson 1): the answer, false-statement and rudeness rates and the format rate of the base model
  (in plain text as in lesson 1, and through the chat template) and of the SFT model (chat template);
* single-turn versus multi-turn training: the SFT model against its single-turn twin (same
  replies, epochs and number of steps, ``sft.matched_single_turn``) on 200 held-out multi-turn
  conversations and on the held-out tasks asked alone: answer rate, rubric score, format.

Reads the ``base`` artifact (built first if missing, which takes minutes and is not timed).
Run: ``python bench/bench_sft.py`` (about 3 minutes on 2 quiet CPU cores). Nothing else should run.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time

import torch

from rlhf_kit import sft
from rlhf_kit.stages import ensure_stage
from rlhf_kit.evaluate import evaluate_chat, fault_rates
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.behaviours import BehaviourWorld


def rates(name: str, report, format_rate: float | None = None) -> str:
    line = (f"  {name:<28} answer {report.answer_rate:.3f}  false {report.false_rate:.3f}  "
            f"rude {report.rude_rate:.3f}  (n={report.n})")
    return line + (f"  format {format_rate:.3f}" if format_rate is not None else "")


def turn_rates(name: str, model, tokenizer, world: BehaviourWorld, dialogues) -> str:
    result = evaluate_chat(model, tokenizer, world, dialogues, name=name)
    alone = evaluate_chat(model, tokenizer, world, sft.single_questions(world.questions("heldout")),
                          samples_per_question=4, name=name)
    return (f"  {name:<28} conversations: answer {result.report.answer_rate:.3f}, rubric "
            f"{result.report.rubric_score:.2f}, format {result.format_rate:.3f}; tasks alone: answer "
            f"{alone.report.answer_rate:.3f}, rubric {alone.report.rubric_score:.2f}")


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    base_dir = ensure_stage("base")
    print("load average at start (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    config = sft.SFTConfig()
    world = BehaviourWorld(seed=0)
    heldout = world.questions("heldout")

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        metadata = sft.build_sft(folder, config, base=str(base_dir), progress=False)
        build = time.perf_counter() - start
        train_seconds = max(h["seconds"] for h in metadata["history"])
        steps = max(h["step"] for h in metadata["history"])
        print(f"\nSFT build: {build:.1f} s wall ({train_seconds:.1f} s of training, {steps} steps, "
              f"{metadata['examples']} conversations); final loss {metadata['final_loss']:.3f}, "
              f"held-out loss {metadata['final_eval_loss']:.3f}")
        sft_model, tokenizer = load_model(folder), load_tokenizer(folder)

        base_model, base_tokenizer = load_model(base_dir), load_tokenizer(base_dir)
        print("\nHeld-out questions, 4 samples each at temperature 1, seed 0:")
        base = fault_rates(base_model, base_tokenizer, world, heldout, samples_per_question=4, name="base")
        print(rates("base (plain text, lesson 1)", base))
        base_chat = evaluate_chat(base_model, base_tokenizer, world, sft.single_questions(heldout),
                                  samples_per_question=4, name="base")
        print(rates("base (chat template)", base_chat.report, base_chat.format_rate))
        chat = evaluate_chat(sft_model, tokenizer, world, sft.single_questions(heldout),
                             samples_per_question=4, name="SFT")
        print(rates("SFT (chat template)", chat.report, chat.format_rate))

        demonstrations = sft.demonstrations_for(world, config, tokenizer, sft_model)
        singles = sft.to_single_turn(demonstrations)
        twin = sft.matched_single_turn(config, len(demonstrations), len(singles))
        single_model, single_tokenizer = load_model(base_dir), load_tokenizer(base_dir)
        start = time.perf_counter()
        mix = sft.pretraining_text(world, single_tokenizer) if twin.pretrain_mix > 0 else None  # as the SFT model
        history = sft.train_sft(single_model, single_tokenizer, singles, twin, progress=False, pretrain_text=mix)
        print(f"\nSingle-turn twin: {len(singles)} examples in batches of {twin.batch_size}, "
              f"{max(h['step'] for h in history)} steps, {time.perf_counter() - start:.1f} s")

        dialogues = sft.heldout_dialogues(world, n=200)
        print(f"Held-out multi-turn conversations: {len(dialogues)}, temperature 1, seed 0; "
              f"held-out tasks alone: 4 samples each")
        print(turn_rates("multi-turn SFT", sft_model, tokenizer, world, dialogues))
        print(turn_rates("single-turn SFT", single_model, single_tokenizer, world, dialogues))
    print("\nload average at end (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
