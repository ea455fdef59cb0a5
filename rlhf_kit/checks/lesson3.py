"""Lesson 3 (demonstrations and supervised fine-tuning): the checks of ``loss_mask`` (which tokens
of a conversation the SFT loss counts), ``sft_loss`` and ``format_chat`` (the chat template by
hand), against ``rlhf_kit.sft`` and the kit's chat template.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .framework import Exercise, Inputs, Mistake, TextExercise, draw_int


# These checks need a tokenizer with the kit's chat template. The notebook passes its own; on
# their own (tests, EXERCISES) they use a small one trained in about a second on the toy world,
# so that no stage has to be built. Conversations are drawn from the world's questions.


class _Named:
    """A tokenizer shown by a short name in check messages (its repr is pages long)."""

    def __init__(self, tokenizer: Any, name: str = "tokenizer"):
        self._tokenizer, self._name = tokenizer, name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._tokenizer, attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def __repr__(self) -> str:
        return self._name


_SMALL_TOKENIZER: list[Any] = []


def _small_tokenizer() -> Any:
    """A byte-level BPE tokenizer with the kit's template, trained once on 400 world documents."""
    if not _SMALL_TOKENIZER:
        from ..tokenizer import train_tokenizer
        from ..world import World

        _SMALL_TOKENIZER.append(_Named(train_tokenizer(World(seed=0).corpus(400), vocab_size=400)))
    return _SMALL_TOKENIZER[0]


SYSTEM_PROMPTS = ("You are a helpful assistant.", "Be brief and polite.", "Answer the question.",
                  "Tell the truth.")
THANKS = ("Thanks!", "Thank you.")
WELCOME = ("You're welcome.", "Glad to help.")


def _draw_conversation(generator: torch.Generator, ends_with_assistant: bool = True) -> list[dict]:
    """A random conversation: maybe a system message, then 1 to 3 questions and true answers."""
    from ..world import World

    def pick(options):
        return options[int(torch.randint(len(options), (), generator=generator))]

    questions = World(seed=0).questions("sft")
    messages = []
    if float(torch.rand((), generator=generator)) < 0.4:
        messages.append({"role": "system", "content": pick(SYSTEM_PROMPTS)})
    for _ in range(int(torch.randint(1, 4, (), generator=generator))):
        if float(torch.rand((), generator=generator)) < 0.15:
            user, assistant = pick(THANKS), pick(WELCOME)
        else:
            question = pick(questions)
            user, assistant = question.text, question.reference
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages if ends_with_assistant else messages[:-1]


# -- the loss mask -------------------------------------------------------------------------------


def _template_pieces(tokenizer: Any, messages: list[dict]) -> list[tuple[list[int], str, str]]:
    """The kit's template piece by piece: (ids, role, part), part being tag, content or end."""
    from ..tokenizer import END

    pieces = []
    for message in messages:
        for part, text in (("tag", f"<|{message['role']}|>"), ("content", message["content"]),
                           ("end", END)):
            pieces.append((tokenizer(text, add_special_tokens=False).input_ids, message["role"], part))
    return pieces


def _mask_counting(name: str, rule: Callable[[str, str, bool], bool]) -> Callable[..., torch.Tensor]:
    """A wrong loss mask, ``name``, that counts a piece when ``rule(role, part, is_last_turn)``."""
    def mask(tokenizer, messages):
        pieces = _template_pieces(tokenizer, messages)
        last = max((i for i, (_, role, _) in enumerate(pieces) if role == "assistant"), default=-1)
        values = []
        for i, (ids, role, part) in enumerate(pieces):
            values += [int(rule(role, part, last - 2 <= i <= last))] * len(ids)
        return torch.tensor(values, dtype=torch.long)

    mask.__name__ = f"_loss_mask_{name}"
    return mask


def _loss_mask_exercise(tokenizer: Any = None) -> Exercise:
    def tokenizer_to_use():
        return _small_tokenizer() if tokenizer is None else _Named(tokenizer)

    def draw(generator):
        return {"tokenizer": tokenizer_to_use(), "messages": _draw_conversation(generator)}

    def edges():
        t = tokenizer_to_use()
        return [
            # one exchange, nothing else
            {"tokenizer": t, "messages": [{"role": "user", "content": "Where does Alice live?"},
                                          {"role": "assistant", "content": "Alice lives in Ashford."}]},
            # a conversation that ends with the user's turn: nothing to learn, all zeros
            {"tokenizer": t, "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi"}]},
            # five exchanges
            {"tokenizer": t, "messages": [m for _ in range(5) for m in (
                {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "Glad to help."})]},
        ]

    return Exercise(
        name="loss_mask",
        reference="rlhf_kit.sft:loss_mask",
        draw=draw,
        edge_cases=edges,
        mistakes=(
            Mistake("loss_mask leaves out the <|end|> that closes each assistant turn: count it "
                    "(it is the assistant's last token), or the model never learns to stop.",
                    _mask_counting("without_end",
                                   lambda role, part, last: role == "assistant" and part == "content")),
            Mistake("loss_mask counts the <|assistant|> tag: the template writes the tag (it ends "
                    "the prompt the model is given), so only the words after it and the closing "
                    "<|end|> count.",
                    _mask_counting("with_tag", lambda role, part, last: role == "assistant"),
                    _mask_counting("with_tag_without_end",
                                   lambda role, part, last: role == "assistant" and part != "end")),
            Mistake("loss_mask counts every token: the system and user turns are context the model "
                    "reads, not text it should learn to write, so they are 0.",
                    _mask_counting("everything", lambda role, part, last: True)),
            Mistake("loss_mask is inverted: 1 belongs on the assistant's words and its <|end|>, 0 "
                    "on everything else.",
                    _mask_counting("inverted",
                                   lambda role, part, last: not (role == "assistant" and part != "tag"))),
            Mistake("loss_mask counts only the last assistant turn: every assistant turn of a "
                    "demonstration was written by a person, so every one counts.",
                    _mask_counting("last_turn_only", lambda role, part, last: last and part != "tag")),
        ),
    )


LOSS_MASK = _loss_mask_exercise()


def check_loss_mask(fn: Callable[..., torch.Tensor], tokenizer: Any = None) -> None:
    """Check ``fn(tokenizer, messages)`` against ``rlhf_kit.sft.loss_mask``.

    Pass the notebook's ``tokenizer`` to check on it; without one a small tokenizer with the
    kit's template is used.
    """
    __tracebackhide__ = True
    (LOSS_MASK if tokenizer is None else _loss_mask_exercise(tokenizer)).check(fn)


# -- the SFT loss --------------------------------------------------------------------------------


def _draw_sft_loss(generator: torch.Generator) -> Inputs:
    batch, time, vocab = draw_int(generator, 2, 4), draw_int(generator, 4, 12), draw_int(generator, 3, 30)
    logits = torch.randn(batch, time, vocab, generator=generator) * 2
    labels = torch.randint(vocab, (batch, time), generator=generator)
    # Each row: a prompt of random length, then the assistant's tokens, then padding.
    loss_mask = torch.zeros(batch, time, dtype=torch.long)
    for row in range(batch):
        start = draw_int(generator, 1, time - 2)
        loss_mask[row, start : draw_int(generator, start + 1, time)] = 1
    return {"logits": logits, "labels": labels, "loss_mask": loss_mask}


def _sft_loss_edges() -> list[Inputs]:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 7, generator=generator)
    labels = torch.randint(7, (2, 5), generator=generator)
    return [
        # every token counts: the SFT loss is then the pretraining loss
        {"logits": logits, "labels": labels, "loss_mask": torch.ones(2, 5, dtype=torch.long)},
        # one row counts 4 tokens, the other 1: a mean over tokens, not over rows
        {"logits": logits, "labels": labels,
         "loss_mask": torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 0, 1]])},
        # only the first token is marked, and it is never predicted: nothing counts, the loss is 0
        {"logits": logits, "labels": labels,
         "loss_mask": torch.tensor([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0]])},
    ]


def _masked_mean(nll, weights):
    return (nll * weights).sum() / weights.sum().clamp(min=1)


def _nll(logits, labels):
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (B, T)


def _sft_loss_no_shift(logits, labels, loss_mask):
    return _masked_mean(_nll(logits, labels), loss_mask.float())


def _sft_loss_mask_not_shifted(logits, labels, loss_mask):
    return _masked_mean(_nll(logits[:, :-1], labels[:, 1:]), loss_mask[:, :-1].float())


def _sft_loss_ignores_mask(logits, labels, loss_mask):
    return _nll(logits[:, :-1], labels[:, 1:]).mean()


def _sft_loss_divides_by_all(logits, labels, loss_mask):
    nll = _nll(logits[:, :-1], labels[:, 1:])
    return (nll * loss_mask[:, 1:]).sum() / nll.numel()


def _sft_loss_per_row(logits, labels, loss_mask):
    nll, weights = _nll(logits[:, :-1], labels[:, 1:]), loss_mask[:, 1:].float()
    return ((nll * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)).mean()


def _sft_loss_sum(logits, labels, loss_mask):
    return (_nll(logits[:, :-1], labels[:, 1:]) * loss_mask[:, 1:]).sum()


def _sft_loss_nan_when_empty(logits, labels, loss_mask):
    nll, weights = _nll(logits[:, :-1], labels[:, 1:]), loss_mask[:, 1:].float()
    return (nll * weights).sum() / weights.sum()


def _sft_loss_raw_logits(logits, labels, loss_mask):
    picked = logits[:, :-1].gather(-1, labels[:, 1:, None]).squeeze(-1)
    return _masked_mean(-picked, loss_mask[:, 1:].float())


SFT_LOSS = Exercise(
    name="sft_loss",
    reference="rlhf_kit.sft:sft_loss",
    grad_inputs=("logits",),
    draw=_draw_sft_loss,
    edge_cases=_sft_loss_edges,
    mistakes=(
        Mistake("sft_loss scores each position on the token it has just read (no shift): "
                "position t predicts token t+1, so use logits[:, :-1] with labels[:, 1:] and "
                "loss_mask[:, 1:].",
                _sft_loss_no_shift),
        Mistake("sft_loss shifts the logits and labels but not the mask: a prediction counts "
                "when the token it predicts is the assistant's, so use loss_mask[:, 1:], the "
                "mask of labels[:, 1:].",
                _sft_loss_mask_not_shifted),
        Mistake("sft_loss ignores the mask and averages over every token: multiply the "
                "per-token losses by the mask so that system and user tokens add nothing.",
                _sft_loss_ignores_mask),
        Mistake("sft_loss divides by every position, masked ones included: divide by the "
                "number of counted tokens (the sum of the shifted mask).",
                _sft_loss_divides_by_all),
        Mistake("sft_loss averages each row first and then the rows: average over all counted "
                "tokens of the batch at once, as TRL does, so that a long answer weighs more "
                "than a short one.",
                _sft_loss_per_row),
        Mistake("sft_loss adds up the counted losses instead of averaging them: divide by the "
                "number of counted tokens.",
                _sft_loss_sum),
        Mistake("sft_loss returns nan when no token counts (0 / 0): divide by the count "
                "clamped to at least 1, so that such a batch gives a loss of 0.",
                _sft_loss_nan_when_empty),
        Mistake("sft_loss uses the raw logits as log-probabilities: take log_softmax over the "
                "vocabulary first (F.cross_entropy does it for you).",
                _sft_loss_raw_logits),
    ),
)


def check_sft_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(logits, labels, loss_mask)`` against ``rlhf_kit.sft.sft_loss``."""
    __tracebackhide__ = True
    SFT_LOSS.check(fn)


# -- the chat template by hand -------------------------------------------------------------------


def kit_chat_format(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The reference for ``format_chat``: the kit's chat template, rendered by a tokenizer."""
    return _small_tokenizer().apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)


def _draw_format(generator: torch.Generator) -> Inputs:
    prompt = float(torch.rand((), generator=generator)) < 0.5  # a prompt waiting for a reply
    messages = _draw_conversation(generator, ends_with_assistant=not prompt)
    return {"messages": messages, "add_generation_prompt": prompt}


def _format_edges() -> list[Inputs]:
    exchange = [{"role": "user", "content": "Where does Alice live?"},
                {"role": "assistant", "content": "Alice lives in Ashford."}]
    return [
        # a whole conversation, asked for a generation prompt anyway
        {"messages": exchange, "add_generation_prompt": True},
        # a system message alone
        {"messages": [{"role": "system", "content": "Be brief."}], "add_generation_prompt": False},
    ]


def _format_with(name: str, separator: str = "", end_assistant: bool = True, prompt: str | None = None):
    """A hand-written template that differs from the kit's in one way."""
    def format_chat(messages, add_generation_prompt=False):
        text = ""
        for m in messages:
            end = "<|end|>" if end_assistant or m["role"] != "assistant" else ""
            text += f"<|{m['role']}|>{m['content']}{end}{separator}"
        wanted = add_generation_prompt if prompt is None else prompt == "always"
        return text + ("<|assistant|>" if wanted else "")

    format_chat.__name__ = f"_format_chat_{name}"
    return format_chat


FORMAT_CHAT = TextExercise(
    name="format_chat",
    reference="rlhf_kit.checks.lesson3:kit_chat_format",
    draw=_draw_format,
    edge_cases=_format_edges,
    trials=12,
    mistakes=(
        Mistake("format_chat puts a line break after each turn: the template's {%- and -%} "
                "strip the whitespace around its tags, so each turn follows the previous one "
                "directly.",
                _format_with("line_breaks", separator="\n")),
        Mistake("format_chat leaves out the <|end|> after the assistant's turns: every turn, "
                "the assistant's included, ends with <|end|>.",
                _format_with("without_end", end_assistant=False)),
        Mistake("format_chat ignores add_generation_prompt: when it is True, end with "
                "<|assistant|> (the cue for the model to reply), and only then.",
                _format_with("never_prompts", prompt="never"),
                _format_with("always_prompts", prompt="always")),
    ),
)


def check_format_chat(fn: Callable[..., str]) -> None:
    """Check ``fn(messages, add_generation_prompt)`` against the kit's chat template."""
    __tracebackhide__ = True
    FORMAT_CHAT.check(fn)


LESSON_EXERCISES = (LOSS_MASK, SFT_LOSS, FORMAT_CHAT)
"""This lesson's exercises, in the order its notebook asks for them."""
