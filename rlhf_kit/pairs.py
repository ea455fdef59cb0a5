"""Preference pairs for the reward model: pairs in, checked, split by prompt, grouped by ranking.

The reward model of lesson 5 learns from the rankings of lesson 4: a ranking of K completions
gives C(K,2) preference pairs, weighed 1/C(K,2) so that each ranking counts once (``reward.py``
says why). This module holds that data, from the rankings to the batches:

* ``as_pairs`` makes rows ``{prompt, chosen, rejected, group_id, weight}`` of rankings, pair rows
  or an exported dataset, and ``read_rankings`` reads a learner's ranking store without touching it;
* ``conversation`` and ``encode``: one side of a pair as the reward model reads it, exactly as
  TRL tokenizes it;
* ``audit_pairs`` refuses a bad pair (``InvalidPair``) and lists the ones too long to train on
  (``PairAudit``);
* ``split_by_prompt`` holds prompts out, never single pairs, and ``group_batches`` makes batches
  of whole rankings.

``reward.py`` imports what it uses from here (the lesson reaches all of it as ``reward.X``);
nothing here imports ``reward``. Taught in ``course/05_reward_model.ipynb``.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from .feedback import Ranking, RankingStore, expand_pairs


class InvalidPair(ValueError):
    """A preference pair that cannot be trained on: an empty text, or chosen equal to rejected."""

    def __init__(self, index: int, field: str, message: str):
        super().__init__(f"Pair {index}, {field}: {message}")
        self.index, self.field = index, field


def as_pairs(data) -> list[dict]:
    """Preference pairs as rows ``{prompt, chosen, rejected, group_id, weight}``.

    ``data`` is a list of ``Ranking`` (expanded with ``feedback.expand_pairs``), rows of that
    form, or the ``datasets.Dataset`` of ``feedback.pairs_dataset``. A row without a group is a
    group of its own, with weight 1.
    """
    if isinstance(data, datasets.Dataset):
        data = data.to_list()
    data = list(data)
    if data and isinstance(data[0], Ranking):
        return expand_pairs(data)[0]
    rows = []
    for index, row in enumerate(data):
        if not isinstance(row, dict) or not {"prompt", "chosen", "rejected"} <= row.keys():
            raise InvalidPair(index, "row", "a pair needs a 'prompt', a 'chosen' and a 'rejected' "
                              "text; build pairs with feedback.expand_pairs.")
        rows.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                     "group_id": row.get("group_id", -1 - index), "weight": row.get("weight", 1.0)})
    return rows


def read_rankings(path: str | Path, model: str | None = None,
                  labeler_kind: str | None = "person") -> list[Ranking]:
    """The rankings of a ranking store, read from a copy of it: the store itself is not touched.

    Opening a store in place takes its write lock for a moment and checkpoints its journal on
    closing; a copy (the database and its write-ahead log, which holds the latest rankings) is
    read instead, so a learner's store is never written to, even while a widget writes to it.
    A missing store has no rankings. ``model`` and ``labeler_kind`` ("person" by default: the
    learner's own) filter them; None keeps all.
    """
    path = Path(path).expanduser()
    if not path.exists():
        return []
    with tempfile.TemporaryDirectory(prefix="rlhf-kit-store-") as folder:
        copy = Path(folder) / path.name
        # A ranking committed while the files are copied is missed, never half-read: SQLite
        # checks every frame of the log and ignores an incomplete one.
        for suffix in ("", "-wal"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                shutil.copyfile(source, copy.with_name(copy.name + suffix))
        with RankingStore(copy) as store:
            rankings = store.rankings()
    return [r for r in rankings if (model is None or r.model == model)
            and (labeler_kind is None or r.labeler_kind == labeler_kind)]


def conversation(prompt: str, completion: str) -> list[dict]:
    """One side of a pair as the reward model reads it: the user's prompt, the assistant's reply."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def encode(tokenizer, prompt: str, completion: str) -> list[int]:
    """The token ids the reward model reads for one completion, exactly as TRL tokenizes them.

    With a chat template: the rendered conversation (TRL's conversational format). Without one:
    ``prompt``, a line break, ``completion`` and EOS. The line break matters: TRL joins a plain
    prompt and completion with no separator at all ("...live?Alice lives...").
    """
    if tokenizer.chat_template:
        return list(tokenizer.apply_chat_template(conversation(prompt, completion), tokenize=True,
                                                  return_dict=True)["input_ids"])
    text = prompt + "\n" + completion
    if not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return list(tokenizer(text=text)["input_ids"])


@dataclass
class PairAudit:
    """What the checks before training found: the pairs kept, and the ones dropped as too long."""

    kept: list[dict]
    dropped: list[dict]  # {"index", "prompt", "chosen_tokens", "rejected_tokens"}
    max_length: int | None
    n_pairs: int  # pairs that came in

    def summary(self) -> str:
        line = f"Pairs: {self.n_pairs} in, {len(self.kept)} kept"
        if not self.dropped:
            return line + "."
        which = ", ".join(str(d["index"]) for d in self.dropped[:10])
        more = f" and {len(self.dropped) - 10} more" if len(self.dropped) > 10 else ""
        return (line + f", {len(self.dropped)} dropped as longer than max_length={self.max_length} "
                f"tokens (pairs {which}{more}); raise max_length or shorten them.")


def audit_pairs(pairs, tokenizer, max_length: int | None, verbose: bool = True) -> PairAudit:
    """Check every pair before training: refuse bad ones, and say which are too long.

    An empty prompt or completion, or a pair whose chosen and rejected texts are the same, raises
    ``InvalidPair`` naming the pair: it teaches nothing, or contradicts itself. A pair whose chosen
    or rejected side is longer than ``max_length`` tokens is dropped, and listed: TRL's
    ``RewardTrainer`` drops such pairs without a word, and the kit's loop drops the same ones, so
    both train on the same data.
    """
    rows = as_pairs(pairs)
    if not rows:
        raise ValueError("There are no pairs to train on: rank some completions first.")
    kept, dropped = [], []
    for index, row in enumerate(rows):
        for name in ("prompt", "chosen", "rejected"):
            if not isinstance(row[name], str) or not row[name].strip():
                raise InvalidPair(index, name, "the text is empty; remove the pair or write the text.")
        if row["chosen"].strip() == row["rejected"].strip():
            raise InvalidPair(index, "rejected", "it is the same text as chosen, so the pair says "
                              "nothing about preference; remove it.")
        if not isinstance(row["weight"], (int, float)) or not row["weight"] > 0:
            raise InvalidPair(index, "weight", f"is {row['weight']!r}; use a positive number "
                              "(1/C(K,2) for the pairs of a ranking of K).")
        if max_length is not None:
            lengths = [len(encode(tokenizer, row["prompt"], row[side])) for side in ("chosen", "rejected")]
            if max(lengths) > max_length:
                dropped.append({"index": index, "prompt": row["prompt"],
                                "chosen_tokens": lengths[0], "rejected_tokens": lengths[1]})
                continue
        kept.append(row)
    audit = PairAudit(kept, dropped, max_length, len(rows))
    if verbose:
        print(audit.summary())
    if not kept:
        raise ValueError(f"Every pair is longer than max_length={max_length} tokens: raise it.")
    return audit


def split_by_prompt(pairs, heldout_share: float = 0.25, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and held-out pairs, split by prompt: every pair of a prompt lands on the same side.

    Splitting pairs at random would put pairs of one ranking, which share their completions, on
    both sides, and held-out accuracy would measure memory instead of judgement.
    """
    if not 0 < heldout_share < 1:
        raise ValueError(f"heldout_share must be between 0 and 1, not {heldout_share}.")
    rows = as_pairs(pairs)
    prompts = sorted({row["prompt"] for row in rows})
    if len(prompts) < 2:
        raise ValueError("Pairs of at least two prompts are needed to hold some prompts out.")
    random.Random(seed).shuffle(prompts)
    n_heldout = min(len(prompts) - 1, max(1, round(heldout_share * len(prompts))))
    heldout = set(prompts[:n_heldout])
    return ([row for row in rows if row["prompt"] not in heldout],
            [row for row in rows if row["prompt"] in heldout])


def group_batches(rows: list[dict], rankings_per_batch: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of batches: row indices, whole rankings at a time, rankings in a random order."""
    groups: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row["group_id"], []).append(index)
    order = [list(groups)[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    return [[i for g in order[start : start + rankings_per_batch] for i in groups[g]]
            for start in range(0, len(order), rankings_per_batch)]
