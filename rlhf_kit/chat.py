"""Talking to a model in turns (lesson 7): the conversation, the text the model reads, its context.

A language model keeps no memory between turns. At every turn the whole conversation so far is
written out again as one text and the model continues it; "remembering" what you said earlier
is reading it again. How the conversation is written out depends on the model:

* a chat model (SFT, PPO, DPO, GRPO) reads it through its **chat template**, the same one it was
  fine-tuned on (lesson 3): ``<|user|>...<|end|><|assistant|>...<|end|>...<|assistant|>``, and
  its reply ends where it writes ``<|end|>``;
* the base model never saw a template: it reads a plain transcript, one line per turn, as the
  question-and-answer threads of its internet, and its reply is the line it writes next.

A model reads at most ``context`` tokens (128 for the embedded one). When the conversation and
the room kept for the reply no longer fit, the oldest turns are left out of what the model reads
(they stay in the history you see), and the chat says so.

``Chat`` holds the history and asks any of its models for the next reply; ``widgets.ChatWidget``
puts it on screen. ``side_by_side`` asks every model the same question.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .evaluate import CHAT, PLAIN, first_line
from .sampling import context_length, generate


@dataclass
class ChatModel:
    """One model to talk to: its name, weights, tokenizer, and how it reads a conversation."""

    name: str
    model: object  # a causal LM
    tokenizer: object
    style: str = CHAT  # CHAT: through the chat template; PLAIN: a plain transcript (base models)

    def __post_init__(self) -> None:
        if self.style not in (CHAT, PLAIN):
            raise ValueError(f"style must be {CHAT!r} or {PLAIN!r}, not {self.style!r}.")
        if self.style == CHAT and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"The tokenizer of {self.name!r} has no chat template; give this "
                             f"model style={PLAIN!r} to talk to it in plain text.")

    def render(self, messages: list[dict]) -> str:
        """The text this model reads for ``messages`` (ending where its reply begins)."""
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self.style == CHAT:
            return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return (getattr(self.tokenizer, "bos_token", None) or "") + "".join(
            t["content"] + "\n" for t in turns)

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    @property
    def context(self) -> int | None:
        return context_length(self.model)


@dataclass
class Reply:
    """One reply, and what the model read to write it."""

    text: str
    model: str
    prompt: str  # the text the model continued
    prompt_tokens: int
    left_out: int  # how many of the oldest messages did not fit in the model's context


class MessageTooLong(ValueError):
    """The newest message alone, with room for the reply, does not fit in the model's context."""


def fit_context(chat_model: ChatModel, messages: list[dict], room: int) -> tuple[list[dict], int]:
    """The newest messages that fit in the context with ``room`` tokens left for the reply.

    Whole exchanges are left out from the oldest, so what remains still starts with a user turn.
    Returns the messages kept and how many were left out.
    """
    limit = chat_model.context
    if limit is None:
        return messages, 0
    for start in range(0, len(messages), 2):  # messages alternate user, assistant, user, ...
        kept = messages[start:]
        if chat_model.n_tokens(chat_model.render(kept)) + room <= limit:
            return kept, start
    newest = chat_model.n_tokens(chat_model.render(messages[-1:]))
    raise MessageTooLong(
        f"Your message takes {newest} tokens and {chat_model.name} reads at most {limit}, "
        f"{room} of which are kept for its reply: write a shorter message or lower the reply length.")


@dataclass
class Chat:
    """A conversation with any of several models; each assistant turn remembers who wrote it.

    ``ask(text, model=...)`` adds your message, asks that model for the next turn and adds its
    reply. Switching model between turns is allowed: the next model reads the same history.
    Replies are sampled with ``seed + turn number``, so a conversation replays identically.
    """

    models: dict[str, ChatModel]
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int = 0
    history: list[dict] = field(default_factory=list)  # {"role", "content"[, "model"]}

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("A chat needs at least one model.")
        self.models = {m.name: m for m in self.models} if isinstance(self.models, list) else dict(self.models)

    def model(self, name: str) -> ChatModel:
        if name not in self.models:
            raise KeyError(f"There is no model {name!r} in this chat; the models are: "
                           f"{', '.join(self.models)}.")
        return self.models[name]

    def prompt(self, model: str, message: str | None = None) -> str:
        """What ``model`` would read now (with ``message`` as your next turn, if given)."""
        chat_model = self.model(model)
        messages = self.history + ([{"role": "user", "content": message}] if message else [])
        return chat_model.render(fit_context(chat_model, messages, self.max_new_tokens)[0])

    def ask(self, message: str, model: str) -> Reply:
        """Your ``message``, then ``model``'s reply; both join the history only if the reply worked."""
        if not isinstance(message, str) or not message.strip():
            raise ValueError("Type a message first: an empty one gives the model nothing to answer.")
        if "\n" in message.strip():
            raise ValueError("Write your message on one line: a line break ends a turn for the base model.")
        chat_model = self.model(model)
        messages = self.history + [{"role": "user", "content": message.strip()}]
        kept, left_out = fit_context(chat_model, messages, self.max_new_tokens)
        prompt = chat_model.render(kept)
        turn = sum(m["role"] == "user" for m in messages)
        out = generate(chat_model.model, chat_model.tokenizer, [prompt],
                       max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                       top_p=self.top_p, seed=self.seed + turn)
        completion = out.completions[0]
        # A chat model's turn ends at <|end|> (generation stops there); the base model's at the line's end.
        text = first_line(completion) if chat_model.style == PLAIN else completion.strip()
        self.history = messages + [{"role": "assistant", "content": text, "model": model}]
        return Reply(text, model, prompt, chat_model.n_tokens(prompt), left_out)

    def clear(self) -> None:
        self.history = []


def side_by_side(models: dict[str, ChatModel] | list[ChatModel], question: str, samples: int = 1,
                 temperature: float = 0.7, max_new_tokens: int = 32, seed: int = 0) -> list[dict]:
    """Every model's reply(s) to one question, each in a fresh conversation, with the same seed."""
    models = list(models.values()) if isinstance(models, dict) else list(models)
    rows = []
    for m in models:
        chat = Chat({m.name: m}, temperature=temperature, max_new_tokens=max_new_tokens)
        for i in range(samples):
            chat.clear()
            chat.seed = seed + i
            rows.append({"model": m.name, "reply": chat.ask(question, m.name).text})
    return rows
