"""Evaluation: the course's scoreboard, measured the same way for every stage's model.

A model is asked questions about the toy world; each reply is judged by the world's rubric
(``World.judge``). Three rates tell the story of the course:

* **answer rate** - share of replies that state the asked fact (true or false);
* **false-statement rate** - share of replies containing a statement the world says is false;
* **rudeness rate** - share of replies containing an insult.

Plus the mean rubric score (the simulated person's taste as one number: ``BehaviourWorld.judge``
says what earns and costs points), and, in the behaviour world, the share of replies that show
each behaviour people rank on (polite, concise, admits not knowing, declines to insult, true;
``behaviours.APPLIES`` says which apply to which task). Each rate comes with a 95 % Wilson interval, because a few hundred
samples leave real uncertainty. The base model is asked in plain text (``"Where does Alice
live?\\n"`` at the start of a document, as a user would type into a text box); chat models are asked through their chat
template. The reply is the completion up to its first line break (or the end of the turn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .behaviours import BEHAVIOURS, Task
from .sampling import Generation, context_length, generate
from .tokenizer import chat_prompt, end_of_turn_id
from .world import Judgement, Question, World

PLAIN, CHAT = "plain", "chat"


def format_prompt(question: Question | Task | str, tokenizer=None, style: str = PLAIN) -> str:
    """The prompt a model sees for a question: plain text, or its chat turn (``tokenizer.chat_prompt``)."""
    text = question if isinstance(question, str) else question.text  # a world.Question or a behaviours.Task
    if style == PLAIN:
        # A document starts after <|endoftext|>: with it the model knows the question opens a page.
        return (getattr(tokenizer, "bos_token", None) or "") + text + "\n"
    if style == CHAT:
        return chat_prompt(tokenizer, text)
    raise ValueError(f"style must be {PLAIN!r} or {CHAT!r}, not {style!r}.")


def first_line(completion: str) -> str:
    """The reply: what the model wrote before its first line break."""
    return completion.strip("\n").split("\n", 1)[0].strip()


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (well-behaved near 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def win_share(wins: int, ties: int, losses: int) -> float:
    """Share of pairs won, a tie counting as half a win, as InstructGPT counted its win rates
    (0.5: no better, no worse); NaN when there are no pairs."""
    n = wins + ties + losses
    return (wins + 0.5 * ties) / n if n else float("nan")


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """An approximate 95 % interval for a mean: mean ± z·s/√n (normal approximation)."""
    n = len(values)
    if n < 2:
        return (float("nan"), float("nan"))
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return (mean - z * sd / math.sqrt(n), mean + z * sd / math.sqrt(n))


@dataclass
class Report:
    """The rates of one model on one set of questions, with the samples they came from."""

    name: str
    n: int
    answer_rate: float
    false_rate: float
    rude_rate: float
    rubric_score: float
    intervals: dict[str, tuple[float, float]]
    samples: list[tuple[Question, str, Judgement]]
    behaviours: dict[str, float] = field(default_factory=dict)  # behaviour -> share of the replies it applies to

    def row(self) -> dict:
        """One row of the scoreboard."""
        return {"model": self.name, "samples": self.n, "answer rate": self.answer_rate,
                "false-statement rate": self.false_rate, "rudeness rate": self.rude_rate,
                "rubric score": self.rubric_score, **self.behaviours}


def judge_replies(world: World, questions: list[Question], replies: list[str], name: str = "model") -> Report:
    """Judge ready-made replies (one per question) and summarise them."""
    if len(questions) != len(replies):
        raise ValueError(f"{len(questions)} questions but {len(replies)} replies: give one reply per question.")
    judgements = [world.judge(q, r) for q, r in zip(questions, replies)]
    n = len(judgements)
    shown: dict[str, list[bool]] = {}
    for j in judgements:  # the behaviour world's judgements say which behaviours a reply shows
        for behaviour, ok in getattr(j, "behaviours", {}).items():
            shown.setdefault(behaviour, []).append(ok)
    counts = {"answer rate": sum(j.answers for j in judgements),
              "false-statement rate": sum(j.false for j in judgements),
              "rudeness rate": sum(j.rude for j in judgements)}
    return Report(
        name=name, n=n,
        answer_rate=counts["answer rate"] / n,
        false_rate=counts["false-statement rate"] / n,
        rude_rate=counts["rudeness rate"] / n,
        rubric_score=sum(j.score for j in judgements) / n,
        intervals={**{k: wilson_interval(v, n) for k, v in counts.items()},
                   "rubric score": mean_interval([j.score for j in judgements]),
                   **{b: wilson_interval(sum(v), len(v)) for b, v in shown.items()}},
        samples=list(zip(questions, replies, judgements)),
        behaviours={b: sum(shown[b]) / len(shown[b]) for b in BEHAVIOURS if b in shown},
    )


def paired_difference(a: Report, b: Report, samples_per_question: int = 1) -> tuple[float, float, float]:
    """Mean rubric score of ``a`` minus ``b``, asked the same questions in the same order, with a 95 %
    interval over the questions (each question's ``samples_per_question`` replies averaged first, so
    the interval counts questions, not samples). An interval above 0 says ``a`` is better on these
    questions beyond the chance of sampling."""
    if [q.text for q, _, _ in a.samples] != [q.text for q, _, _ in b.samples]:
        raise ValueError("Pair two reports of the same questions in the same order: judge both models' "
                         "replies to one list of questions.")
    k = samples_per_question
    diffs = [ja.score - jb.score for (_, _, ja), (_, _, jb) in zip(a.samples, b.samples)]
    per_question = [sum(diffs[i : i + k]) / k for i in range(0, len(diffs), k)]
    return (sum(per_question) / len(per_question), *mean_interval(per_question))


def fault_rates(model, tokenizer, world: World, questions: list[Question], samples_per_question: int = 1,
                style: str = PLAIN, name: str = "model", temperature: float = 1.0, top_p: float = 1.0,
                max_new_tokens: int = 24, seed: int = 0) -> Report:
    """Sample replies from ``model`` to every question and judge them (the scoreboard's numbers)."""
    asked = [q for q in questions for _ in range(samples_per_question)]
    replies = ask(model, tokenizer, asked, style, temperature, max_new_tokens, seed, top_p)
    return judge_replies(world, asked, replies, name)


def ask(model, tokenizer, questions, style: str = PLAIN, temperature: float = 1.0, max_new_tokens: int = 24,
        seed: int = 0, top_p: float = 1.0) -> list[str]:
    """One reply (the completion's first line) to each question, sampled at ``temperature``."""
    out = generate(model, tokenizer, [format_prompt(q, tokenizer, style) for q in questions],
                   max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    return [first_line(c) for c in out.completions]


# ----------------------------------------------------------------------------------------------
# Chat models: replies in conversations, and whether they keep the chat format
# ----------------------------------------------------------------------------------------------
#
# From lesson 3 on, models are asked through their chat template, and a conversation may hold
# earlier turns. Two things are measured: the scoreboard's rates on the reply to the last
# question, and the share of replies that are one clean assistant turn.


@dataclass
class ChatReport:
    """The scoreboard's rates on chat prompts, and the share of replies in the chat format."""

    report: Report
    format_rate: float
    formats: list[bool]

    def row(self) -> dict:
        return {**self.report.row(), "format rate": self.format_rate}


def kept_chat_format(generation: Generation, tokenizer) -> list[bool]:
    """For each completion: is it one non-empty turn, closed by the end-of-turn token?

    A completion fails when it runs out of tokens, stops on ``<|endoftext|>`` instead, or writes
    another special token (such as ``<|user|>``: the model playing the user).
    """
    end = end_of_turn_id(tokenizer)
    special = set(tokenizer.all_special_ids)
    kept = []
    for ids, mask in zip(generation.completion_ids, generation.completion_mask):
        ids = ids[mask.bool()].tolist()  # the generated tokens of this row
        words = ids[:-1]
        kept.append(len(ids) >= 2 and ids[-1] == end and not special.intersection(words))
    return kept


def evaluate_chat(model, tokenizer, world: World, dialogues: list[tuple[list[dict], Question]],
                  samples_per_question: int = 1, name: str = "model", temperature: float = 1.0,
                  top_p: float = 1.0, max_new_tokens: int = 24, seed: int = 0) -> ChatReport:
    """Reply to each dialogue's last question through the chat template; judge and check format.

    ``dialogues`` are ``(messages, question)`` pairs whose messages end with the user's question
    (``sft.heldout_dialogues`` for multi-turn ones, ``sft.single_questions`` for one turn). The
    sampling settings are those of ``fault_rates``: on one-turn dialogues the report equals
    ``fault_rates(..., style="chat")`` with the same ``samples_per_question`` and ``seed``.
    """
    asked = [d for d in dialogues for _ in range(samples_per_question)]
    prompts = [tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
               for messages, _ in asked]
    context = context_length(model)
    if context:  # every reply gets the same room, whichever batch its prompt falls in
        longest = max(len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts)
        if longest >= context:
            raise ValueError(f"A dialogue of {longest} tokens leaves no room for a reply in the "
                             f"model's context of {context}: use shorter dialogues.")
        max_new_tokens = min(max_new_tokens, context - longest)
    out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                   temperature=temperature, top_p=top_p, seed=seed)
    replies = [first_line(c) for c in out.completions]
    report = judge_replies(world, [q for _, q in asked], replies, name)
    formats = kept_chat_format(out, tokenizer)
    return ChatReport(report, sum(formats) / len(formats), formats)


# ----------------------------------------------------------------------------------------------
# Two models on the same questions: which reply the rubric prefers, and how far one has moved
# ----------------------------------------------------------------------------------------------
#
# Lesson 6 compares the PPO model with the SFT model it started from. Both answer the same
# questions with the same sampling seeds; the rubric judges each pair of replies, and the KL says
# how far PPO moved the model's distribution of replies away from the SFT model's.


@dataclass
class Preference:
    """How often the rubric prefers model A's reply to model B's reply to the same question."""

    wins: int  # A's reply scored higher
    ties: int  # the same rubric score (often the very same reply)
    losses: int  # B's reply scored higher
    interval: tuple[float, float]  # 95 % Wilson interval of wins / (wins + losses)

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float:
        """Share of pairs A wins, a tie counting half (0.5: no preference, or no pairs)."""
        return win_share(self.wins, self.ties, self.losses) if self.n else 0.5

    @property
    def win_rate(self) -> float:
        """Share of A's wins among the pairs that are not ties."""
        decided = self.wins + self.losses
        return self.wins / decided if decided else 0.5

    def row(self) -> dict:
        return {"pairs": self.n, "wins": self.wins, "ties": self.ties, "losses": self.losses,
                "preference rate": self.rate, "win rate (ties left out)": self.win_rate}


def rubric_preference(a: Report, b: Report) -> Preference:
    """Compare two reports sample by sample: both must hold replies to the same questions, in the
    same order (``fault_rates`` or ``evaluate_chat`` with the same questions and samples)."""
    if [q for q, _, _ in a.samples] != [q for q, _, _ in b.samples]:
        raise ValueError(f"{a.name} and {b.name} answered different questions: evaluate both on the "
                         "same questions with the same samples_per_question.")
    wins = sum(ja.score > jb.score for (_, _, ja), (_, _, jb) in zip(a.samples, b.samples))
    losses = sum(ja.score < jb.score for (_, _, ja), (_, _, jb) in zip(a.samples, b.samples))
    ties = len(a.samples) - wins - losses
    return Preference(wins, ties, losses, wilson_interval(wins, wins + losses))


def reply_kl(model, ref_model, tokenizer, generation: Generation, temperature: float = 1.0,
             batch_size: int = 64) -> torch.Tensor:
    """KL estimate of each reply, shape (N,): sum over its tokens of log π(y_t) − log π_ref(y_t).

    ``generation`` holds replies sampled from ``model`` (``sampling.generate`` at
    ``temperature``); both models read the same prompts and replies. Averaged over replies sampled
    from ``model``, this estimates KL(π ‖ π_ref) per reply, in nats: the quantity PPO's penalty
    keeps small. 0 when the two models are the same.
    """
    per_reply = []
    for start in range(0, len(generation.prompts), batch_size):
        rows = slice(start, start + batch_size)
        query = tokenizer(generation.prompts[rows], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        completion_ids = generation.completion_ids[rows]  # (b, C)
        completion_mask = generation.completion_mask[rows]  # (b, C)
        ids = torch.cat([query.input_ids, completion_ids], dim=1)  # (b, P + C)
        attention = torch.cat([query.attention_mask, completion_mask], dim=1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # real tokens only, as in sampling
        width = query.input_ids.shape[1]
        logprobs = []
        for m in (model, ref_model):
            with torch.no_grad():
                logits = m(input_ids=ids.to(m.device), attention_mask=attention.to(m.device),
                           position_ids=positions.to(m.device), use_cache=False).logits
            # (b, C, V): position P - 1 + t predicts reply token t
            predicting = torch.log_softmax(logits[:, width - 1 : -1].float().cpu() / temperature, dim=-1)
            logprobs.append(predicting.gather(-1, completion_ids[..., None]).squeeze(-1))  # (b, C)
        per_reply.append(((logprobs[0] - logprobs[1]) * completion_mask).sum(dim=1))
    return torch.cat(per_reply)
