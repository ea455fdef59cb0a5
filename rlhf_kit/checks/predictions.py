"""Predict, then try: the learner writes down what a setting will do, runs it, and compares.

A "predict, then try" exercise has three cells. The exercise cell holds the learner's prediction,
one of a few words (``prediction = "lower"``), written before anything runs. The cell after it
runs the experiment and the lesson asserts what it found. The check cell then calls
``check_prediction(prediction, outcome, choices, why)``, where ``outcome`` is the word the run
supports: it prints one ✓ line with the reason when the prediction matches, and raises
``CheckFailed`` with the reason when it does not, so a wrong guess teaches the same thing as a
right one. ``why`` is a sentence with no digits in it, so the line reads the same on every
machine.
"""

from __future__ import annotations

from collections.abc import Sequence

from .framework import CheckFailed


def check_prediction(prediction: object, outcome: str, choices: Sequence[str], why: str) -> None:
    """Compare the learner's ``prediction`` with the ``outcome`` of the run; say ``why`` either way."""
    if outcome not in choices:
        raise ValueError(f"the outcome {outcome!r} is not one of the choices {list(choices)}")
    words = " or ".join(repr(choice) for choice in choices)
    if not isinstance(prediction, str) or prediction.strip().lower() not in choices:
        raise CheckFailed(f"Write your prediction as one of {words} in the exercise cell, then rerun it and the "
                          f"cells below; you wrote {prediction!r}.")
    guess = prediction.strip().lower()
    if guess != outcome:
        raise CheckFailed(f"You predicted {guess!r}, but the run says {outcome!r}: {why}")
    print(f"✓ You predicted {guess!r}, and the run says {outcome!r}: {why}")
