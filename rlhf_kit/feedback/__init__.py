"""Human feedback: people rank completions, and each ranking becomes preference pairs.

For each prompt the model writes K completions and a person orders them from best to worst
(InstructGPT's labelers ranked 4 to 9 at a time). One ranking of K completions gives C(K,2)
(chosen, rejected) pairs, because every completion beats each one below it; the reward model of
the next lesson learns from them, each prompt's pairs weighted 1/C(K,2) so that they count as one
unit. The rankings are a learner's own work, so this package is mostly about not losing them:

1. ``records``: what a ranking is and the pairs it makes. A ``Ranking`` (or ``Comparison``) cannot
   be built invalid; a bad one raises a ``RankingError`` that names the field and says, in one
   sentence, what to do. ``expand_pairs`` turns rankings into TRL's (prompt, chosen, rejected) rows.
2. ``store``: ``RankingStore``, a SQLite file in which each ranking is on disk before ``add``
   returns, stored once however often it is added, and two notebooks can write at once; JSONL
   export and import (``write_jsonl``, ``read_jsonl``).
3. ``labeler``: the simulated labeler, a stand-in for a person that scores completions with the toy
   world's rubric plus noise, so that two of them agree about as often as InstructGPT's people did
   (about 73 %); template completions, and the shipped example rankings made from them.

Every public name of the three modules is importable from here (``feedback.Ranking``). The ranking
and comparison widgets that write to the store are in ``rlhf_kit/widgets.py``. Reads: completions
(from a model, or the templates of ``labeler``). Writes: one SQLite file (``default_store_path(lesson)``, one per lesson),
and JSONL exports. Taught in ``course/04_human_feedback.ipynb``.
"""

from __future__ import annotations

from .labeler import (COMPLETION_KINDS, DEFAULT_NOISE, EXAMPLE_RANKINGS, EXAMPLE_TIMESTAMP,
                      TARGET_AGREEMENT, SimulatedLabeler, agreement, calibrate_noise, calibration_sets,
                      expected_agreement, load_example_rankings, make_example_rankings,
                      pair_agreement_probability, pair_relations, score_gaps, template_completion,
                      template_completions, template_items)
from .records import (K_MAX, K_MIN, LABELER_KINDS, SCHEMA_VERSION, Comparison, ComparisonItem,
                      DamagedRecord, DamagedStore, InvalidCompletions, InvalidField, InvalidRanking,
                      InvalidTies, Item, PairStats, Ranking, RankingError, SchemaVersionError,
                      StoreUnavailable, as_comparison_item, as_item, check_completions,
                      check_labeler_kind, check_order, check_ranking, check_text, check_ties,
                      check_version, expand_pairs, now, pairs_dataset, ranking_pairs, shuffled_order,
                      tie_groups)
from .store import (COMPARISON_COLUMNS, JSON_COLUMNS, RANKING_COLUMNS, SCHEMA, STORE_TABLES, Progress,
                    RankingStore, default_store_path, read_jsonl, write_jsonl)
