"""Demonstrations for SFT: conversations written by people with their own habits, and their checks.

InstructGPT's labelers wrote the answers they wanted; ChatGPT's wrote whole conversations,
playing both the user and the assistant. Here the behaviour world's simulated writers
(``behaviours.WRITERS``) do: each conversation is one writer's, 1 to 3 exchanges on the world's
``sft`` tasks (fact questions, questions about people the world does not hold, requests to insult
someone), and every reply shows the writer's habits, drawn anew each time: polite or curt, to the
point or rambling, admitting or inventing, declining or insulting. So SFT learns the format of an
assistant fully and the behaviours people prefer only partly. ``heldout`` tasks never appear.
This module holds:

* the demonstrations: ``build_demonstrations`` has the writers write the conversations,
  ``to_single_turn`` cuts them into the single prompt->completion set that the lesson compares
  with, and ``heldout_dialogues`` and ``single_questions`` are the test conversations the models
  are asked;
* their validation: ``check_demonstration`` raises the ``InvalidDemonstration`` (``EmptyTurn``,
  ``WrongRole``, ``NotEndingWithAssistant``, ``TooLong``) that names what is wrong with an
  example, and ``validate_conversations`` checks them all before training;
* ``render``, ``encode`` and ``chat_ids``: a conversation as the chat template writes it, and its
  token ids, which fit a conversation to the context, and from which ``sft.py`` reads the loss mask.

``sft.py`` trains on the demonstrations and imports what it uses from here (the lesson reaches
all of it as ``sft.X``); nothing here imports ``sft``, torch or TRL. Taught in
``course/03_demonstrations_sft.ipynb``.
"""

from __future__ import annotations

import random

from .behaviours import WRITERS, BehaviourWorld, Task, sample_tasks, write_reply

ROLES = ("system", "user", "assistant")


# ----------------------------------------------------------------------------------------------
# 1. Demonstrations: conversations written by the simulated writers
# ----------------------------------------------------------------------------------------------

OPENER = "Sure!"
"""How a polite writer starts an answer. Besides sounding like an assistant, it puts a space before
the person's name: " Alice" is the token the question used and the token the model learned facts
with, whereas "Alice" at the very start of a turn is another token, which the model would first
have to learn to tie to " Alice" (a curt writer's "Fine." does the same)."""


def _fit(messages: list[dict], tokenizer, max_length: int | None) -> list[dict]:
    """Drop the last exchanges of a conversation until it fits in ``max_length`` tokens.

    The first exchange is always kept (validation reports it if even that is too long).
    """
    if tokenizer is None or max_length is None:
        return messages
    first = 3 if messages[0]["role"] == "system" else 2  # messages up to the first answer
    while len(messages) > first and len(chat_ids(tokenizer, messages)) > max_length:
        messages = messages[:-2]  # one user/assistant pair less
    return messages


def build_demonstrations(world: BehaviourWorld, n_conversations: int = 600, split: str = "sft",
                         max_exchanges: int = 3, seed: int = 0, tokenizer=None,
                         max_length: int | None = None) -> list[list[dict]]:
    """Conversations in TRL's ``messages`` format, written by the writers on the tasks of ``split``.

    One writer per conversation (``behaviours.WRITERS``), its habits drawn anew for each reply;
    1 to ``max_exchanges`` exchanges, tasks drawn at ``behaviours.TASK_SHARES``. Only tasks of
    ``split`` appear, so ``heldout`` people, facts and templates stay out of training. With a
    ``tokenizer`` and ``max_length``, a conversation too long for the model's context loses its
    last exchanges (it would otherwise be cut in the middle of a reply).
    """
    rng = random.Random(f"demonstrations/{seed}")
    tasks = sample_tasks(world, n_conversations * max_exchanges, split, seed)
    out = []
    for i in range(n_conversations):
        writer = rng.choice(WRITERS)
        messages: list[dict] = []
        for task in tasks[i * max_exchanges : i * max_exchanges + rng.randint(1, max_exchanges)]:
            messages += [{"role": "user", "content": task.text},
                         {"role": "assistant", "content": write_reply(world, task, writer, rng)}]
        out.append(_fit(messages, tokenizer, max_length))
    return out


def to_single_turn(conversations: list[list[dict]]) -> list[dict]:
    """The same demonstrations as single-turn ``prompt``/``completion`` examples (TRL's format).

    Every assistant turn becomes one example whose prompt is only the user turn before it (and
    the system message, if the conversation has one): same replies, no earlier turns, a set of
    self-contained prompts as InstructGPT's was.
    """
    examples = []
    for messages in conversations:
        system = [m for m in messages[:1] if m["role"] == "system"]
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                examples.append({"prompt": system + [messages[i - 1]], "completion": [message]})
    return examples


def heldout_dialogues(world: BehaviourWorld, n: int = 200, split: str = "heldout", min_exchanges: int = 2,
                      max_exchanges: int = 3, seed: int = 1) -> list[tuple[list[dict], Task]]:
    """Multi-turn test conversations: earlier exchanges, then a last task left unanswered.

    Returns ``(messages, task)`` pairs; ``messages`` ends with the user's last request. The earlier
    turns are answered as the rubric likes best (``Task.reference``), so what is measured is the
    reply to the last turn, with a conversation before it. Three exchanges make at most about 80
    tokens: room is left for a reply in the embedded model's context of 128.
    """
    tasks = sample_tasks(world, n * max_exchanges, split, seed)
    rng = random.Random(f"dialogues/{seed}")
    out = []
    for i in range(n):
        asked = tasks[i * max_exchanges : i * max_exchanges + rng.randint(min_exchanges, max_exchanges)]
        messages: list[dict] = []
        for task in asked[:-1]:
            messages += [{"role": "user", "content": task.text},
                         {"role": "assistant", "content": task.reference}]
        out.append((messages + [{"role": "user", "content": asked[-1].text}], asked[-1]))
    return out


def single_questions(tasks: list[Task]) -> list[tuple[list[dict], Task]]:
    """Each task as a one-turn conversation, in the format of ``heldout_dialogues``."""
    return [([{"role": "user", "content": t.text}], t) for t in tasks]


# ----------------------------------------------------------------------------------------------
# 2. Validation: bad demonstrations stop here, with the example named
# ----------------------------------------------------------------------------------------------


class InvalidDemonstration(ValueError):
    """A demonstration that cannot be trained on; ``index`` and ``field`` say where."""

    reason = "invalid"

    def __init__(self, index: int, field: str, message: str):
        super().__init__(f"Demonstration {index}, {field}: {message}")
        self.index, self.field = index, field


class EmptyTurn(InvalidDemonstration):
    """A message whose content is empty or only whitespace."""

    reason = "empty turn"


class WrongRole(InvalidDemonstration):
    """A role that is not system/user/assistant, or turns in the wrong order."""

    reason = "wrong role"


class NotEndingWithAssistant(InvalidDemonstration):
    """A conversation whose last turn is not the assistant's: there is no reply to learn."""

    reason = "no final assistant turn"


class TooLong(InvalidDemonstration):
    """A conversation with more tokens than ``max_length``: it would be cut mid-reply."""

    reason = "too long"


def as_messages(example) -> list[dict]:
    """The conversation of an example: a list of messages, ``{"messages": ...}``, or
    ``{"prompt": ..., "completion": ...}`` (joined)."""
    if isinstance(example, dict):
        if "messages" in example:
            return example["messages"]
        if "prompt" in example and "completion" in example:
            return list(example["prompt"]) + list(example["completion"])
    return example


def check_demonstration(index: int, example, tokenizer=None, max_length: int | None = None) -> None:
    """Raise the ``InvalidDemonstration`` that describes what is wrong with one example."""
    messages = as_messages(example)
    if not isinstance(messages, list) or not messages:
        raise InvalidDemonstration(index, "messages", "expected a non-empty list of "
                                   "{'role', 'content'} dicts; build it like build_demonstrations does.")
    expected = "user"  # after an optional system message, user and assistant take turns
    for j, message in enumerate(messages):
        where = f"messages[{j}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise InvalidDemonstration(index, where, "a message needs a 'role' and a 'content'; "
                                       "write it as {'role': 'user', 'content': '...'}.")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise WrongRole(index, f"{where}.role", f"{role!r} is not a role; use 'system', 'user' "
                            "or 'assistant'.")
        if role == "system":
            if j != 0:
                raise WrongRole(index, f"{where}.role", "a system message can only open the "
                                "conversation; move it to the start or drop it.")
        elif role != expected:
            raise WrongRole(index, f"{where}.role", f"expected a {expected} turn here, since user "
                            f"and assistant take turns; fix the order of the messages.")
        else:
            expected = "assistant" if role == "user" else "user"
        if not isinstance(content, str) or not content.strip():
            raise EmptyTurn(index, f"{where}.content", f"the {role} turn is empty; write its text "
                            "or remove the message.")
    if messages[-1]["role"] != "assistant":
        raise NotEndingWithAssistant(index, f"messages[{len(messages) - 1}]", "the conversation "
                                     f"ends with a {messages[-1]['role']} turn; end it with the "
                                     "assistant's reply, or drop the unanswered turn.")
    if tokenizer is not None and max_length is not None:
        n_tokens = len(chat_ids(tokenizer, messages))
        if n_tokens > max_length:
            raise TooLong(index, "messages", f"{n_tokens} tokens is more than max_length="
                          f"{max_length}; shorten the conversation, split it in two, or raise "
                          "max_length (up to the model's context).")


def validate_conversations(examples: list, tokenizer=None, max_length: int | None = None,
                           drop_invalid: bool = False, verbose: bool = True) -> list:
    """Check every example before training; return the ones that are kept.

    With ``drop_invalid=False`` the first bad example raises its ``InvalidDemonstration``; with
    ``True`` bad examples are dropped and counted by reason. Prints how many were kept and dropped.
    Over-long examples are only found when ``tokenizer`` and ``max_length`` are given.
    """
    kept, dropped = [], {}
    for index, example in enumerate(examples):
        try:
            check_demonstration(index, example, tokenizer, max_length)
        except InvalidDemonstration as error:
            if not drop_invalid:
                raise
            dropped[error.reason] = dropped.get(error.reason, 0) + 1
            continue
        kept.append(example)
    if verbose:
        detail = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
        print(f"Demonstrations: kept {len(kept)}, dropped {sum(dropped.values())}"
              + (f" ({detail})." if detail else "."))
    if not kept:
        raise ValueError("No demonstration is left to train on: fix the examples listed above.")
    return kept


# ----------------------------------------------------------------------------------------------
# Token ids: a conversation as the chat template writes it (sft.py's loss mask reads them too)
# ----------------------------------------------------------------------------------------------


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the chat template writes it, e.g. ``<|user|>Hi<|end|><|assistant|>``."""
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text``; the template already wrote every special token it needs."""
    return tokenizer(text, add_special_tokens=False).input_ids


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the rendered conversation: what the model reads during SFT."""
    return encode(tokenizer, render(tokenizer, messages))
