"""Checks: does the function you wrote do what the kit's own function does?

The check cell under each exercise calls one ``check_<name>`` function imported from here, which
prints one ✓ line or raises ``CheckFailed`` with one sentence. ``framework`` holds how an answer
is checked and how a difference is put into words; ``lesson1`` to ``lesson7`` hold each lesson's
exercises (their inputs, edge cases and typical mistakes); ``predictions`` checks the "predict, then
try" exercises; ``EXERCISES`` gathers the others.
"""

from __future__ import annotations

from . import lesson1, lesson2, lesson3, lesson4, lesson5, lesson6, lesson7
from .framework import (CheckFailed, DataExercise, Exercise, Inputs, Mistake, TextExercise, describe,
                        first_difference)
from .lesson1 import (NEXT_TOKEN_LOSS, P_MARGIN, SOFTMAX_WITH_TEMPERATURE, TOP_P_FILTER,
                      check_next_token_loss, check_softmax_with_temperature, check_top_p_filter)
from .lesson2 import (LOG_POLICY_GRADIENT, PREFERENCE_PROBABILITY, REINFORCE_LOSS, SAMPLE_AVERAGE_UPDATE,
                      check_log_policy_gradient, check_preference_probability, check_reinforce_loss,
                      check_sample_average_update)
from .lesson3 import (FORMAT_CHAT, LOSS_MASK, SFT_LOSS, check_format_chat, check_loss_mask, check_sft_loss,
                      kit_chat_format)
from .lesson4 import (AGREEMENT_RATE, RANKING_TO_PAIRS, check_agreement_rate, check_ranking_to_pairs,
                      kit_ranking_pairs)
from .lesson5 import (BRADLEY_TERRY_LOSS, PAIRWISE_ACCURACY, RANKING_LOSS, check_bradley_terry_loss,
                      check_pairwise_accuracy, check_ranking_loss)
from .lesson6 import (CLIPPED_POLICY_LOSS, CLIPPED_VALUE_LOSS, COMPUTE_GAE, KL_PENALIZED_REWARDS,
                      check_clipped_policy_loss, check_clipped_value_loss, check_compute_gae,
                      check_kl_penalized_rewards)
from .lesson7 import (BEST_OF_N, DPO_LOSS, GROUP_ADVANTAGES, check_best_of_n, check_dpo_loss,
                      check_group_advantages)
from .predictions import check_prediction

EXERCISES: dict[str, Exercise] = {
    exercise.name: exercise
    for lesson in (lesson1, lesson2, lesson3, lesson4, lesson5, lesson6, lesson7)
    for exercise in lesson.LESSON_EXERCISES
}
"""Every exercise of the course by function name, in lesson order (tests walk through it)."""
