"""The course's lessons in order, and the "you are here" line at the top of each.

The story follows the recipe: a GPT learns to predict the next token (lesson 1), reinforcement
learning is met on its own, on a bandit and a handful of replies (lesson 2), then the model is
fine-tuned on demonstrations (lesson 3), people rank its replies (lesson 4), a reward model
learns those rankings (lesson 5), and PPO trains the model against the reward model (lesson 6),
before every stage is compared in a chat (lesson 7). ``LESSONS`` is that order;
``you_are_here(n)`` is the line each lesson's first cell carries, generated here so that all
eight agree (``tests/test_structure.py`` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lesson:
    number: int
    notebook: str  # the file name in course/, without ".ipynb"
    step: str  # the lesson's step of the recipe, as the map names it


LESSONS: tuple[Lesson, ...] = (
    Lesson(0, "00_start_here", "start here"),
    Lesson(1, "01_next_token_prediction", "next-token prediction"),
    Lesson(2, "02_learning_from_rewards", "learning from rewards"),
    Lesson(3, "03_demonstrations_sft", "demonstrations and SFT"),
    Lesson(4, "04_human_feedback", "ranking replies"),
    Lesson(5, "05_reward_model", "the reward model"),
    Lesson(6, "06_ppo", "PPO with a KL penalty"),
    Lesson(7, "07_lets_chat", "every stage side by side"),
)


def you_are_here(number: int) -> str:
    """The map of lessons 1 to 7 as one markdown line, with lesson ``number`` in bold."""
    if not 0 <= number < len(LESSONS):
        raise ValueError(f"there are lessons 0 to {len(LESSONS) - 1}; pass one of those numbers, not {number}")
    steps = [f"**{lesson.number} {lesson.step}**" if lesson.number == number else f"{lesson.number} {lesson.step}"
             for lesson in LESSONS[1:]]
    return "**You are here:** " + " → ".join(steps)
