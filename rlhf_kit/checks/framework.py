"""The checks' shared machinery: does the function you wrote do what the kit's own function does?

Every exercise of the course asks for a small function the kit already has: a softmax with a
temperature, a top-p filter, the next-token loss, and in later lessons the SFT loss mask, the
Bradley–Terry loss, GAE and PPO's clipped loss. The check cell under an exercise runs your
function and the kit's reference side by side on fresh random inputs (seeded, so a rerun finds
the same thing) and either prints one line::

    ✓ softmax_with_temperature matches the reference on 20 random inputs.

or raises ``CheckFailed`` with one sentence about the first difference it found. How it decides:

1. ``NotImplementedError`` passes through untouched: the exercise is not started yet.
2. If your outputs equal those of a *typical wrong answer* on every input (forgot the
   temperature, shifted the wrong way, summed instead of averaged...), it names that mistake.
3. Otherwise it reports the first input where yours differs, in this order: it raised, it is not
   a tensor, its shape, its dtype, its values (index, expected, got, how many differ), or it
   changed its input in place. The sentence names the input's shapes and parameters, so you can
   rebuild that input and look.
4. For a loss (an exercise with ``grad_inputs``), a right value is not enough: training follows
   the loss's gradient, so on a few inputs the gradient with respect to those inputs is compared
   with the reference's. A loss rebuilt from a number (``torch.tensor(loss.item())``) or computed
   from a detached input has the right value and no gradient; its check says so.

Inputs come typical first and edge cases last (one token, huge logits, p = 1, a sequence of
two tokens), so a plain bug is shown on a plain input.

Adding an exercise takes three things: a function that draws one typical input, a list of edge
cases, and the typical mistakes written as small wrong implementations, each with one sentence
that starts with the function's name and says what to do instead. Declare an ``Exercise`` and a
two-line ``check_<name>`` function in the lesson's module (``lesson1`` to ``lesson7`` beside this
one), add the exercise to that module's ``LESSON_EXERCISES``, and import the check in
``rlhf_kit/checks/__init__.py``: ``EXERCISES`` gathers every lesson's, and the tests then check
that the reference passes and that every mistake is told apart by its own sentence. References
are named as ``"module:function"`` strings and imported on first use, so importing the checks
stays cheap and does not load every stage of the course.

This module holds what every exercise shares: ``Exercise`` and ``Mistake``, how both functions
are run on one input, how outputs are compared and a difference put into words, and the two
kinds of exercise whose answer is not a tensor (``TextExercise``, ``DataExercise``).
"""

from __future__ import annotations

import importlib
import math
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Inputs = dict[str, Any]
"""One input of a check: the arguments of the function, by name, in the order it takes them."""

_CHECKS_FOLDER = os.path.dirname(__file__)
"""The folder of the checks' own modules: their frames are left out of what the learner sees."""


class CheckFailed(AssertionError):
    """Your function differs from the reference; the message says where, in one sentence."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows: the sentence alone, without the frames of the check itself.

        When the learner's function raised, its own frames come first, since that is where
        the bug is.
        """
        lines = []
        cause = self.__cause__
        if cause is not None:
            frames = [f for f in traceback.extract_tb(cause.__traceback__)
                      if os.path.dirname(f.filename) != _CHECKS_FOLDER]
            lines.append("Your function raised an error:")
            lines += "".join(traceback.format_list(frames)).rstrip("\n").splitlines()
            lines += "".join(traceback.format_exception_only(cause)).rstrip("\n").splitlines()
            lines.append("")
        lines.append(f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}")
        return lines


class Mistake:
    """A typical wrong answer: the sentence to say, and wrong implementations that produce it.

    A learner's function is diagnosed with this mistake when, on every input of the check, it
    gives the same result as one of ``implementations`` (or raises the same kind of error).
    """

    def __init__(self, message: str, *implementations: Callable[..., Any]):
        if not implementations:
            raise ValueError("a Mistake needs at least one implementation that makes it")
        self.message = message
        self.implementations = implementations

    def __repr__(self) -> str:
        return f"Mistake({self.message[:40]!r}...)"


@dataclass(frozen=True)
class Exercise:
    """One function to write, how to test it, and the mistakes worth naming.

    ``draw`` returns one typical input from a seeded generator; ``edge_cases`` returns the
    inputs that catch what typical ones miss (they run last). ``trials`` counts both.
    """

    name: str  # the function the learner writes, as the notebook names it
    reference: str  # "module:function" of the kit's own version, imported on first use
    draw: Callable[[torch.Generator], Inputs]
    edge_cases: Callable[[], list[Inputs]] = list
    mistakes: Sequence[Mistake] = ()
    trials: int = 20
    rtol: float = 1e-4  # float32 maths done in another order differs by ~1e-6 relative
    atol: float = 1e-5
    hint_in_place: str = "compute a new tensor instead of writing into the argument"
    grad_inputs: tuple[str, ...] = ()  # for a loss: the inputs whose gradient must match the reference's
    grad_trials: int = 5  # inputs on which the gradients are compared

    def reference_function(self) -> Callable[..., Any]:
        module, _, function = self.reference.partition(":")
        return getattr(importlib.import_module(module), function)

    def inputs(self, seed: int = 0) -> list[Inputs]:
        """The inputs a check runs on: typical draws first, then the edge cases."""
        edges = self.edge_cases()
        generator = torch.Generator().manual_seed(seed)
        typical = [self.draw(generator) for _ in range(max(0, self.trials - len(edges)))]
        return typical + edges

    def check(self, fn: Callable[..., Any], seed: int = 0) -> None:
        """Compare ``fn`` with the reference; print one ✓ line, or raise ``CheckFailed``."""
        __tracebackhide__ = True  # IPython and pytest then show the message, not this frame
        if not callable(fn):
            raise CheckFailed(f"check_{self.name} needs your function itself, "
                              f"not a {type(fn).__name__}: pass {self.name} without parentheses.")
        reference = self.reference_function()
        runs = [_run(reference, fn, inputs) for inputs in self.inputs(seed)]
        if all(self._agrees(run) for run in runs):
            self._check_gradients(reference, fn, runs)
            print(f"✓ {self.name} matches the reference on {len(runs)} random inputs.")
            return
        for mistake in self.mistakes:
            if any(all(self._makes(run, wrong) for run in runs) for wrong in mistake.implementations):
                raise CheckFailed(mistake.message)
        number, run = next((i, r) for i, r in enumerate(runs, 1) if not self._agrees(r))
        where = f"on random input {number} of {len(runs)} ({describe(run.inputs)})"
        if isinstance(run.got, Raised):
            error = run.got.error
            raise CheckFailed(f"{self.name} raised {type(error).__name__} {where}: "
                              f"{_first_line(error)}") from error
        difference = first_difference(run.expected, run.got, self.rtol, self.atol)
        if difference:
            raise CheckFailed(f"{self.name} {difference.replace('{where}', where)}.")
        names = ", ".join(run.changed)
        raise CheckFailed(f"{self.name} changed its input {names} in place {where}, so the "
                          f"caller's {names} would change too: {self.hint_in_place}.")

    def _check_gradients(self, reference: Callable[..., Any], fn: Callable[..., Any],
                         runs: list[Run]) -> None:
        """A loss must also pass gradients back: a right value cut off from autograd trains nothing."""
        __tracebackhide__ = True
        for number, run in enumerate(runs[: self.grad_trials], 1):
            where = f"on random input {number} of {len(runs)} ({describe(run.inputs)})"
            names = " and ".join(n for n in self.grad_inputs if isinstance(run.inputs.get(n), torch.Tensor))
            expected = _gradients(reference, run.inputs, self.grad_inputs)
            if expected is None:  # the reference is not a loss of these inputs
                continue
            try:
                got = _gradients(fn, run.inputs, self.grad_inputs)
            except Exception as error:
                raise CheckFailed(f"{self.name} raised {type(error).__name__} {where} when its inputs "
                                  f"require gradients: {_first_line(error)}") from error
            if got is None:
                raise CheckFailed(
                    f"{self.name} returns the right value but cut off from autograd {where}: no "
                    f"gradient flows back to {names}, so training on it would change no weight; "
                    "compute it from the inputs with torch operations, without `.item()`, "
                    "`torch.tensor(...)`, `.detach()` or `torch.no_grad()`.")
            for name, e, g in zip(self.grad_inputs, expected, got):
                if e is None:
                    continue
                if g is None:
                    raise CheckFailed(f"{self.name} returns the right value, but no gradient flows "
                                      f"back to {name} {where}: compute the loss from {name} itself, "
                                      "not from a detached copy of it.")
                wrong = ~_close(e, g, self.rtol, self.atol)
                if wrong.any():
                    index = tuple(int(i) for i in wrong.nonzero()[0])
                    shown_e, shown_g = _numbers(e[index].item(), g[index].item())
                    raise CheckFailed(f"{self.name} returns the right value, but its gradient with "
                                      f"respect to {name} is {shown_g} at index {_index(index)} {where}, "
                                      f"where the reference's is {shown_e}: part of the computation "
                                      "is cut off from autograd (a detached tensor, or a value "
                                      "rebuilt from numbers).")

    def _agrees(self, run: Run) -> bool:
        return (not isinstance(run.got, Raised) and not run.changed
                and first_difference(run.expected, run.got, self.rtol, self.atol) is None)

    def _makes(self, run: Run, wrong: Callable[..., Any]) -> bool:
        """Does the learner's output on this input equal what ``wrong`` gives?"""
        made = _call(wrong, run.inputs)
        if isinstance(made, Raised) or isinstance(run.got, Raised):
            return (isinstance(made, Raised) and isinstance(run.got, Raised)
                    and type(made.error) is type(run.got.error))
        return _same_values(made, run.got, self.rtol, self.atol)


# ----------------------------------------------------------------------------------------------
# 1. Running both functions on one input
# ----------------------------------------------------------------------------------------------


@dataclass
class Raised:
    """What a call gave when it raised instead of returning."""

    error: BaseException


@dataclass
class Run:
    """One input, what the reference returned, what the learner's function gave."""

    inputs: Inputs
    expected: Any
    got: Any  # the return value, or Raised
    changed: list[str] = field(default_factory=list)  # inputs the learner modified in place


def draw_int(generator: torch.Generator, low: int, high: int) -> int:
    """A random integer from ``low`` to ``high``, both included, drawn from ``generator``."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _copy(inputs: Inputs) -> Inputs:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _call(fn: Callable[..., Any], inputs: Inputs) -> Any:
    # Positional, so that a learner may name the parameters differently; on a copy, so that a
    # function writing into its arguments cannot spoil the input for the next one.
    try:
        return fn(*_copy(inputs).values())
    except NotImplementedError:
        raise
    except Exception as error:  # the learner's bug: reported, not crashed on
        return Raised(error)


def _gradients(fn: Callable[..., Any], inputs: Inputs, names: Sequence[str]) -> list | None:
    """The gradients of ``fn``'s output (the first element of a tuple) with respect to the
    floating-point inputs ``names`` (None for one that gets none); None when the output is not
    connected to any of them."""
    given = _copy(inputs)
    leaves = []
    for name in names:
        value = given.get(name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            given[name] = value.requires_grad_(True)
            leaves.append(given[name])
    out = fn(*given.values())
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return None
    return list(torch.autograd.grad(out.sum(), leaves, allow_unused=True))


def _run(reference: Callable[..., Any], fn: Callable[..., Any], inputs: Inputs) -> Run:
    __tracebackhide__ = True
    expected = reference(*_copy(inputs).values())
    given = _copy(inputs)
    try:
        got = fn(*given.values())
    except NotImplementedError:
        raise  # the exercise is still to do: let the notebook show the hint as it is
    except Exception as error:
        got = Raised(error)
    changed = [k for k, v in inputs.items()
               if isinstance(v, torch.Tensor) and not torch.equal(v, given[k])]
    return Run(inputs, expected, got, changed)


# ----------------------------------------------------------------------------------------------
# 2. Comparing outputs and saying how they differ
# ----------------------------------------------------------------------------------------------


def first_difference(expected: Any, got: Any, rtol: float, atol: float, part: str = "") -> str | None:
    """The first way ``got`` differs from ``expected``, as a sentence with a ``{where}`` slot.

    ``None`` when they agree. Tensors are compared by type, shape, dtype, then values; tuples
    and lists element by element; numbers by value.
    """
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return (f"returned {_kind(got)}{part} {{where}}, where the reference returns "
                    f"{_kind(expected)}")
        for i, (e, g) in enumerate(zip(expected, got)):
            found = first_difference(e, g, rtol, atol, f"{part} (element {i} of what it returns)")
            if found:
                return found
        return None
    if isinstance(expected, torch.Tensor):
        if got is None:
            return f"returned None{part} {{where}}: the function must `return` its result"
        if not isinstance(got, torch.Tensor):
            advice = (": keep it a tensor, `.item()` and `float()` cut it off from autograd"
                      if isinstance(got, (int, float)) and expected.dim() == 0 else "")
            return (f"returned {_kind(got)}{part} {{where}}, where the reference returns "
                    f"a torch.Tensor{advice}")
        if got.shape != expected.shape:
            return (f"returned a tensor of shape {_shape(got)}{part} {{where}}, where the "
                    f"reference returns shape {_shape(expected)}")
        if got.dtype != expected.dtype:
            return (f"returned dtype {got.dtype}{part} {{where}}, where the reference "
                    f"returns {expected.dtype}")
        wrong = ~_close(expected, got, rtol, atol)
        if not wrong.any():
            return None
        index = tuple(int(i) for i in wrong.nonzero()[0])
        e, g = expected[index].item(), got[index].item()
        at = f" at index {_index(index)}" if index else ""
        many = (f" ({int(wrong.sum())} of {wrong.numel()} values differ)" if wrong.numel() > 1
                else "")
        shown_e, shown_g = _numbers(e, g)
        return f"returned {shown_g}{at}{part} {{where}}, where the reference returns {shown_e}{many}"
    if isinstance(expected, (int, float, bool)):
        if (not isinstance(got, (int, float, bool))
                or not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol)):
            return f"returned {got!r}{part} {{where}}, where the reference returns {expected!r}"
        return None
    return None if got == expected else f"returned {got!r}{part} {{where}}, not {expected!r}"


def _close(expected: torch.Tensor, got: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """Elementwise agreement; equal infinities and NaNs count as equal."""
    if expected.dtype.is_floating_point or got.dtype.is_floating_point:
        return torch.isclose(got.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True)
    return got == expected


def _same_values(a: Any, b: Any, rtol: float, atol: float) -> bool:
    """Equal up to the tolerances, whatever the dtypes (used to recognise a typical mistake)."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_values(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(_close(a, b, rtol, atol).all())
    return False


# ----------------------------------------------------------------------------------------------
# 3. Words for tensors, numbers and inputs
# ----------------------------------------------------------------------------------------------


def describe(inputs: Inputs) -> str:
    """``logits of shape (2, 5), temperature=0.5``: enough to rebuild the input by hand."""
    parts = []
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            parts.append(f"{name} of shape {_shape(value)}")
        elif isinstance(value, float):
            parts.append(f"{name}={value:g}")
        else:
            parts.append(f"{name}={value!r}")
    return ", ".join(parts)


def _shape(t: torch.Tensor) -> str:
    if t.dim() == 0:
        return "() (a single number)"
    return str(tuple(t.shape))


def _index(index: tuple[int, ...]) -> str:
    return str(index[0]) if len(index) == 1 else str(index)


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return "a torch.Tensor"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _numbers(expected: float, got: float) -> tuple[str, str]:
    """Both numbers with as many digits as it takes to see that they differ."""
    for digits in (4, 6, 9):
        e, g = f"{expected:.{digits}g}", f"{got:.{digits}g}"
        if e != g:
            break
    return e, g


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else "(no message)"
    return line if len(line) <= 200 else line[:197] + "..."


# ----------------------------------------------------------------------------------------------
# 4. Answers that are not tensors: text, plain data
# ----------------------------------------------------------------------------------------------


class TextExercise(Exercise):
    """An exercise whose answer is a string: a difference is shown where it starts."""

    def _makes(self, run: Run, wrong: Callable[..., Any]) -> bool:
        made = _call(wrong, run.inputs)
        if isinstance(made, str) and isinstance(run.got, str):
            return made == run.got
        return super()._makes(run, wrong)

    def check(self, fn: Callable[..., Any], seed: int = 0) -> None:
        __tracebackhide__ = True
        try:
            super().check(fn, seed)
        except CheckFailed as failed:
            if str(failed) in {m.message for m in self.mistakes} or not callable(fn):
                raise
            reference = self.reference_function()
            for number, inputs in enumerate(self.inputs(seed), 1):
                expected, got = reference(*inputs.values()), _call(fn, inputs)
                if isinstance(got, str) and got != expected:
                    at = next((i for i, (e, g) in enumerate(zip(expected, got)) if e != g),
                              min(len(expected), len(got)))
                    raise CheckFailed(
                        f"{self.name} differs from the tokenizer's template at character {at} on "
                        f"random input {number} ({describe(inputs)}): the template writes "
                        f"{expected[max(0, at - 20):at + 20]!r} and yours {got[max(0, at - 20):at + 20]!r}."
                    ) from None
            raise


@dataclass(frozen=True)
class DataExercise(Exercise):
    """An exercise whose answer is plain data: compared with ``first_difference`` after
    ``normalise`` (which puts an answer in the form compared, e.g. its pairs sorted, so that any
    order the task allows is right; it must hand back unchanged what it cannot normalise)."""

    normalise: Callable[[Any], Any] | None = None

    def _normalised(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if self.normalise is None:
            return fn

        def normalised(*args: Any) -> Any:
            return self.normalise(fn(*args))

        normalised.__name__ = getattr(fn, "__name__", "fn")
        return normalised

    def reference_function(self) -> Callable[..., Any]:
        return self._normalised(super().reference_function())

    def check(self, fn: Callable[..., Any], seed: int = 0) -> None:
        __tracebackhide__ = True
        super().check(self._normalised(fn) if callable(fn) else fn, seed)

    def _makes(self, run: Run, wrong: Callable[..., Any]) -> bool:
        made = _call(self._normalised(wrong), run.inputs)
        if isinstance(made, Raised) or isinstance(run.got, Raised):
            return (isinstance(made, Raised) and isinstance(run.got, Raised)
                    and type(made.error) is type(run.got.error))
        return first_difference(made, run.got, self.rtol, self.atol) is None
