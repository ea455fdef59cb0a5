"""Supervised fine-tuning (SFT): the base model learns to answer from demonstrations.

A pretrained model continues text; it does not know it is in a conversation. InstructGPT
(Ouyang et al., 2022) began by paying people to write the answers they wanted for real prompts;
for ChatGPT (OpenAI, 2022) they wrote whole conversations, playing both the user and the
assistant. Fine-tuning on those *demonstrations* is supervised learning: the model is shown the
reply a person wrote and trained to predict it, token by token.

The loss is the pretraining loss restricted to the assistant's tokens. For a conversation
rendered by the chat template as tokens x_1..x_T, with ``loss_mask`` m_t = 1 on every token the
assistant wrote (its closing ``<|end|>`` included) and 0 on the system and user turns,

    loss = - sum_t m_t * log p(x_t | x_<t)  /  sum_t m_t

with both sums running over every conversation of a batch. The model reads the whole
conversation but is only graded on the assistant's turns: it should learn to answer questions,
not to write them.

Data: conversations on the behaviour world's ``sft`` tasks, written by simulated writers with
their own habits (``behaviours.WRITERS``): some polite, some curt, most rambling, most inventing an
answer about someone they never heard of, most declining to insult. SFT learns the assistant's
format from all of them and the behaviours people prefer only as often as the writers showed
them; what is left is for the rankings (lesson 4). ``heldout`` tasks never appear. The same answers cut into single
prompt->completion pairs make the single-turn set that the lesson compares with. The
demonstrations, and the checks a bad one fails, are written in ``demonstrations.py``.
Training: TRL's ``SFTTrainer`` with ``assistant_only_loss=True``, which finds the assistant's
tokens through the ``{% generation %}`` markers of the chat template. ``SFTConfig.pretrain_mix``
(1.0 by default) adds the pretraining loss on the world's internet at every step, which keeps
facts the demonstrations never mention (``bench/experiments/bench_sft_mix.py``). Reads the ``base``
artifact; writes the ``sft`` artifact. Taught in ``course/03_demonstrations_sft.ipynb``.
"""

from __future__ import annotations

import html
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
import trl
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from . import trainers
from .artifacts import read_metadata
from .demonstrations import (build_demonstrations, chat_ids, encode, render, to_single_turn,
                             validate_conversations)
from .demonstrations import (  # noqa: F401 (the lesson's demonstrations, written in demonstrations.py)
    OPENER, EmptyTurn, InvalidDemonstration, NotEndingWithAssistant, TooLong, WrongRole, as_messages,
    check_demonstration, heldout_dialogues, single_questions)
from .evaluate import ChatReport, evaluate_chat, kept_chat_format  # noqa: F401 (the lesson's evaluation)
from .models import load_model, load_tokenizer
from .pretrain import next_token_loss, random_windows, token_stream
from .runtime import seed_everything
from .sampling import context_length
from .tokenizer import ASSISTANT, CHAT_TEMPLATE, END, SYSTEM, USER
from .behaviours import BehaviourWorld
from .world import World


@dataclass
class SFTConfig:
    """Everything that decides the SFT model. Defaults: about 90 seconds on 2 CPU cores.

    Not TRL's ``trl.SFTConfig``: this one holds the few settings the course varies, and
    ``trl_arguments`` translates it into TRL's many.
    """

    seed: int = 0  # demonstrations, batch order and the held-out dialogues all follow from it
    n_conversations: int = 600  # conversations the writers write on the world's sft tasks (100 - 5000)
    max_exchanges: int = 3  # user/assistant exchanges per conversation (1 - 5)
    multi_turn: bool = True  # False: train on the single-turn prompt->completion set instead
    epochs: float = 5.0  # passes over the demonstrations (1 - 10)
    max_steps: int = 0  # stop after this many optimiser steps instead (0: the epochs decide)
    batch_size: int = 8  # conversations per optimiser step (4 - 64); small batches, more updates
    lr: float = 5e-4  # peak learning rate (1e-5 for big hub models - 1e-3); higher forgets more facts
    warmup: float = 0.05  # share of the steps spent warming the learning rate up (0 - 0.1)
    weight_decay: float = 0.0  # AdamW decay (0 - 0.1); the run is too short to need it
    grad_clip: float = 1.0  # clip the global gradient norm (0.5 - 5)
    max_length: int = 128  # tokens per conversation (64 - 2048); at most the model's context
    log_every: int = 5  # steps between history entries of the training loss
    n_eval: int = 64  # held-out conversations for the validation loss (0: none)
    eval_every: int = 20  # steps between validation losses
    pretrain_mix: float = 1.0  # weight of a next-token loss on the world's internet, added every step (0: none - 1)
    pretrain_batch: int = 8  # windows of internet text per step when pretrain_mix > 0 (4 - 32)


# ----------------------------------------------------------------------------------------------
# 1. The loss mask and the SFT loss
# ----------------------------------------------------------------------------------------------
# The demonstrations and their validation are in demonstrations.py, with render, encode and
# chat_ids (a conversation as the chat template writes it), which the mask reads.


def loss_mask(tokenizer, messages: list[dict]) -> torch.Tensor:
    """1 on every token the assistant wrote, 0 elsewhere: shape (T,), aligned with ``chat_ids``.

    An assistant turn's tokens are the ones its message adds to the rendered conversation after
    its role tag: from the first token of its words through its end-of-turn token (a model must
    learn when to stop). System and user turns, role tags included, stay 0.
    """
    ids = chat_ids(tokenizer, messages)
    mask = torch.zeros(len(ids), dtype=torch.long)  # (T,)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # Tokens before the assistant's words: the earlier turns and its "<|assistant|>" tag.
        before = encode(tokenizer, render(tokenizer, messages[:i], add_generation_prompt=True))
        # Tokens up to the end of its turn.
        through = encode(tokenizer, render(tokenizer, messages[: i + 1]))
        if ids[: len(through)] != through or through[: len(before)] != before:
            raise ValueError("This chat template does not render a conversation turn by turn, so "
                             "the mask cannot be read off its prefixes; use the template's "
                             "{% generation %} mask (return_assistant_tokens_mask=True) instead.")
        mask[len(before) : len(through)] = 1
    return mask


MASK_COLOURS = {1: "#b7e4c7", 0: "#e9ecef"}  # green: counts in the loss; grey: context only


def show_loss_mask(tokenizer, messages: list[dict]):
    """The rendered conversation token by token, each token coloured by its ``loss_mask``.

    Green tokens count in the loss, grey ones are only read. Hovering a token shows its id and
    mask. Each turn starts a new line here for readability (the template writes them back to
    back). Returns an ``IPython.display.HTML`` object, the same for the same input.
    """
    from IPython.display import HTML  # only notebooks need it

    ids, mask = chat_ids(tokenizer, messages), loss_mask(tokenizer, messages)
    special = set(tokenizer.all_special_ids)
    end = tokenizer.convert_tokens_to_ids(END)
    spans = []
    for token, counts in zip(ids, mask.tolist()):
        text = html.escape(tokenizer.decode([token]))
        weight = "font-weight:bold;" if token in special else ""
        spans.append(f'<span title="id {token}, loss_mask {counts}" style="background:'
                     f'{MASK_COLOURS[counts]};{weight}padding:1px 2px;margin:1px;'
                     f'border-radius:3px;white-space:pre">{text}</span>')
        if token == end:
            spans.append("<br>")
    legend = (f'<span style="background:{MASK_COLOURS[1]};padding:1px 4px">counts in the loss</span> '
              f'<span style="background:{MASK_COLOURS[0]};padding:1px 4px">read, not graded</span>'
              f" &nbsp; {int(mask.sum())} of {len(ids)} tokens count.")
    return HTML(f'<div style="font-family:monospace;line-height:2">{"".join(spans)}</div>'
                f'<div style="font-family:sans-serif;font-size:90%">{legend}</div>')


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token, over the tokens where ``loss_mask`` is 1.

    logits: (B, T, V); labels: (B, T), the conversation's token ids; loss_mask: (B, T). Position
    t predicts token t+1, so the mask of the *predicted* token decides whether a prediction
    counts. The mean is over all counted tokens of the batch (as TRL computes it), not per row.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2] or loss_mask.shape != labels.shape:
        raise ValueError(f"Expected logits (B, T, V) and labels, loss_mask (B, T); got "
                         f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(loss_mask.shape)}.")
    predictions = logits[:, :-1, :]  # (B, T-1, V): what each position says comes next
    targets = labels[:, 1:]  # (B, T-1): what actually came next
    weights = loss_mask[:, 1:].to(predictions.dtype)  # (B, T-1): 1 where that token is graded
    nll = F.cross_entropy(predictions.transpose(1, 2), targets, reduction="none")  # (B, T-1)
    return (nll * weights).sum() / weights.sum().clamp(min=1)  # a batch with no graded token: 0


# ----------------------------------------------------------------------------------------------
# 2. Training with TRL's SFTTrainer
# ----------------------------------------------------------------------------------------------


def prepare_chat_template(model, tokenizer, verbose: bool = True) -> None:
    """Make sure the tokenizer's chat template marks the assistant's tokens (changed in place).

    The embedded tokenizer already does. A hub tokenizer whose template has no
    ``{% generation %}`` markers gets TRL's patched version of its template when TRL knows it
    (Qwen, Llama 3, Gemma, Phi...); one with no template, or an unknown one, gets the kit's
    template and its turn tokens, and the model gets embeddings for those new tokens, which SFT
    then trains.
    """
    template = tokenizer.chat_template
    if template and has_generation_markers(template):
        return
    if template:
        try:
            tokenizer.chat_template = get_training_chat_template(tokenizer) or template
            if verbose:
                print("The tokenizer's chat template had no {% generation %} markers: "
                      "using TRL's training version of it.")
            return
        except ValueError:  # a template TRL cannot patch
            pass
    added = tokenizer.add_special_tokens({"extra_special_tokens": [SYSTEM, USER, ASSISTANT, END]},
                                         replace_extra_special_tokens=False)
    if added:
        model.resize_token_embeddings(len(tokenizer))
    tokenizer.chat_template = CHAT_TEMPLATE
    if verbose:
        print(f"The tokenizer had no usable chat template: using the kit's, with {added} new "
              "turn tokens whose embeddings SFT will train.")


def trl_arguments(config: SFTConfig, output_dir: str, device: torch.device) -> trl.SFTConfig:
    """The kit's config in TRL's terms, with the CPU-friendly choices the kit makes for you."""
    return trl.SFTConfig(
        output_dir=output_dir,  # nothing is saved there (save_strategy="no")
        seed=config.seed,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,  # -1: Trainer's "not set"
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.lr,  # TRL's default, 2e-5, is for big pretrained models
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup,  # a float below 1 is a share of the steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.grad_clip,
        max_length=config.max_length,
        assistant_only_loss=True,  # labels are -100 outside the {% generation %} markers
        logging_steps=config.log_every,
        logging_first_step=True,
        eval_strategy="steps" if config.n_eval else "no",
        eval_steps=config.eval_every,
        eval_on_start=bool(config.n_eval),  # the validation curve starts at step 0
        **trainers.cpu_arguments(device),
    )


class _SFTTrainer(trainers.StopOnNonFinite, trl.SFTTrainer):
    """TRL's SFTTrainer that stops at the first non-finite training loss, and can mix in pretraining.

    With ``pretrain_stream`` set, every training step also reads ``pretrain_batch`` random windows
    of pretraining text and adds ``pretrain_mix`` times their next-token loss (the pretraining
    loss of lesson 1) to the demonstrations' loss. Demonstrations about a few facts otherwise
    overwrite much of what the base model knew about the rest; the added loss keeps it.
    InstructGPT mixed pretraining gradients into PPO for the same reason ("PPO-ptx").
    """

    pretrain_stream: torch.Tensor | None = None
    pretrain_mix: float = 0.0
    pretrain_batch: int = 8
    pretrain_generator: torch.Generator | None = None
    non_finite = "The SFT loss became {loss} at step {step}: lower the learning rate and train again."

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training and self.pretrain_stream is not None and self.pretrain_mix > 0:
            ids = random_windows(self.pretrain_stream, self.pretrain_batch,
                                 min(len(self.pretrain_stream) - 1, self.args.max_length),
                                 self.pretrain_generator).to(model.device)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            pretrain_loss = next_token_loss(logits.float(), ids)
            self._pretrain_losses.append(pretrain_loss.item())
            loss = loss + self.pretrain_mix * pretrain_loss
            result = (loss, *result[1:]) if return_outputs else loss
            self.check_finite(model, loss)  # the demonstrations' loss alone is checked before
        return result

    def log(self, logs: dict, *args, **kwargs) -> None:
        # TRL's "loss" is the mean of what compute_loss returned since the last log; with pretraining
        # mixed in it is split again into the demonstrations' loss ("loss") and "pretrain_loss".
        if "loss" in logs and getattr(self, "_pretrain_losses", None):
            logs["pretrain_loss"] = sum(self._pretrain_losses) / len(self._pretrain_losses)
            logs["loss"] -= self.pretrain_mix * logs["pretrain_loss"]
            self._pretrain_losses.clear()
        super().log(logs, *args, **kwargs)


def _record(state, logs: dict, seconds: float) -> dict | None:
    """The history entry of one of Trainer's logs: the training loss and its company, or the
    validation loss."""
    if "loss" in logs:
        return {"step": state.global_step, "epoch": logs.get("epoch"), "loss/train": logs["loss"],
                "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                "sft/token_accuracy": logs.get("mean_token_accuracy"), "tokens": logs.get("num_tokens"),
                "seconds": seconds,
                **({"loss/pretrain": logs["pretrain_loss"]} if "pretrain_loss" in logs else {})}
    if "eval_loss" in logs:
        return {"step": state.global_step, "loss/eval": logs["eval_loss"], "seconds": seconds}
    return None


def make_trainer(model, tokenizer, examples: list, config: SFTConfig, output_dir: str,
                 eval_examples: list | None = None, progress: bool = True,
                 pretrain_text: torch.Tensor | None = None) -> trl.SFTTrainer:
    """An ``SFTTrainer`` ready to ``train()``: the data is already validated (see ``train_sft``).

    ``pretrain_text`` (a 1-D tensor of token ids, see ``pretraining_text``) is what
    ``config.pretrain_mix`` mixes in.
    """
    if config.pretrain_mix > 0 and pretrain_text is None:
        raise ValueError("pretrain_mix is above 0 but no pretraining text was given: pass "
                         "pretrain_text=sft.pretraining_text(world, tokenizer), or set pretrain_mix=0.")
    train = datasets.Dataset.from_list(_as_records(examples))
    evaluation = datasets.Dataset.from_list(_as_records(eval_examples)) if eval_examples else None
    if evaluation is None:
        config = SFTConfig(**{**asdict(config), "n_eval": 0})
    trainer = trainers.make(_SFTTrainer, trainers.Progress(progress, "fine-tuning (SFT)", _record),
                            model=model, args=trl_arguments(config, output_dir, model.device),
                            train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer)
    if config.pretrain_mix > 0:
        trainer.pretrain_stream, trainer.pretrain_mix = pretrain_text, config.pretrain_mix
        trainer.pretrain_batch, trainer._pretrain_losses = config.pretrain_batch, []
        trainer.pretrain_generator = torch.Generator().manual_seed(config.seed)
    return trainer


def pretraining_text(world: World, tokenizer, n_documents: int = 12_000) -> torch.Tensor:
    """The world's internet as one stream of token ids: the text ``pretrain_mix`` mixes into SFT.

    For the embedded model it is the very text its base stage read; a hub model reads it here for
    the first time, and learns the world's facts from it alongside the demonstrations.
    """
    return token_stream(tokenizer, world.corpus(n_documents))


def _as_records(examples: list) -> list[dict]:
    """Examples as dataset rows: conversations become ``{"messages": ...}``."""
    return [example if isinstance(example, dict) else {"messages": example} for example in examples]


def train_sft(model, tokenizer, examples: list, config: SFTConfig | None = None,
              eval_examples: list | None = None, progress: bool = True,
              drop_invalid: bool = False, pretrain_text: torch.Tensor | None = None) -> list[dict]:
    """Fine-tune ``model`` on demonstrations with TRL; returns the history of metric dicts.

    ``examples`` are conversations (lists of messages, or ``{"messages": ...}``) or single-turn
    ``{"prompt": ..., "completion": ...}`` examples. Raises ``InvalidDemonstration`` for a bad
    example (unless ``drop_invalid``) and ``NonFiniteLoss`` if the loss stops being finite.
    ``pretrain_text`` is the token stream that ``config.pretrain_mix`` mixes in (``pretraining_text``).
    """
    config = config or SFTConfig()
    seed_everything(config.seed)
    # 1. a chat template that marks the assistant's tokens
    prepare_chat_template(model, tokenizer, verbose=progress)
    context = context_length(model)
    if context and config.max_length > context:
        config = SFTConfig(**{**asdict(config), "max_length": context})
    # 2. validation: every example is a well-formed conversation that fits the context
    examples = validate_conversations(examples, tokenizer, config.max_length, drop_invalid, verbose=progress)
    if eval_examples:
        eval_examples = validate_conversations(eval_examples, tokenizer, config.max_length,
                                               drop_invalid=True, verbose=False)
    # 3. TRL tokenizes, masks (labels = -100 outside the assistant's turns), pads and trains
    with tempfile.TemporaryDirectory(prefix="rlhf-kit-sft-") as output_dir:
        trainer = make_trainer(model, tokenizer, examples, config, output_dir, eval_examples, progress,
                               pretrain_text)
        try:
            history = trainers.train(trainer)
        finally:
            # TRL patched model.forward with a fused loss head; generation and saving use the original.
            model.__dict__.pop("forward", None)
    model.eval()
    return history


def demonstrations_for(world: BehaviourWorld, config: SFTConfig, tokenizer=None, model=None) -> list:
    """The training examples a configuration asks for: multi-turn conversations or single turns.

    With a ``tokenizer`` (and a ``model`` for its context) conversations are fitted to
    ``config.max_length``; the single-turn set is cut from the same fitted conversations.
    """
    max_length = min(config.max_length, (context_length(model) if model is not None else None)
                     or config.max_length)
    conversations = build_demonstrations(world, config.n_conversations, "sft", config.max_exchanges,
                                         config.seed, tokenizer, max_length)
    return conversations if config.multi_turn else to_single_turn(conversations)


def matched_single_turn(config: SFTConfig, n_conversations: int, n_examples: int) -> SFTConfig:
    """The single-turn twin of a multi-turn run: same answers, same epochs, same number of steps.

    Cutting ``n_conversations`` into ``n_examples`` single turns gives more, shorter examples.
    Batches of proportionally more of them keep the number of batches per epoch (up to
    rounding, which ``max_steps`` evens out), so both runs make as many updates and grade about
    as many answer tokens in each: the only difference left is whether the model sees the
    earlier turns.
    """
    batches = math.ceil(n_conversations / config.batch_size)  # per epoch, in the multi-turn run
    steps = config.max_steps or math.ceil(batches * config.epochs)
    return replace(config, multi_turn=False, batch_size=math.ceil(n_examples / batches),
                   max_steps=steps)


def build_sft(out_dir: str | Path, config: SFTConfig | None = None, *, base: str | Path,
              progress: bool = True) -> dict:
    """Base model -> demonstrations -> SFT -> ``save_pretrained`` into ``out_dir``.

    ``base`` is the base model: the ``base`` stage's folder, another model folder, or a hub id.
    Returns the metadata (configuration, data size, final loss, run time).
    """
    config = config or SFTConfig()
    base_dir = Path(base)
    started = time.perf_counter()
    model = load_model(base_dir)
    tokenizer = load_tokenizer(base_dir)
    # The demonstrations must come from the world the base model read about.
    world = BehaviourWorld(seed=read_metadata(base_dir).get("seed", 0))
    examples = demonstrations_for(world, config, tokenizer, model)
    max_length = min(config.max_length, context_length(model) or config.max_length)
    eval_examples = build_demonstrations(world, config.n_eval, "heldout", config.max_exchanges,
                                         config.seed + 1, tokenizer, max_length)
    base_config = read_metadata(base_dir).get("config", {})
    pretrain_text = (pretraining_text(world, tokenizer, base_config.get("n_documents", 12_000))
                     if config.pretrain_mix > 0 else None)
    history = train_sft(model, tokenizer, examples, config, eval_examples, progress,
                        pretrain_text=pretrain_text)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    train = [h for h in history if "loss/train" in h]
    evals = [h for h in history if "loss/eval" in h]
    return {
        "config": asdict(config),
        "seed": world.seed,  # the world's seed, as in the base model's metadata
        "base": str(base_dir),
        "examples": len(examples),
        "final_loss": train[-1]["loss/train"],
        "final_eval_loss": evals[-1]["loss/eval"] if evals else None,
        "seconds": time.perf_counter() - started,
        "history": history,
    }
