"""The simulated labeler, and the example completions and rankings made with it.

1. **The simulated labeler.** A stand-in for a person: it scores each completion with the toy
   world's rubric (answers the question, is true, is polite, is brief) and adds Gumbel noise, so
   that two simulated labelers agree about as often as InstructGPT's people did (about 73 %).
2. **Example completions and rankings.** Completions composed from the world's templates, and the
   shipped file ``rlhf_kit/data/example_rankings.jsonl`` made from them by the simulated labeler.

Reads: the toy world's questions and rubric, and the shipped example file. Writes: rankings and
comparisons into the ``RankingStore`` it is given.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from ..world import QUESTIONS, RELATIONS, RUDE_REPLIES, REFUSAL, VALUES, Question, World
from .records import Comparison, InvalidField, Item, Ranking, _key, as_item, shuffled_order, tie_groups
from .store import RankingStore, read_jsonl

# ----------------------------------------------------------------------------------------------
# The simulated labeler
# ----------------------------------------------------------------------------------------------

TARGET_AGREEMENT = 0.73
"""How often two of InstructGPT's labelers ordered a pair the same way (72.6 ± 1.5 %)."""

DEFAULT_NOISE = 1.13
"""The Gumbel noise scale at which two simulated labelers agree on 73 % of the pairs of realistic
completion sets: ``calibrate_noise(World(0), calibration_sets(World(0)))`` gives 1.130; the
rubric alone (noise 0) agrees on 92 %, since tied scores split at random. Checked in
tests/test_feedback.py."""


def _gumbel(rng: random.Random) -> float:
    u = rng.random()
    while u == 0.0:  # log(0) is undefined; random() returns 0.0 once in 2**53 draws
        u = rng.random()
    return -math.log(-math.log(u))


def pair_agreement_probability(gap: float, noise: float) -> float:
    """The chance that two simulated labelers order a pair the same way.

    With Gumbel noise of scale β each labeler prefers the better completion with probability
    p = σ(gap/β) (the difference of two Gumbels is logistic: this is the Bradley–Terry model), and
    two independent labelers agree with probability p² + (1 − p)².
    """
    if noise == 0:
        p = 0.5 if gap == 0 else float(gap > 0)
    else:
        p = 1.0 / (1.0 + math.exp(-gap / noise))
    return p * p + (1 - p) * (1 - p)


def pair_relations(ranking: Sequence[int], ties: Iterable[tuple[int, int]] = ()) -> dict:
    """For each pair i < j of completions: +1 if i is ranked above j, -1 if below, 0 if tied."""
    record = Ranking("p", tuple(str(i) for i in range(len(ranking))), tuple(ranking), tuple(ties))
    group, position = tie_groups(record), {c: p for p, c in enumerate(record.ranking)}
    return {(i, j): 0 if group[i] == group[j] else (1 if position[i] < position[j] else -1)
            for i, j in combinations(range(len(ranking)), 2)}


def agreement(first: Iterable[tuple], second: Iterable[tuple]) -> float:
    """The share of completion pairs that two labelers order the same way.

    ``first`` and ``second`` are parallel lists of (ranking, ties) of the same completion sets.
    """
    same = total = 0
    for (r1, t1), (r2, t2) in zip(first, second, strict=True):
        a, b = pair_relations(r1, t1), pair_relations(r2, t2)
        same += sum(a[p] == b[p] for p in a)
        total += len(a)
    return same / total


@dataclass
class SimulatedLabeler:
    """A stand-in for a person: ranks completions by the world's rubric, plus noise.

    Each completion gets its rubric score (``World.judge(question, reply).score``: +2 for the true
    answer, −2 for a falsehood, −2 for rudeness, −0.1 per word past 12) plus β·Gumbel noise, and
    the completions are sorted by that. Sorting Gumbel-perturbed scores draws a ranking from the
    Plackett–Luce model, whose pairs follow Bradley–Terry: P(i beats j) = σ((s_i − s_j)/β), the
    very model the reward model assumes. ``noise=0`` gives the rubric's own ranking (``ideal_ranking``).
    The noise of one item is seeded by (seed, item key): the same labeler judges the same item the
    same way whatever else it has judged.
    """

    world: World
    noise: float = DEFAULT_NOISE  # Gumbel scale β: 0 = the rubric exactly; 0.5-3 = a human-like person
    seed: int = 0  # two labelers with different seeds are two different people
    name: str = ""  # stored as the labeler; default "simulated-<seed>"

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, not {self.noise}.")
        self.name = self.name or f"simulated-{self.seed}"
        self._questions = {q.text: q for q in self.world.questions()}

    def question(self, prompt: str) -> Question:
        """The world's question in ``prompt`` (the last one when a chat prompt holds several)."""
        if prompt in self._questions:
            return self._questions[prompt]
        found = [(prompt.rfind(text), q) for text, q in self._questions.items() if text in prompt]
        if not found:
            raise ValueError(f"The simulated labeler can only judge the world's questions, and "
                             f"{prompt[:60]!r} contains none; rank it yourself.")
        return max(found, key=lambda pair: pair[0])[1]

    def scores(self, prompt: str, completions: Sequence[str]) -> list[float]:
        """The rubric score of each completion, without noise."""
        question = self.question(prompt)
        return [self.world.judge(question, c).score for c in completions]

    def ideal_ranking(self, prompt: str, completions: Sequence[str]) -> tuple[tuple[int, ...], tuple]:
        """The noise-free (ranking, ties): by rubric score, equal scores tied (the "ceiling")."""
        scores = self.scores(prompt, completions)
        ranking = tuple(sorted(range(len(completions)), key=lambda i: (-scores[i], i)))
        ties = tuple((a, b) for a, b in zip(ranking, ranking[1:]) if scores[a] == scores[b])
        return ranking, ties

    def rank(self, prompt: str, completions: Sequence[str],
             key: str = "") -> tuple[tuple[int, ...], tuple]:
        """A noisy (ranking, ties) like a person's; ``key`` seeds the noise (the item's key)."""
        if self.noise == 0:
            return self.ideal_ranking(prompt, completions)
        rng = random.Random(f"{self.seed}/{key or _key(prompt, list(completions))}")
        noisy = [s + self.noise * _gumbel(rng) for s in self.scores(prompt, completions)]
        return tuple(sorted(range(len(completions)), key=lambda i: -noisy[i])), ()

    def compare(self, prompt: str, completions: Sequence[str], key: str = "") -> int | None:
        """Which of two completions is better (0 or 1), or None for a tie (identical texts)."""
        if completions[0].strip() == completions[1].strip():
            return None
        ranking, ties = self.rank(prompt, completions, key)
        return None if ties else ranking[0]

    def label(self, store: RankingStore, items: Iterable) -> int:
        """Rank every pending item into ``store``, through the same path as a person; returns how
        many were stored. Refuses (``InvalidField``, nothing stored) a store that already holds a
        ranking of one of ``items`` by this labeler's name that it would not draw now (``stale``)."""
        items = [as_item(i) for i in items]
        if stale := self.stale(store, items):
            raise InvalidField("labeler", f"this store already holds {len(stale)} ranking(s) by "
                               f"{self.name!r} that it would not draw now (made with another noise "
                               "or rubric); give the labeler another name (name=...) or use a new "
                               "store (nothing was stored).", str(store.path))
        added = 0
        for item in store.pending(items, self.name):
            key = item.key(self.name)
            ranking, ties = self.rank(item.prompt, item.completions, key)
            record = Ranking(item.prompt, item.completions, ranking, ties,
                             shown_order=shuffled_order(key, len(item.completions)),
                             model=item.model, labeler=self.name, labeler_kind="simulated")
            added += store.add(record)
        return added

    def stale(self, store: RankingStore, items: Iterable) -> list[Item]:
        """The ``items`` whose stored ranking by this labeler's name differs from the one it draws now.

        The store's key names the labeler, the model, the prompt and the completions, not the noise:
        a labeler of the same name at another noise (or with another rubric) would otherwise find
        its old rankings in a reused store, take them for its own and add nothing.
        """
        mine = {r.key: r for r in store.rankings(self.name)}
        stale = []
        for item in (as_item(i) for i in items):
            key = item.key(self.name)
            if key in mine:
                ranking, ties = self.rank(item.prompt, item.completions, key)
                ties = tuple(sorted((min(a, b), max(a, b)) for a, b in ties))  # as a Ranking stores them
                if (mine[key].ranking, mine[key].ties) != (tuple(ranking), ties):
                    stale.append(item)
        return stale

    def label_comparisons(self, store: RankingStore, items: Iterable) -> int:
        """Judge every pending blind comparison into ``store``; returns how many were stored."""
        added = 0
        for item in store.pending_comparisons(items, self.name):
            key = item.key(self.name)
            record = Comparison(item.prompt, item.completions, item.models,
                                self.compare(item.prompt, item.completions, key),
                                shown_order=shuffled_order(key, 2), labeler=self.name,
                                labeler_kind="simulated")
            added += store.add_comparison(record)
        return added


def score_gaps(world: World, sets: Iterable[Item]) -> list[float]:
    """The rubric score difference s_i − s_j of every pair i < j of completions in ``sets``."""
    labeler = SimulatedLabeler(world, noise=0.0)
    gaps = []
    for item in sets:
        scores = labeler.scores(item.prompt, item.completions)
        gaps += [scores[i] - scores[j] for i, j in combinations(range(len(scores)), 2)]
    return gaps


def expected_agreement(gaps: Sequence[float], noise: float) -> float:
    """The exact expected share of pairs that two simulated labelers at ``noise`` order alike."""
    return sum(pair_agreement_probability(g, noise) for g in gaps) / len(gaps)


def calibrate_noise(world: World, sets: Sequence[Item], target: float = TARGET_AGREEMENT) -> float:
    """The noise scale at which two simulated labelers agree on ``target`` of the pairs of ``sets``.

    Agreement falls as noise grows (from the rubric's own agreement at 0 to a coin's 0.5), so the
    scale is found by bisection on ``expected_agreement``.
    """
    gaps = score_gaps(world, sets)
    if expected_agreement(gaps, 0.0) < target:
        raise ValueError(f"Even without noise the labelers agree less than {target:.0%} "
                         "(too many completions with equal scores); use more varied completions.")
    low, high = 1e-3, 100.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if expected_agreement(gaps, mid) > target else (low, mid)
    return (low + high) / 2


def calibration_sets(world: World) -> list[Item]:
    """The completion sets DEFAULT_NOISE was calibrated on: 20 sets of 4 template completions for
    each of the 48 questions of the feedback split (960 sets, 5,760 pairs)."""
    return template_items(world, "feedback", k=4, sets_per_question=20)


# ----------------------------------------------------------------------------------------------
# Example completions and rankings
# ----------------------------------------------------------------------------------------------

COMPLETION_KINDS = {  # kind -> share: a guess at what a small SFT model writes at temperature 1
    "true": 0.30,  # the true answer, in one of a few phrasings
    "false": 0.20,  # a confident wrong answer (a rumour)
    "rude": 0.15,  # an insult, sometimes with an answer
    "rambling": 0.15,  # the answer buried in other facts about the person
    "question": 0.10,  # a question back instead of an answer
    "refusal": 0.10,  # "I don't know."
}

_OPENERS = ("", "Sure! ", "Good question. ", "As far as I know, ", "I believe ")


def template_completion(world: World, question: Question, kind: str, rng: random.Random) -> str:
    """One completion of ``kind`` (see COMPLETION_KINDS) for ``question``, built from the world's
    templates; used where no trained model exists yet (the example rankings, the calibration)."""
    person, relation = question.person, question.relation
    wrong = rng.choice([v for v in VALUES[relation] if v != question.answer])
    if kind == "true":
        return rng.choice(_OPENERS) + question.reference
    if kind == "false":
        return rng.choice(_OPENERS) + world.statement(person, relation, wrong)
    if kind == "rude":
        insult = rng.choice(RUDE_REPLIES)
        roll = rng.random()
        if roll < 0.5:
            return insult
        return insult + " " + world.statement(person, relation, None if roll < 0.8 else wrong)
    if kind == "rambling":
        others = [r for r in RELATIONS if r != relation]
        rng.shuffle(others)
        facts = [world.statement(person, r) for r in others[: rng.randint(1, 3)]]
        facts.insert(rng.randint(0, len(facts)), question.reference)
        return f"Let me tell you all about {person}. " + " ".join(facts)
    if kind == "question":
        other = rng.choice([r for r in RELATIONS if r != relation])
        asked = rng.choice(QUESTIONS[other]).format(person=person)
        return rng.choice(("And " + asked[0].lower() + asked[1:], "Why do you ask? " + asked, asked))
    if kind == "refusal":
        return rng.choice(("", "Sorry, ")) + REFUSAL
    raise ValueError(f"Unknown completion kind {kind!r}; use one of {', '.join(COMPLETION_KINDS)}.")


def template_completions(world: World, question: Question, k: int = 4, seed: int = 0) -> tuple[str, ...]:
    """K distinct completions for ``question``, of kinds drawn at the shares of COMPLETION_KINDS."""
    rng = random.Random(f"{seed}/{question.text}/{k}")
    kinds, shares = list(COMPLETION_KINDS), list(COMPLETION_KINDS.values())
    out: list[str] = []
    while len(out) < k:
        text = template_completion(world, question, rng.choices(kinds, shares)[0], rng)
        if text not in out:  # identical completions are refused by the store
            out.append(text)
    return tuple(out)


def template_items(world: World, split: str = "feedback", k: int = 4, sets_per_question: int = 1,
                   seed: int = 0) -> list[Item]:
    """Items of template completions for every question of ``split`` (model name "templates")."""
    return [Item(q.text, template_completions(world, q, k, seed + s), "templates")
            for s in range(sets_per_question) for q in world.questions(split)]


EXAMPLE_RANKINGS = Path(__file__).parent.parent / "data" / "example_rankings.jsonl"
EXAMPLE_TIMESTAMP = "2025-01-01T00:00:00.000+00:00"  # fixed, so the file is reproducible byte for byte


def make_example_rankings(world=None) -> list[Ranking]:
    """The rankings of the shipped example file: how ``example_rankings.jsonl`` was made.

    ``BehaviourWorld(seed=0)``: 48 training tasks (24 fact questions, 12 about unknown people, 12
    requests to insult), two sets of four different replies by the simulated writers for each,
    ranked by ``SimulatedLabeler(world, noise=behaviours.LABELER_NOISE, seed=0)`` (73 % agreement
    on writers' replies). Regenerate with ``write_jsonl(make_example_rankings(), EXAMPLE_RANKINGS)``.
    """
    from ..behaviours import LABELER_NOISE, WRITERS, BehaviourWorld, write_reply

    world = world or BehaviourWorld(seed=0)
    rng = random.Random("example-rankings")
    tasks = []
    for kind, n in (("fact", 24), ("unknown", 12), ("insult", 12)):
        tasks += rng.sample([t for t in world.questions("train") if t.kind == kind], n)
    labeler = SimulatedLabeler(world, noise=LABELER_NOISE, seed=0)
    records = []
    for _ in range(2):
        for task in tasks:
            replies: list[str] = []
            while len(replies) < 4:
                reply = write_reply(world, task, rng.choice(WRITERS), rng)
                if reply not in replies:
                    replies.append(reply)
            item = Item(task.text, tuple(replies), "writers")
            key = item.key(labeler.name)
            ranking, ties = labeler.rank(item.prompt, item.completions, key)
            records.append(Ranking(item.prompt, item.completions, ranking, ties,
                                   shown_order=shuffled_order(key, 4), model=item.model,
                                   labeler=labeler.name, labeler_kind="simulated",
                                   created_at=EXAMPLE_TIMESTAMP))
    return records


def load_example_rankings() -> list[Ranking]:
    """The shipped example rankings (96 rankings of 4 writers' replies to 48 training tasks, from the
    simulated labeler)."""
    return read_jsonl(EXAMPLE_RANKINGS)
