"""Demonstrations for SFT: conversations written from the world's facts, and the checks they pass.

InstructGPT's labelers wrote the answers they wanted; ChatGPT's wrote whole conversations,
playing both the user and the assistant. Here the toy world's ``sft`` questions become such
conversations (some with a system message) whose assistant turns state the true fact, politely and
briefly ("Sure! Alice lives in Foxhill."); a follow-up often asks about the same person, sometimes
only as "they", which only the earlier turns explain. ``heldout`` questions never appear. This
module holds:

* the demonstrations: ``build_demonstrations`` writes the conversations, ``to_single_turn`` cuts
  them into the single prompt->completion set that the lesson compares with, and
  ``heldout_dialogues`` and ``single_questions`` are the test conversations the models are asked;
* their validation: ``check_demonstration`` raises the ``InvalidDemonstration`` (``EmptyTurn``,
  ``WrongRole``, ``NotEndingWithAssistant``, ``TooLong``) that names what is wrong with an
  example, and ``validate_conversations`` checks them all before training;
* ``render``, ``encode`` and ``chat_ids``: a conversation as the chat template writes it, and its
  token ids, which fit a conversation to the context, and from which ``sft.py`` reads the loss mask.

``sft.py`` trains on the demonstrations and imports what it uses from here (the lesson reaches
all of it as ``sft.X``); nothing here imports ``sft``, torch or TRL. Taught in
``course/02_demonstrations_sft.ipynb``.
"""

from __future__ import annotations

import random
import re

from .world import PEOPLE, QUESTIONS, Question, World

ROLES = ("system", "user", "assistant")


# ----------------------------------------------------------------------------------------------
# 1. Demonstrations: conversations written from the world's facts
# ----------------------------------------------------------------------------------------------

SYSTEM_PROMPTS = ("You are a helpful assistant.", "Be brief and polite.", "Answer the question.",
                  "Tell the truth.")
THANKS = ("Thanks!", "Thank you.")
WELCOME = ("You're welcome.", "Glad to help.")
FOLLOW_UPS = {
    "town": "And where do they live?",
    "job": "And what do they do for a living?",
    "pet": "And what pet do they have?",
    "colour": "And which colour do they like best?",
}
"""Follow-ups that do not name the person: only the earlier turns say who "they" are."""
SAME_PERSON_SHARE = 0.6  # a follow-up question asks about the person of the previous one
THEY_SHARE = 0.4  # such a follow-up says "they" (FOLLOW_UPS) instead of the name
AND_SHARE = 0.3  # or it names the person after "And ..."; otherwise it is the plain question
THANKS_SHARE = 0.1  # after an answer, the user sometimes says thanks


OPENER = "Sure!"
"""How every answer starts. Besides sounding like an assistant, it puts a space before the
person's name: " Alice" is the token the question used and the token the model learned facts
with, whereas "Alice" at the very start of a turn is another token, which the model would first
have to learn to tie to " Alice" (without the opener it often names the wrong person)."""


def _answer(question: Question) -> str:
    """The reply a labeler writes: the opener, then the true fact in one sentence."""
    return f"{OPENER} {question.reference}" if OPENER else question.reference


def _next_question(rng: random.Random, questions: list[Question], asked: list[Question]) -> Question:
    """A question whose fact has not been asked yet in this conversation."""
    done = {(q.person, q.relation) for q in asked}
    fresh = [q for q in questions if (q.person, q.relation) not in done]
    if asked and rng.random() < SAME_PERSON_SHARE:
        same = [q for q in fresh if q.person == asked[-1].person]
        if same:
            return rng.choice(same)
    return rng.choice(fresh)


def _dialogue(rng: random.Random, questions: list[Question], n_exchanges: int,
              system: bool) -> tuple[list[dict], list[Question]]:
    """One conversation of ``n_exchanges`` questions and true answers, and the questions asked."""
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if system else []
    asked: list[Question] = []
    for k in range(n_exchanges):
        question = _next_question(rng, questions, asked)
        text = question.text
        if asked and asked[-1].person == question.person:
            roll = rng.random()
            if roll < THEY_SHARE:
                text = FOLLOW_UPS[question.relation]  # "And what do they do for a living?"
            elif roll < THEY_SHARE + AND_SHARE:
                text = "And " + text[0].lower() + text[1:]  # "And what is Alice's job?"
        # The demonstration: the true fact, in one polite sentence, nothing else.
        messages += [{"role": "user", "content": text},
                     {"role": "assistant", "content": _answer(question)}]
        asked.append(question)
        if k < n_exchanges - 1 and rng.random() < THANKS_SHARE:
            messages += [{"role": "user", "content": rng.choice(THANKS)},
                         {"role": "assistant", "content": rng.choice(WELCOME)}]
    return messages, asked


def refers_back(text: str) -> bool:
    """True for a follow-up that needs the earlier turns to be understood ("... do they ...")."""
    return text in FOLLOW_UPS.values()


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


def build_demonstrations(world: World, n_conversations: int = 600, split: str = "sft",
                         max_exchanges: int = 3, system_share: float = 0.3, seed: int = 0,
                         tokenizer=None, max_length: int | None = None) -> list[list[dict]]:
    """Conversations in TRL's ``messages`` format, written from the questions of one split.

    Each conversation has 1 to ``max_exchanges`` exchanges; a follow-up often asks about the
    same person. Only questions of ``split`` appear, so ``heldout`` facts stay out of training.
    With a ``tokenizer`` and ``max_length``, a conversation too long for the model's context
    loses its last exchanges (it would otherwise be cut in the middle of a reply).
    """
    questions = world.questions(split)
    rng = random.Random(seed)
    return [_fit(_dialogue(rng, questions, rng.randint(1, max_exchanges),
                           rng.random() < system_share)[0], tokenizer, max_length)
            for _ in range(n_conversations)]


def _standalone(question: str, answer: str) -> str:
    """The question a follow-up stands for, naming its person: the one the answer is about."""
    relation = next(r for r, text in FOLLOW_UPS.items() if text == question)
    person = next(word for word in re.findall(r"[A-Z][a-z]+", answer) if word in PEOPLE)
    return QUESTIONS[relation][0].format(person=person)


def to_single_turn(conversations: list[list[dict]]) -> list[dict]:
    """The same demonstrations as single-turn ``prompt``/``completion`` examples (TRL's format).

    Every assistant turn becomes one example whose prompt is only the user turn before it (and
    the system message, if the conversation has one): same answers, no earlier turns. A
    follow-up that says "they" cannot stand alone, so it is replaced by the question it stands
    for ("And what pet do they have?" becomes "What pet does Alice have?"): single-turn data is
    a set of self-contained prompts, as InstructGPT's was.
    """
    examples = []
    for messages in conversations:
        system = [m for m in messages[:1] if m["role"] == "system"]
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                user = messages[i - 1]
                if refers_back(user["content"]):
                    user = {"role": "user", "content": _standalone(user["content"], message["content"])}
                examples.append({"prompt": system + [user], "completion": [message]})
    return examples


def heldout_dialogues(world: World, n: int = 200, split: str = "heldout", min_exchanges: int = 2,
                      max_exchanges: int = 3, system_share: float = 0.3,
                      seed: int = 1) -> list[tuple[list[dict], Question]]:
    """Multi-turn test conversations: earlier exchanges, then a last question left unanswered.

    Returns ``(messages, question)`` pairs; ``messages`` ends with the user's last question,
    always a follow-up, which says "they" about one time in eight (``refers_back``; held-out
    facts are spread thin over the people, so a follow-up about the same person is rarer). Three
    exchanges and a system message make at most about 90 tokens: room is left for a reply in
    the embedded model's context of 128.
    """
    questions = world.questions(split)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages, asked = _dialogue(rng, questions, rng.randint(min_exchanges, max_exchanges),
                                    rng.random() < system_share)
        out.append((messages[:-1], asked[-1]))  # drop the last answer: the model must write it
    return out


def single_questions(questions: list[Question]) -> list[tuple[list[dict], Question]]:
    """Each question as a one-turn conversation, in the format of ``heldout_dialogues``."""
    return [([{"role": "user", "content": q.text}], q) for q in questions]


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
