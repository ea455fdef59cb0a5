"""Checks: does the function you wrote do what the kit's own function does?

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

Inputs come typical first and edge cases last (one token, huge logits, p = 1, a sequence of
two tokens), so a plain bug is shown on a plain input.

Adding an exercise takes three things: a function that draws one typical input, a list of edge
cases, and the typical mistakes written as small wrong implementations, each with one sentence
that starts with the function's name and says what to do instead. Declare an ``Exercise``, a
two-line ``check_<name>`` function, and add it to ``EXERCISES``: the tests then check that the
reference passes and that every mistake is told apart by its own sentence. References are
named as ``"module:function"`` strings and imported on first use, so importing this module
stays cheap and does not load every stage of the course.
"""

from __future__ import annotations

import importlib
import math
import traceback
from itertools import combinations
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

Inputs = dict[str, Any]
"""One input of a check: the arguments of the function, by name, in the order it takes them."""


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
            frames = [f for f in traceback.extract_tb(cause.__traceback__) if f.filename != __file__]
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
# 4. Lesson 1: softmax with temperature
# ----------------------------------------------------------------------------------------------


def _random_logits(generator: torch.Generator, vocab: tuple[int, int] = (2, 40)) -> torch.Tensor:
    """Logits of a random shape: (V,), (B, V) or (B, T, V), at a random scale."""
    def randint(low, high):
        return int(torch.randint(low, high + 1, (), generator=generator))

    batch, time, vocab_size = randint(1, 4), randint(2, 6), randint(*vocab)
    shape = [(vocab_size,), (batch, vocab_size), (batch, time, vocab_size)][randint(0, 2)]
    scale = 0.5 + 3.5 * float(torch.rand((), generator=generator))
    return torch.randn(shape, generator=generator) * scale


def _draw_softmax(generator: torch.Generator) -> Inputs:
    temperatures = (0.2, 0.3, 0.5, 0.7, 1.5, 2.0, 3.0)  # never 1: it would hide a forgotten T
    temperature = temperatures[int(torch.randint(len(temperatures), (), generator=generator))]
    return {"logits": _random_logits(generator), "temperature": temperature}


def _softmax_edges() -> list[Inputs]:
    return [
        # one token in the vocabulary: its probability is 1
        {"logits": torch.tensor([[0.3], [-2.0], [5.0]]), "temperature": 0.7},
        # a very high temperature: nearly uniform
        {"logits": torch.tensor([[3.0, -1.0, 0.5, 2.0]]), "temperature": 50.0},
        # huge and hugely negative logits: exp() overflows to inf or underflows to 0
        {"logits": torch.tensor([[1000.0, 999.0, 990.0], [-1000.0, -1001.0, -1010.0]]),
         "temperature": 0.5},
    ]


def _softmax_no_temperature(logits, temperature):
    return torch.softmax(logits, dim=-1)


def _softmax_times_temperature(logits, temperature):
    return torch.softmax(logits * temperature, dim=-1)


def _softmax_dim0(logits, temperature):
    return torch.softmax(logits / temperature, dim=0)


def _softmax_dim1(logits, temperature):
    return torch.softmax(logits / temperature, dim=1)


def _softmax_unstable(logits, temperature):
    weights = torch.exp(logits / temperature)
    return weights / weights.sum(dim=-1, keepdim=True)


def _softmax_sum_without_keepdim(logits, temperature):
    scaled = logits / temperature
    weights = torch.exp(scaled - scaled.max(dim=-1, keepdim=True).values)
    return weights / weights.sum(dim=-1)


def _softmax_without_keepdim(logits, temperature):
    scaled = logits / temperature
    weights = torch.exp(scaled - scaled.max(dim=-1).values)
    return weights / weights.sum(dim=-1)


SOFTMAX_WITH_TEMPERATURE = Exercise(
    name="softmax_with_temperature",
    reference="rlhf_kit.sampling:softmax_with_temperature",
    draw=_draw_softmax,
    edge_cases=_softmax_edges,
    hint_in_place="write `logits = logits / temperature`, not `logits /= temperature`",
    mistakes=(
        Mistake("softmax_with_temperature ignores the temperature: divide the logits by "
                "temperature before the softmax, so that T < 1 sharpens and T > 1 flattens.",
                _softmax_no_temperature),
        Mistake("softmax_with_temperature multiplies the logits by the temperature: divide "
                "them by it instead, so that a high temperature flattens the distribution.",
                _softmax_times_temperature),
        Mistake("softmax_with_temperature normalises over the wrong dimension: the "
                "vocabulary is the last one, so each row along dim=-1 must add up to 1.",
                _softmax_dim0, _softmax_dim1),
        Mistake("softmax_with_temperature overflows on large logits (exp of more than about "
                "88 is inf in float32, and inf / inf is nan): subtract each row's largest "
                "scaled logit before exp, which leaves the result unchanged.",
                _softmax_unstable),
        Mistake("softmax_with_temperature divides by sums that lost their last dimension: "
                "use .max(dim=-1, keepdim=True) and .sum(dim=-1, keepdim=True) so that each "
                "row is divided by its own sum.",
                _softmax_sum_without_keepdim, _softmax_without_keepdim),
    ),
)


def check_softmax_with_temperature(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(logits, temperature)`` against ``rlhf_kit.sampling.softmax_with_temperature``."""
    __tracebackhide__ = True
    SOFTMAX_WITH_TEMPERATURE.check(fn)


# ----------------------------------------------------------------------------------------------
# 5. Lesson 1: top-p (nucleus) filtering
# ----------------------------------------------------------------------------------------------
#
# The reference keeps sorted token i while the probability mass ranked *before* it is below p:
# it keeps the smallest set that reaches p. The off-by-one variants below are the two ways to
# get the running sum wrong by one position; each is named in its message.

P_MARGIN = 1e-3
"""Drawn values of p stay this far from every running sum of probabilities. Right at a running
sum, correct implementations that add up in another order disagree by rounding (is 0.8 reached
by 0.5 + 0.3?); a millesimal away they all agree, and every off-by-one still shows."""


def _p_is_clear(logits: torch.Tensor, p: float) -> bool:
    probs = torch.softmax(logits.double(), dim=-1).sort(dim=-1, descending=True).values
    mass = probs.cumsum(dim=-1)[..., :-1]  # the masses "before" tokens 1..V-1
    return bool(((mass - p).abs() > P_MARGIN).all())


def _draw_top_p(generator: torch.Generator) -> Inputs:
    logits = _random_logits(generator, vocab=(3, 30))
    while True:  # deterministic: the generator decides how many draws it takes
        p = round(0.05 + 0.9 * float(torch.rand((), generator=generator)), 2)
        if _p_is_clear(logits, p):
            return {"logits": logits, "p": p}


def _top_p_edges() -> list[Inputs]:
    return [
        # p = 1 keeps every token
        {"logits": torch.tensor([[1.0, 0.5, -0.3, 2.0, 0.0], [0.2, -1.0, 0.7, 0.1, -0.4]]), "p": 1.0},
        # a tiny p keeps only the most likely token
        {"logits": torch.tensor([0.1, 2.0, -1.0, 1.5]), "p": 0.01},
        # the most likely token alone is past p: it is kept, and only it
        {"logits": torch.tensor([[0.0, 6.0, 1.0, -1.0], [2.0, 0.5, 0.0, 9.0]]), "p": 0.5},
        # a vocabulary of one token
        {"logits": torch.tensor([[1.5], [-0.5]]), "p": 0.3},
    ]


def _sorted_probs(logits):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    return sorted_logits, order, torch.softmax(sorted_logits, dim=-1)


def _unsort(remove_sorted, order):
    return remove_sorted.scatter(-1, order, remove_sorted)


def _top_p_one_too_few(logits, p):
    # inclusive running sum: the token that carries the total past p is dropped
    _, order, probs = _sorted_probs(logits)
    remove = probs.cumsum(dim=-1) > p
    remove[..., 0] = False
    return logits.masked_fill(_unsort(remove, order), float("-inf"))


def _top_p_drops_top_token(logits, p):
    # inclusive running sum, and nothing protects the most likely token
    _, order, probs = _sorted_probs(logits)
    remove = probs.cumsum(dim=-1) > p
    return logits.masked_fill(_unsort(remove, order), float("-inf"))


def _top_p_one_too_many(logits, p):
    # exclusive running sum (cumsum - probs) *and* the usual shift right: shifted twice
    _, order, probs = _sorted_probs(logits)
    remove = (probs.cumsum(dim=-1) - probs) >= p
    remove = torch.cat([torch.zeros_like(remove[..., :1]), remove[..., :-1]], dim=-1)
    return logits.masked_fill(_unsort(remove, order), float("-inf"))


def _top_p_unsorted(logits, p):
    probs = torch.softmax(logits, dim=-1)
    remove = (probs.cumsum(dim=-1) - probs) >= p
    return logits.masked_fill(remove, float("-inf"))


def _top_p_sorted_output(logits, p):
    sorted_logits, _, probs = _sorted_probs(logits)
    remove = (probs.cumsum(dim=-1) - probs) >= p
    return sorted_logits.masked_fill(remove, float("-inf"))


def _top_p_reference(logits, p):
    from .sampling import top_p_filter

    return top_p_filter(logits, p)


def _top_p_probabilities(logits, p):
    return torch.softmax(_top_p_reference(logits, p), dim=-1)


def _top_p_probabilities_not_renormalised(logits, p):
    kept = torch.isfinite(_top_p_reference(logits, p))
    return torch.softmax(logits, dim=-1) * kept


def _top_p_zero_not_inf(logits, p):
    kept = torch.isfinite(_top_p_reference(logits, p))
    return logits.masked_fill(~kept, 0.0)


TOP_P_FILTER = Exercise(
    name="top_p_filter",
    reference="rlhf_kit.sampling:top_p_filter",
    draw=_draw_top_p,
    edge_cases=_top_p_edges,
    hint_in_place="use `logits.masked_fill(remove, float('-inf'))`, which returns a new tensor, "
                  "rather than `logits[remove] = ...`",
    mistakes=(
        Mistake("top_p_filter keeps one token too few: it drops the token that carries the "
                "running total past p, so what is kept adds up to less than p; compare p with "
                "the mass *before* each token (cumsum minus the token's own probability), not "
                "with the running total that includes it.",
                _top_p_one_too_few),
        Mistake("top_p_filter removes the most likely token when its probability alone is "
                "above p, which leaves nothing to sample: compare p with the mass *before* "
                "each token, which is 0 for the first, so the most likely token is always kept.",
                _top_p_drops_top_token),
        Mistake("top_p_filter keeps one token too many: the tokens before the last one it "
                "keeps already reach p; if you subtracted each token's own probability from "
                "the cumsum, do not also shift the mask right by one.",
                _top_p_one_too_many),
        Mistake("top_p_filter adds up probabilities in vocabulary order: sort the tokens from "
                "most to least likely first (torch.sort(logits, descending=True)), so the "
                "nucleus depends on probability, not on token ids.",
                _top_p_unsorted),
        Mistake("top_p_filter returns the logits in sorted order: put the mask back in "
                "vocabulary order (remove_sorted.scatter(-1, order, remove_sorted)) and apply "
                "it to the original logits, so token i stays at index i.",
                _top_p_sorted_output),
        Mistake("top_p_filter returns probabilities, not logits: leave the kept logits as "
                "they are and set the removed ones to float('-inf'), so the filters compose "
                "and the softmax comes last.",
                _top_p_probabilities, _top_p_probabilities_not_renormalised),
        Mistake("top_p_filter sets the removed logits to 0, and exp(0) still gives them "
                "probability: set them to float('-inf') so that the softmax gives exactly 0.",
                _top_p_zero_not_inf),
    ),
)


def check_top_p_filter(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(logits, p)`` against ``rlhf_kit.sampling.top_p_filter``."""
    __tracebackhide__ = True
    TOP_P_FILTER.check(fn)


# ----------------------------------------------------------------------------------------------
# 6. Lesson 1: the next-token loss
# ----------------------------------------------------------------------------------------------


def _draw_next_token(generator: torch.Generator) -> Inputs:
    def randint(low, high):
        return int(torch.randint(low, high + 1, (), generator=generator))

    batch, time, vocab = randint(1, 4), randint(3, 10), randint(3, 30)
    logits = torch.randn(batch, time, vocab, generator=generator) * 2
    input_ids = torch.randint(vocab, (batch, time), generator=generator)
    return {"logits": logits, "input_ids": input_ids}


def _next_token_edges() -> list[Inputs]:
    generator = torch.Generator().manual_seed(1)
    return [
        # two tokens: a single prediction
        {"logits": torch.tensor([[[0.5, -0.5], [2.0, 1.0]]]), "input_ids": torch.tensor([[1, 0]])},
        # a large vocabulary, few positions
        {"logits": torch.randn(2, 3, 1000, generator=generator),
         "input_ids": torch.randint(1000, (2, 3), generator=generator)},
        # a long sequence over a small vocabulary
        {"logits": torch.randn(2, 64, 5, generator=generator),
         "input_ids": torch.randint(5, (2, 64), generator=generator)},
    ]


def _cross_entropy(predictions, targets, reduction="mean"):
    return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1),
                           reduction=reduction)


def _loss_no_shift(logits, input_ids):
    return _cross_entropy(logits, input_ids)


def _loss_no_shift_drop_last(logits, input_ids):
    return _cross_entropy(logits[:, :-1], input_ids[:, :-1])


def _loss_no_shift_drop_first(logits, input_ids):
    return _cross_entropy(logits[:, 1:], input_ids[:, 1:])


def _loss_shift_backwards(logits, input_ids):
    return _cross_entropy(logits[:, 1:], input_ids[:, :-1])


def _loss_sum(logits, input_ids):
    return _cross_entropy(logits[:, :-1], input_ids[:, 1:], reduction="sum")


def _loss_sum_per_sequence(logits, input_ids):
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")
    return per_token.sum(dim=1).mean()  # (B, T-1) -> summed over time, averaged over the batch


def _loss_raw_logits(logits, input_ids):
    picked = logits[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return -picked.mean()


NEXT_TOKEN_LOSS = Exercise(
    name="next_token_loss",
    reference="rlhf_kit.pretrain:next_token_loss",
    draw=_draw_next_token,
    edge_cases=_next_token_edges,
    mistakes=(
        Mistake("next_token_loss scores each position on the token it has just read, not on "
                "the next one (no shift): compare logits[:, :-1] (positions 0 to T-2) with "
                "input_ids[:, 1:] (tokens 1 to T-1).",
                _loss_no_shift, _loss_no_shift_drop_last, _loss_no_shift_drop_first),
        Mistake("next_token_loss shifts the wrong way, asking position t to predict token "
                "t-1: use logits[:, :-1] with input_ids[:, 1:].",
                _loss_shift_backwards),
        Mistake("next_token_loss adds up the per-token losses instead of averaging them: take "
                "the mean over all B·(T-1) predictions, so the loss does not grow with the "
                "batch size or the length of the text.",
                _loss_sum, _loss_sum_per_sequence),
        Mistake("next_token_loss uses the raw logits as log-probabilities: take log_softmax "
                "over the vocabulary first (F.cross_entropy does it for you).",
                _loss_raw_logits),
    ),
)


def check_next_token_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(logits, input_ids)`` against ``rlhf_kit.pretrain.next_token_loss``."""
    __tracebackhide__ = True
    NEXT_TOKEN_LOSS.check(fn)


EXERCISES: dict[str, Exercise] = {
    exercise.name: exercise
    for exercise in (SOFTMAX_WITH_TEMPERATURE, TOP_P_FILTER, NEXT_TOKEN_LOSS)
}
"""Every exercise of the course by function name, in lesson order (tests walk through it)."""


# ----------------------------------------------------------------------------------------------
# 7. Lesson 2 (SFT): the loss mask, the SFT loss, and the chat template by hand
# ----------------------------------------------------------------------------------------------
#
# These checks need a tokenizer with the kit's chat template. The notebook passes its own; on
# their own (tests, EXERCISES) they use a small one trained in about a second on the toy world,
# so that no stage has to be built. Conversations are drawn from the world's questions.


class _Named:
    """A tokenizer shown by a short name in check messages (its repr is pages long)."""

    def __init__(self, tokenizer: Any, name: str = "tokenizer"):
        self._tokenizer, self._name = tokenizer, name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._tokenizer, attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def __repr__(self) -> str:
        return self._name


_SMALL_TOKENIZER: list[Any] = []


def _small_tokenizer() -> Any:
    """A byte-level BPE tokenizer with the kit's template, trained once on 400 world documents."""
    if not _SMALL_TOKENIZER:
        from .tokenizer import train_tokenizer
        from .world import World

        _SMALL_TOKENIZER.append(_Named(train_tokenizer(World(seed=0).corpus(400), vocab_size=400)))
    return _SMALL_TOKENIZER[0]


def _draw_conversation(generator: torch.Generator, ends_with_assistant: bool = True) -> list[dict]:
    """A random conversation: maybe a system message, then 1 to 3 questions and true answers."""
    from .sft import SYSTEM_PROMPTS, THANKS, WELCOME
    from .world import World

    def pick(options):
        return options[int(torch.randint(len(options), (), generator=generator))]

    questions = World(seed=0).questions("sft")
    messages = []
    if float(torch.rand((), generator=generator)) < 0.4:
        messages.append({"role": "system", "content": pick(SYSTEM_PROMPTS)})
    for _ in range(int(torch.randint(1, 4, (), generator=generator))):
        if float(torch.rand((), generator=generator)) < 0.15:
            user, assistant = pick(THANKS), pick(WELCOME)
        else:
            question = pick(questions)
            user, assistant = question.text, question.reference
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages if ends_with_assistant else messages[:-1]


# -- the loss mask -------------------------------------------------------------------------------


def _template_pieces(tokenizer: Any, messages: list[dict]) -> list[tuple[list[int], str, str]]:
    """The kit's template piece by piece: (ids, role, part), part being tag, content or end."""
    from .tokenizer import END

    pieces = []
    for message in messages:
        for part, text in (("tag", f"<|{message['role']}|>"), ("content", message["content"]),
                           ("end", END)):
            pieces.append((tokenizer(text, add_special_tokens=False).input_ids, message["role"], part))
    return pieces


def _mask_counting(name: str, rule: Callable[[str, str, bool], bool]) -> Callable[..., torch.Tensor]:
    """A wrong loss mask, ``name``, that counts a piece when ``rule(role, part, is_last_turn)``."""
    def mask(tokenizer, messages):
        pieces = _template_pieces(tokenizer, messages)
        last = max((i for i, (_, role, _) in enumerate(pieces) if role == "assistant"), default=-1)
        values = []
        for i, (ids, role, part) in enumerate(pieces):
            values += [int(rule(role, part, last - 2 <= i <= last))] * len(ids)
        return torch.tensor(values, dtype=torch.long)

    mask.__name__ = f"_loss_mask_{name}"
    return mask


def _loss_mask_exercise(tokenizer: Any = None) -> Exercise:
    def tokenizer_to_use():
        return _small_tokenizer() if tokenizer is None else _Named(tokenizer)

    def draw(generator):
        return {"tokenizer": tokenizer_to_use(), "messages": _draw_conversation(generator)}

    def edges():
        t = tokenizer_to_use()
        return [
            # one exchange, nothing else
            {"tokenizer": t, "messages": [{"role": "user", "content": "Where does Alice live?"},
                                          {"role": "assistant", "content": "Alice lives in Ashford."}]},
            # a conversation that ends with the user's turn: nothing to learn, all zeros
            {"tokenizer": t, "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi"}]},
            # five exchanges
            {"tokenizer": t, "messages": [m for _ in range(5) for m in (
                {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "Glad to help."})]},
        ]

    return Exercise(
        name="loss_mask",
        reference="rlhf_kit.sft:loss_mask",
        draw=draw,
        edge_cases=edges,
        mistakes=(
            Mistake("loss_mask leaves out the <|end|> that closes each assistant turn: count it "
                    "(it is the assistant's last token), or the model never learns to stop.",
                    _mask_counting("without_end", lambda role, part, last: role == "assistant" and part == "content")),
            Mistake("loss_mask counts the <|assistant|> tag: the template writes the tag (it ends "
                    "the prompt the model is given), so only the words after it and the closing "
                    "<|end|> count.",
                    _mask_counting("with_tag", lambda role, part, last: role == "assistant"),
                    _mask_counting("with_tag_without_end", lambda role, part, last: role == "assistant" and part != "end")),
            Mistake("loss_mask counts every token: the system and user turns are context the model "
                    "reads, not text it should learn to write, so they are 0.",
                    _mask_counting("everything", lambda role, part, last: True)),
            Mistake("loss_mask is inverted: 1 belongs on the assistant's words and its <|end|>, 0 "
                    "on everything else.",
                    _mask_counting("inverted", lambda role, part, last: not (role == "assistant" and part != "tag"))),
            Mistake("loss_mask counts only the last assistant turn: every assistant turn of a "
                    "demonstration was written by a person, so every one counts.",
                    _mask_counting("last_turn_only", lambda role, part, last: last and part != "tag")),
        ),
    )


LOSS_MASK = _loss_mask_exercise()


def check_loss_mask(fn: Callable[..., torch.Tensor], tokenizer: Any = None) -> None:
    """Check ``fn(tokenizer, messages)`` against ``rlhf_kit.sft.loss_mask``.

    Pass the notebook's ``tokenizer`` to check on it; without one a small tokenizer with the
    kit's template is used.
    """
    __tracebackhide__ = True
    (LOSS_MASK if tokenizer is None else _loss_mask_exercise(tokenizer)).check(fn)


# -- the SFT loss --------------------------------------------------------------------------------


def _draw_sft_loss(generator: torch.Generator) -> Inputs:
    def randint(low, high):
        return int(torch.randint(low, high + 1, (), generator=generator))

    batch, time, vocab = randint(2, 4), randint(4, 12), randint(3, 30)
    logits = torch.randn(batch, time, vocab, generator=generator) * 2
    labels = torch.randint(vocab, (batch, time), generator=generator)
    # Each row: a prompt of random length, then the assistant's tokens, then padding.
    loss_mask = torch.zeros(batch, time, dtype=torch.long)
    for row in range(batch):
        start = randint(1, time - 2)
        loss_mask[row, start : randint(start + 1, time)] = 1
    return {"logits": logits, "labels": labels, "loss_mask": loss_mask}


def _sft_loss_edges() -> list[Inputs]:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 7, generator=generator)
    labels = torch.randint(7, (2, 5), generator=generator)
    return [
        # every token counts: the SFT loss is then the pretraining loss
        {"logits": logits, "labels": labels, "loss_mask": torch.ones(2, 5, dtype=torch.long)},
        # one row counts 4 tokens, the other 1: a mean over tokens, not over rows
        {"logits": logits, "labels": labels,
         "loss_mask": torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 0, 1]])},
        # only the first token is marked, and it is never predicted: nothing counts, the loss is 0
        {"logits": logits, "labels": labels,
         "loss_mask": torch.tensor([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0]])},
    ]


def _masked_mean(nll, weights):
    return (nll * weights).sum() / weights.sum().clamp(min=1)


def _nll(logits, labels):
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (B, T)


def _sft_loss_no_shift(logits, labels, loss_mask):
    return _masked_mean(_nll(logits, labels), loss_mask.float())


def _sft_loss_mask_not_shifted(logits, labels, loss_mask):
    return _masked_mean(_nll(logits[:, :-1], labels[:, 1:]), loss_mask[:, :-1].float())


def _sft_loss_ignores_mask(logits, labels, loss_mask):
    return _nll(logits[:, :-1], labels[:, 1:]).mean()


def _sft_loss_divides_by_all(logits, labels, loss_mask):
    nll = _nll(logits[:, :-1], labels[:, 1:])
    return (nll * loss_mask[:, 1:]).sum() / nll.numel()


def _sft_loss_per_row(logits, labels, loss_mask):
    nll, weights = _nll(logits[:, :-1], labels[:, 1:]), loss_mask[:, 1:].float()
    return ((nll * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)).mean()


def _sft_loss_sum(logits, labels, loss_mask):
    return (_nll(logits[:, :-1], labels[:, 1:]) * loss_mask[:, 1:]).sum()


def _sft_loss_nan_when_empty(logits, labels, loss_mask):
    nll, weights = _nll(logits[:, :-1], labels[:, 1:]), loss_mask[:, 1:].float()
    return (nll * weights).sum() / weights.sum()


def _sft_loss_raw_logits(logits, labels, loss_mask):
    picked = logits[:, :-1].gather(-1, labels[:, 1:, None]).squeeze(-1)
    return _masked_mean(-picked, loss_mask[:, 1:].float())


SFT_LOSS = Exercise(
    name="sft_loss",
    reference="rlhf_kit.sft:sft_loss",
    draw=_draw_sft_loss,
    edge_cases=_sft_loss_edges,
    mistakes=(
        Mistake("sft_loss scores each position on the token it has just read (no shift): "
                "position t predicts token t+1, so use logits[:, :-1] with labels[:, 1:] and "
                "loss_mask[:, 1:].",
                _sft_loss_no_shift),
        Mistake("sft_loss shifts the logits and labels but not the mask: a prediction counts "
                "when the token it predicts is the assistant's, so use loss_mask[:, 1:], the "
                "mask of labels[:, 1:].",
                _sft_loss_mask_not_shifted),
        Mistake("sft_loss ignores the mask and averages over every token: multiply the "
                "per-token losses by the mask so that system and user tokens add nothing.",
                _sft_loss_ignores_mask),
        Mistake("sft_loss divides by every position, masked ones included: divide by the "
                "number of counted tokens (the sum of the shifted mask).",
                _sft_loss_divides_by_all),
        Mistake("sft_loss averages each row first and then the rows: average over all counted "
                "tokens of the batch at once, as TRL does, so that a long answer weighs more "
                "than a short one.",
                _sft_loss_per_row),
        Mistake("sft_loss adds up the counted losses instead of averaging them: divide by the "
                "number of counted tokens.",
                _sft_loss_sum),
        Mistake("sft_loss returns nan when no token counts (0 / 0): divide by the count "
                "clamped to at least 1, so that such a batch gives a loss of 0.",
                _sft_loss_nan_when_empty),
        Mistake("sft_loss uses the raw logits as log-probabilities: take log_softmax over the "
                "vocabulary first (F.cross_entropy does it for you).",
                _sft_loss_raw_logits),
    ),
)


def check_sft_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(logits, labels, loss_mask)`` against ``rlhf_kit.sft.sft_loss``."""
    __tracebackhide__ = True
    SFT_LOSS.check(fn)


# -- the chat template by hand -------------------------------------------------------------------


def kit_chat_format(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The reference for ``format_chat``: the kit's chat template, rendered by a tokenizer."""
    return _small_tokenizer().apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)


def _draw_format(generator: torch.Generator) -> Inputs:
    prompt = float(torch.rand((), generator=generator)) < 0.5  # a prompt waiting for a reply
    messages = _draw_conversation(generator, ends_with_assistant=not prompt)
    return {"messages": messages, "add_generation_prompt": prompt}


def _format_edges() -> list[Inputs]:
    exchange = [{"role": "user", "content": "Where does Alice live?"},
                {"role": "assistant", "content": "Alice lives in Ashford."}]
    return [
        # a whole conversation, asked for a generation prompt anyway
        {"messages": exchange, "add_generation_prompt": True},
        # a system message alone
        {"messages": [{"role": "system", "content": "Be brief."}], "add_generation_prompt": False},
    ]


def _format_with(name: str, separator: str = "", end_assistant: bool = True, prompt: str | None = None):
    """A hand-written template that differs from the kit's in one way."""
    def format_chat(messages, add_generation_prompt=False):
        text = ""
        for m in messages:
            end = "<|end|>" if end_assistant or m["role"] != "assistant" else ""
            text += f"<|{m['role']}|>{m['content']}{end}{separator}"
        wanted = add_generation_prompt if prompt is None else prompt == "always"
        return text + ("<|assistant|>" if wanted else "")

    format_chat.__name__ = f"_format_chat_{name}"
    return format_chat


class _TextExercise(Exercise):
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


FORMAT_CHAT = _TextExercise(
    name="format_chat",
    reference="rlhf_kit.checks:kit_chat_format",
    draw=_draw_format,
    edge_cases=_format_edges,
    trials=12,
    mistakes=(
        Mistake("format_chat puts a line break after each turn: the template's {%- and -%} "
                "strip the whitespace around its tags, so each turn follows the previous one "
                "directly.",
                _format_with("line_breaks", separator="\n")),
        Mistake("format_chat leaves out the <|end|> after the assistant's turns: every turn, "
                "the assistant's included, ends with <|end|>.",
                _format_with("without_end", end_assistant=False)),
        Mistake("format_chat ignores add_generation_prompt: when it is True, end with "
                "<|assistant|> (the cue for the model to reply), and only then.",
                _format_with("never_prompts", prompt="never"), _format_with("always_prompts", prompt="always")),
    ),
)


def check_format_chat(fn: Callable[..., str]) -> None:
    """Check ``fn(messages, add_generation_prompt)`` against the kit's chat template."""
    __tracebackhide__ = True
    FORMAT_CHAT.check(fn)


EXERCISES.update({exercise.name: exercise for exercise in (LOSS_MASK, SFT_LOSS, FORMAT_CHAT)})


# ----------------------------------------------------------------------------------------------
# 8. Lesson 3 (human feedback): rankings to pairs, and how often two labelers agree
# ----------------------------------------------------------------------------------------------
#
# The answers here are plain Python data (pairs of indices, counts, a share), not tensors, and
# the inputs are tuples, so that no function can change them in place. A ranking lists completion
# indices best first; ties are pairs (i, j) with i < j joining two neighbours of the ranking, as
# ``feedback.Ranking`` stores them. Rankings have 2 to 9 completions, as InstructGPT's had 4 to 9.


@dataclass(frozen=True)
class _DataExercise(Exercise):
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


def _feedback_randint(generator: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (), generator=generator))


def _draw_ties(generator: torch.Generator, ranking: tuple[int, ...], share: float = 0.3) -> tuple:
    """Some neighbours of ``ranking`` marked as ties, each written (i, j) with i < j."""
    return tuple(sorted((min(a, b), max(a, b)) for a, b in zip(ranking, ranking[1:])
                        if float(torch.rand((), generator=generator)) < share))


def _draw_ranking_with_ties(generator: torch.Generator, k: int) -> tuple[tuple[int, ...], tuple]:
    ranking = tuple(torch.randperm(k, generator=generator).tolist())
    return ranking, _draw_ties(generator, ranking)


# -- rankings to pairs ---------------------------------------------------------------------------


def kit_ranking_pairs(ranking: Sequence[int], ties: Sequence[tuple[int, int]] = ()) -> tuple[list, int]:
    """The reference for ``ranking_to_pairs``: ``feedback.ranking_pairs`` of a bare ranking."""
    from .feedback import Ranking, ranking_pairs

    record = Ranking("prompt", tuple(f"completion {i}" for i in range(len(ranking))),
                     tuple(ranking), tuple(tuple(t) for t in ties))
    return ranking_pairs(record)


def _sorted_pairs(result: Any) -> Any:
    """(pairs, dropped) with the pairs as sorted tuples: any order of the pairs is right."""
    try:
        pairs, dropped = result
        return sorted(tuple(pair) for pair in pairs), dropped
    except (TypeError, ValueError):  # not two values, or not pairs: compared as it is
        return result


def _draw_pairs(generator: torch.Generator) -> Inputs:
    ranking, ties = _draw_ranking_with_ties(generator, _feedback_randint(generator, 2, 9))
    return {"ranking": ranking, "ties": ties}


def _pairs_edges() -> list[Inputs]:
    return [
        # two completions: one pair
        {"ranking": (1, 0), "ties": ()},
        # two completions marked equally good: no pair, one tie dropped
        {"ranking": (1, 0), "ties": ((0, 1),)},
        # the tie (1, 3) joins 3 (ranked third) and 1 (last): written smaller index first
        {"ranking": (2, 0, 3, 1), "ties": ((1, 3),)},
        # a run of ties: 0 = 1 and 1 = 2, so 0 = 2 as well
        {"ranking": (0, 1, 2, 3), "ties": ((0, 1), (1, 2))},
        # nine completions, as many as InstructGPT's labelers ranked at once: 36 pairs
        {"ranking": (8, 3, 5, 0, 7, 1, 6, 2, 4), "ties": ()},
    ]


def _tie_groups_of(order: Sequence[int], ties: Sequence[tuple[int, int]]) -> dict[int, int]:
    """Completion -> group: a completion tied with the one before it in ``order`` joins its group."""
    tied = {frozenset(t) for t in ties}
    group, number, previous = {}, -1, None
    for c in order:
        if previous is None or frozenset((previous, c)) not in tied:
            number += 1
        group[c], previous = number, c
    return group


def _pairs_with(name: str, pairing: str = "all", ties_mode: str = "groups", places: bool = False,
                flip: bool = False, count: bool = True, pairs_only: bool = False):
    """A ``ranking_to_pairs`` that differs from the kit's in the ways named by its arguments."""
    def ranking_to_pairs(ranking, ties):
        order = tuple(sorted(range(len(ranking)), key=lambda i: ranking[i])) if places else tuple(ranking)
        candidates = {
            "all": list(combinations(order, 2)),
            "adjacent": list(zip(order, order[1:])),
            "best": [(order[0], c) for c in order[1:]],
            "both_orders": [(a, b) for a in order for b in order if a != b],
            "square": [(a, b) for a in order for b in order],
        }[pairing]
        group = _tie_groups_of(order, ties)
        marked = {frozenset(t) for t in ties}
        written = {tuple(t) for t in ties}
        tied = {
            "groups": lambda a, b: group[a] == group[b],
            "direct": lambda a, b: frozenset((a, b)) in marked,
            "one_way": lambda a, b: (a, b) in written,
            "keep": lambda a, b: False,
        }[ties_mode]
        kept = [(b, a) if flip else (a, b) for a, b in candidates if not tied(a, b)]
        if pairs_only:
            return kept
        return kept, (len(candidates) - len(kept) if count else 0)

    ranking_to_pairs.__name__ = f"_pairs_{name}"
    return ranking_to_pairs


RANKING_TO_PAIRS = _DataExercise(
    name="ranking_to_pairs",
    reference="rlhf_kit.checks:kit_ranking_pairs",
    draw=_draw_pairs,
    edge_cases=_pairs_edges,
    normalise=_sorted_pairs,
    mistakes=(
        Mistake("ranking_to_pairs returns only the pairs: return two values, the list of "
                "(chosen, rejected) pairs and the number of tied pairs it dropped.",
                _pairs_with("only", pairs_only=True)),
        Mistake("ranking_to_pairs keeps the pairs marked as ties: two completions marked equally "
                "good say nothing about which is better, so drop each tied pair and count it.",
                _pairs_with("keeps_ties", ties_mode="keep")),
        Mistake("ranking_to_pairs drops the tied pairs but does not count them: return how many "
                "it dropped as the second value (pairs + dropped = K·(K-1)/2).",
                _pairs_with("uncounted", count=False)),
        Mistake("ranking_to_pairs makes a pair of every two completions in both orders (K² or "
                "K·(K-1) pairs): each two completions give one pair, the one ranked higher "
                "first, K·(K-1)/2 pairs in all.",
                _pairs_with("square", pairing="square", ties_mode="keep"),
                _pairs_with("both_orders", pairing="both_orders", ties_mode="keep"),
                _pairs_with("both_orders_without_ties", pairing="both_orders")),
        Mistake("ranking_to_pairs pairs only neighbours of the ranking: every completion beats "
                "each one ranked below it, not only the next one, so make all K·(K-1)/2 pairs.",
                _pairs_with("adjacent", pairing="adjacent")),
        Mistake("ranking_to_pairs pairs only the best completion with the others: the second "
                "best also beats the ones below it, and so on, so make all K·(K-1)/2 pairs.",
                _pairs_with("best_only", pairing="best")),
        Mistake("ranking_to_pairs puts the worse completion first: a pair is (chosen, rejected), "
                "the completion ranked higher first.",
                _pairs_with("flipped", flip=True)),
        Mistake("ranking_to_pairs reads ranking[i] as the place of completion i: a ranking lists "
                "completion indices best first, so ranking[0] is the best completion.",
                _pairs_with("places", places=True)),
        Mistake("ranking_to_pairs misses a tie when the completion ranked higher has the larger "
                "index: a tie is written (i, j) with i < j whatever the ranking says, so look for "
                "both (a, b) and (b, a).",
                _pairs_with("ties_one_way", ties_mode="one_way")),
        Mistake("ranking_to_pairs drops only the pairs marked as ties: in a run of ties (a = b "
                "and b = c) a and c are equal too, so drop (a, c) as well.",
                _pairs_with("ties_not_chained", ties_mode="direct")),
    ),
)


def check_ranking_to_pairs(fn: Callable[..., tuple]) -> None:
    """Check ``fn(ranking, ties)`` against ``rlhf_kit.feedback.ranking_pairs``."""
    __tracebackhide__ = True
    RANKING_TO_PAIRS.check(fn)


# -- agreement between two labelers --------------------------------------------------------------


def _second_opinion(generator: torch.Generator, ranking: tuple[int, ...]) -> tuple[tuple[int, ...], tuple]:
    """Another labeler's ranking of the same completions: mostly alike, as people's are."""
    if float(torch.rand((), generator=generator)) < 0.2:  # sometimes a different view altogether
        return _draw_ranking_with_ties(generator, len(ranking))
    order = list(ranking)
    for p in range(len(order) - 1):  # swap some neighbours
        if float(torch.rand((), generator=generator)) < 0.3:
            order[p], order[p + 1] = order[p + 1], order[p]
    return tuple(order), _draw_ties(generator, tuple(order), share=0.2)


def _draw_agreement(generator: torch.Generator) -> Inputs:
    first, second = [], []
    for _ in range(_feedback_randint(generator, 1, 5)):
        ranking, ties = _draw_ranking_with_ties(generator, _feedback_randint(generator, 2, 7))
        first.append((ranking, ties))
        second.append(_second_opinion(generator, ranking))
    return {"first": tuple(first), "second": tuple(second)}


def _agreement_edges() -> list[Inputs]:
    return [
        # the same rankings: they agree on every pair
        {"first": (((2, 0, 1), ()), ((1, 0), ())), "second": (((2, 0, 1), ()), ((1, 0), ()))},
        # opposite rankings: they agree on none
        {"first": (((0, 1, 2, 3), ()),), "second": (((3, 2, 1, 0), ()),)},
        # a tie by both (agreement), a tie by one only (disagreement)
        {"first": (((0, 1, 2), ((0, 1),)), ((3, 0, 2, 1), ((0, 3),))),
         "second": (((1, 0, 2), ((0, 1),)), ((3, 0, 2, 1), ()))},
        # a ranking of 9 (36 pairs) and one of 2 (1 pair): every pair counts once
        {"first": (((0, 1, 2, 3, 4, 5, 6, 7, 8), ()), ((0, 1), ())),
         "second": (((1, 0, 2, 3, 4, 5, 6, 8, 7), ()), ((1, 0), ()))},
    ]


def _relations(ranking: Sequence[int], ties: Sequence[tuple[int, int]], square: bool = False) -> dict:
    """(i, j) -> +1 if i is above j, -1 if below, 0 if tied; pairs i < j (or all i, j)."""
    group, place = _tie_groups_of(ranking, ties), {c: p for p, c in enumerate(ranking)}
    k = len(ranking)
    pairs = [(i, j) for i in range(k) for j in range(k)] if square else list(combinations(range(k), 2))
    return {(i, j): 0 if group[i] == group[j] else (1 if place[i] < place[j] else -1) for i, j in pairs}


def _agreement_counts(first, second, square=False, ignore_ties=False) -> list[tuple[int, int]]:
    """(pairs ordered alike, pairs) for each completion set."""
    counts = []
    for (r1, t1), (r2, t2) in zip(first, second):
        a = _relations(r1, () if ignore_ties else t1, square)
        b = _relations(r2, () if ignore_ties else t2, square)
        counts.append((sum(a[p] == b[p] for p in a), len(a)))
    return counts


def _pooled(counts):
    return sum(s for s, _ in counts) / sum(n for _, n in counts)


def _agreement_with_itself(first, second):
    return _pooled(_agreement_counts(first, first))


def _agreement_second_with_itself(first, second):
    return _pooled(_agreement_counts(second, second))


def _agreement_whole_rankings(first, second):
    same = [r1 == r2 and sorted(t1) == sorted(t2) for (r1, t1), (r2, t2) in zip(first, second)]
    return sum(same) / len(same)


def _agreement_positions(first, second):
    same = [a == b for (r1, _), (r2, _) in zip(first, second) for a, b in zip(r1, r2)]
    return sum(same) / len(same)


def _agreement_ignores_ties(first, second):
    return _pooled(_agreement_counts(first, second, ignore_ties=True))


def _agreement_mean_of_sets(first, second):
    counts = _agreement_counts(first, second)
    return sum(s / n for s, n in counts) / len(counts)


def _agreement_square(first, second):
    return _pooled(_agreement_counts(first, second, square=True))


def _agreement_count(first, second):
    return sum(s for s, _ in _agreement_counts(first, second))


AGREEMENT_RATE = _DataExercise(
    name="agreement_rate",
    reference="rlhf_kit.feedback:agreement",
    draw=_draw_agreement,
    edge_cases=_agreement_edges,
    mistakes=(
        Mistake("agreement_rate compares a labeler's rankings with themselves, which always "
                "agree: compare first[n] with second[n], the two labelers' rankings of the same "
                "completions.",
                _agreement_with_itself, _agreement_second_with_itself),
        Mistake("agreement_rate counts the completion sets ranked identically: compare pair by "
                "pair, since two rankings of 4 that swap one neighbour still agree on 5 of their 6 "
                "pairs.",
                _agreement_whole_rankings),
        Mistake("agreement_rate compares places (the same completion at the same place): compare "
                "pairs, whether both labelers put i above j, j above i, or tie them.",
                _agreement_positions),
        Mistake("agreement_rate ignores the ties: a pair both labelers tied is an agreement, and "
                "a pair one tied and the other ordered is a disagreement.",
                _agreement_ignores_ties),
        Mistake("agreement_rate averages the rate of each completion set: pool the pairs of all "
                "sets, so that a ranking of 9 (36 pairs) counts more than a ranking of 2 (1 pair).",
                _agreement_mean_of_sets),
        Mistake("agreement_rate counts K² pairs per ranking, each completion with itself too: "
                "use the K·(K-1)/2 pairs i < j.",
                _agreement_square),
        Mistake("agreement_rate returns how many pairs agree: divide by the number of pairs to "
                "get a share between 0 and 1.",
                _agreement_count),
    ),
)


def check_agreement_rate(fn: Callable[..., float]) -> None:
    """Check ``fn(first, second)`` against ``rlhf_kit.feedback.agreement``."""
    __tracebackhide__ = True
    AGREEMENT_RATE.check(fn)


EXERCISES.update({exercise.name: exercise for exercise in (RANKING_TO_PAIRS, AGREEMENT_RATE)})


# ----------------------------------------------------------------------------------------------
# 9. Lesson 4 (reward model): the Bradley–Terry loss, the loss of one ranking, pairwise accuracy
# ----------------------------------------------------------------------------------------------
#
# Scores are drawn at scales from 0.5 to 4, so that a wrong sign, a missing log or a missing
# mean all show; the edge cases hold equal scores (the loss is ln 2), margins of 200 (σ(-200) is
# 0 in float32, so log(σ(·)) overflows where logsigmoid does not) and, for the accuracy, ties.


def _scores(generator: torch.Generator, n: int) -> torch.Tensor:
    scale = 0.5 + 3.5 * float(torch.rand((), generator=generator))
    return torch.randn(n, generator=generator) * scale


def _draw_bradley_terry(generator: torch.Generator) -> Inputs:
    batch = int(torch.randint(1, 9, (), generator=generator))
    chosen, rejected = _scores(generator, batch), _scores(generator, batch)
    weights = None
    if float(torch.rand((), generator=generator)) < 0.6:  # weights 1/C(K,2) of rankings of 2 to 9
        k = torch.randint(2, 10, (batch,), generator=generator).float()
        weights = 2.0 / (k * (k - 1))
    return {"chosen_scores": chosen, "rejected_scores": rejected, "weights": weights}


def _bradley_terry_edges() -> list[Inputs]:
    return [
        # equal scores: a coin flip, the loss is ln 2
        {"chosen_scores": torch.tensor([0.5, -1.0, 2.0]), "rejected_scores": torch.tensor([0.5, -1.0, 2.0]),
         "weights": None},
        # margins of ±200: σ(-200) is 0 in float32, and log(0) is -inf
        {"chosen_scores": torch.tensor([-100.0, 100.0, 1.0]), "rejected_scores": torch.tensor([100.0, -100.0, 0.0]),
         "weights": torch.tensor([0.5, 0.25, 0.25])},
        # one pair of a ranking of 9 and six of a ranking of 4: each ranking counts once
        {"chosen_scores": torch.tensor([0.3, 1.2, -0.4, 0.9, 2.0, -1.5, 0.1]),
         "rejected_scores": torch.tensor([-0.2, 0.4, -1.0, 1.5, 0.3, -0.5, 0.6]),
         "weights": torch.tensor([1 / 36] + [1 / 6] * 6)},
    ]


def _bt_reduce(losses, weights):
    return losses.mean() if weights is None else (weights * losses).sum() / weights.sum()


def _bt_reversed(chosen_scores, rejected_scores, weights=None):
    return _bt_reduce(-F.logsigmoid(rejected_scores - chosen_scores), weights)


def _bt_no_minus(chosen_scores, rejected_scores, weights=None):
    return _bt_reduce(F.logsigmoid(chosen_scores - rejected_scores), weights)


def _bt_no_log(chosen_scores, rejected_scores, weights=None):
    return _bt_reduce(-torch.sigmoid(chosen_scores - rejected_scores), weights)


def _bt_probability(chosen_scores, rejected_scores, weights=None):
    return _bt_reduce(torch.sigmoid(chosen_scores - rejected_scores), weights)


def _bt_unstable(chosen_scores, rejected_scores, weights=None):
    return _bt_reduce(-torch.log(torch.sigmoid(chosen_scores - rejected_scores)), weights)


def _bt_ignores_weights(chosen_scores, rejected_scores, weights=None):
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def _bt_divides_by_count(chosen_scores, rejected_scores, weights=None):
    losses = -F.logsigmoid(chosen_scores - rejected_scores)
    return losses.mean() if weights is None else (weights * losses).mean()


def _bt_sum(chosen_scores, rejected_scores, weights=None):
    losses = -F.logsigmoid(chosen_scores - rejected_scores)
    return losses.sum() if weights is None else (weights * losses).sum()


BRADLEY_TERRY_LOSS = Exercise(
    name="bradley_terry_loss",
    reference="rlhf_kit.reward:bradley_terry_loss",
    draw=_draw_bradley_terry,
    edge_cases=_bradley_terry_edges,
    mistakes=(
        Mistake("bradley_terry_loss rewards the rejected side: the loss is -log σ(r_chosen - "
                "r_rejected), chosen minus rejected, so that it falls as the chosen side pulls ahead.",
                _bt_reversed),
        Mistake("bradley_terry_loss returns the log-likelihood, not the loss: put a minus sign "
                "in front, -log σ(r_chosen - r_rejected), so that training minimises it.",
                _bt_no_minus),
        Mistake("bradley_terry_loss leaves out the log: the loss is -log σ(r_chosen - "
                "r_rejected), the negative log-probability of the person's choice.",
                _bt_no_log),
        Mistake("bradley_terry_loss returns the probability of the person's choice, σ(r_chosen - "
                "r_rejected), which training would push down: the loss is its negative log, "
                "-log σ(r_chosen - r_rejected).",
                _bt_probability),
        Mistake("bradley_terry_loss overflows when a rejected score is far above its chosen "
                "one: σ(-200) is 0 in float32 and log(0) is -inf; use F.logsigmoid, which "
                "computes log σ(x) without forming σ(x).",
                _bt_unstable),
        Mistake("bradley_terry_loss ignores the weights: multiply each pair's loss by its "
                "weight, then divide by the sum of the weights (with weights=None, take the mean).",
                _bt_ignores_weights),
        Mistake("bradley_terry_loss divides the weighted losses by the number of pairs: divide "
                "by the sum of the weights, so that every ranking in the batch counts once.",
                _bt_divides_by_count),
        Mistake("bradley_terry_loss adds the losses up instead of averaging them: divide by the "
                "sum of the weights (or take the mean), so the loss does not grow with the batch.",
                _bt_sum),
    ),
)


def check_bradley_terry_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(chosen_scores, rejected_scores, weights)`` against
    ``rlhf_kit.reward.bradley_terry_loss``."""
    __tracebackhide__ = True
    BRADLEY_TERRY_LOSS.check(fn)


def _draw_ranking(generator: torch.Generator) -> Inputs:
    k = int(torch.randint(3, 10, (), generator=generator))
    return {"scores": _scores(generator, k), "ranking": torch.randperm(k, generator=generator)}


def _ranking_edges() -> list[Inputs]:
    return [
        # two completions: one pair
        {"scores": torch.tensor([0.2, 1.5]), "ranking": torch.tensor([1, 0])},
        # equal scores: every pair is a coin flip, the loss is ln 2
        {"scores": torch.full((5,), 0.7), "ranking": torch.tensor([3, 0, 4, 1, 2])},
        # the best completion scored 200 below the worst: log(σ(-200)) overflows
        {"scores": torch.tensor([100.0, 0.0, -100.0, 5.0]), "ranking": torch.tensor([2, 3, 1, 0])},
    ]


def _ranked_pairs(ordered):
    better, worse = torch.triu_indices(len(ordered), len(ordered), offset=1)
    return ordered[better], ordered[worse]


def _rank_loss_of(ordered, log_sigmoid=F.logsigmoid, reduce=torch.mean):
    better, worse = _ranked_pairs(ordered)
    return reduce(-log_sigmoid(better - worse))


def _ranking_adjacent(scores, ranking):
    ordered = scores[ranking]
    return -F.logsigmoid(ordered[:-1] - ordered[1:]).mean()


def _ranking_best_only(scores, ranking):
    ordered = scores[ranking]
    return -F.logsigmoid(ordered[0] - ordered[1:]).mean()


def _ranking_sum(scores, ranking):
    return _rank_loss_of(scores[ranking], reduce=torch.sum)


def _ranking_backwards(scores, ranking):
    return _rank_loss_of(scores[ranking.flip(0)])


def _ranking_as_places(scores, ranking):
    return _rank_loss_of(scores[torch.argsort(ranking)])


def _ranking_ignored(scores, ranking):
    return _rank_loss_of(scores)


def _ranking_unstable(scores, ranking):
    return _rank_loss_of(scores[ranking], log_sigmoid=lambda x: torch.log(torch.sigmoid(x)))


RANKING_LOSS = Exercise(
    name="ranking_loss",
    reference="rlhf_kit.reward:ranking_loss",
    draw=_draw_ranking,
    edge_cases=_ranking_edges,
    mistakes=(
        Mistake("ranking_loss compares only neighbours of the ranking: every completion beats "
                "every one ranked below it, so use all K·(K-1)/2 pairs.",
                _ranking_adjacent),
        Mistake("ranking_loss compares only the best completion with the others: every "
                "completion also beats the ones ranked below it, so use all K·(K-1)/2 pairs.",
                _ranking_best_only),
        Mistake("ranking_loss adds up the pair losses instead of averaging them: divide by "
                "K·(K-1)/2, so that a ranking of 9 does not weigh six times a ranking of 4.",
                _ranking_sum),
        Mistake("ranking_loss reads the ranking backwards: it lists completion indices best "
                "first, so ranking[0] is the one that beats all the others.",
                _ranking_backwards),
        Mistake("ranking_loss reads ranking[i] as the place of completion i: it is the other "
                "way round, ranking[0] is the index of the best completion, so order the scores "
                "with scores[ranking].",
                _ranking_as_places),
        Mistake("ranking_loss ignores the ranking and pairs the scores in index order: order "
                "them best first with scores[ranking] before pairing.",
                _ranking_ignored),
        Mistake("ranking_loss overflows when a better completion scores far below a worse one: "
                "σ(-200) is 0 in float32 and log(0) is -inf; use F.logsigmoid.",
                _ranking_unstable),
    ),
)


def check_ranking_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(scores, ranking)`` against ``rlhf_kit.reward.ranking_loss``."""
    __tracebackhide__ = True
    RANKING_LOSS.check(fn)


def _draw_accuracy(generator: torch.Generator) -> Inputs:
    batch = int(torch.randint(2, 17, (), generator=generator))
    if float(torch.rand((), generator=generator)) < 0.5:  # whole-number scores: some pairs tie
        chosen = torch.randint(-2, 3, (batch,), generator=generator).float()
        rejected = torch.randint(-2, 3, (batch,), generator=generator).float()
        rejected[0] = chosen[0]  # at least one tie
    else:
        chosen, rejected = _scores(generator, batch), _scores(generator, batch)
    return {"chosen_scores": chosen, "rejected_scores": rejected}


def _accuracy_edges() -> list[Inputs]:
    return [
        # every pair tied: nothing is told apart
        {"chosen_scores": torch.tensor([1.0, -0.5, 0.0]), "rejected_scores": torch.tensor([1.0, -0.5, 0.0])},
        # one pair, right
        {"chosen_scores": torch.tensor([0.3]), "rejected_scores": torch.tensor([-0.3])},
        # all right but one tie
        {"chosen_scores": torch.tensor([2.0, 1.0, 0.5, 3.0]), "rejected_scores": torch.tensor([1.0, 0.0, 0.5, -1.0])},
    ]


def _accuracy_ties_count(chosen_scores, rejected_scores):
    return (chosen_scores >= rejected_scores).float().mean()


def _accuracy_reversed(chosen_scores, rejected_scores):
    return (chosen_scores < rejected_scores).float().mean()


def _accuracy_count(chosen_scores, rejected_scores):
    return (chosen_scores > rejected_scores).float().sum()


def _accuracy_half_ties(chosen_scores, rejected_scores):
    return ((chosen_scores > rejected_scores).float()
            + 0.5 * (chosen_scores == rejected_scores).float()).mean()


PAIRWISE_ACCURACY = Exercise(
    name="pairwise_accuracy",
    reference="rlhf_kit.reward:pairwise_accuracy",
    draw=_draw_accuracy,
    edge_cases=_accuracy_edges,
    mistakes=(
        Mistake("pairwise_accuracy counts a tie as a success: use >, since a model that gives "
                "both sides the same score has not told them apart.",
                _accuracy_ties_count),
        Mistake("pairwise_accuracy counts the pairs where the rejected side scores higher: a "
                "pair is right when chosen_scores > rejected_scores.",
                _accuracy_reversed),
        Mistake("pairwise_accuracy counts the right pairs instead of giving their share: divide "
                "by the number of pairs (or take .float().mean()).",
                _accuracy_count),
        Mistake("pairwise_accuracy gives a tie half a point: count only strict wins, as the kit "
                "and TRL's RewardTrainer do, so that a tie counts as not told apart.",
                _accuracy_half_ties),
    ),
)


def check_pairwise_accuracy(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(chosen_scores, rejected_scores)`` against ``rlhf_kit.reward.pairwise_accuracy``."""
    __tracebackhide__ = True
    PAIRWISE_ACCURACY.check(fn)


EXERCISES.update({exercise.name: exercise
                  for exercise in (BRADLEY_TERRY_LOSS, RANKING_LOSS, PAIRWISE_ACCURACY)})


# ----------------------------------------------------------------------------------------------
# 10. Lesson 5 (learning from rewards): the sample average, ∇ log π of a softmax policy, the
#     REINFORCE loss with a baseline, the Bradley–Terry probability
# ----------------------------------------------------------------------------------------------
#
# References live in ``rlhf_kit.bandits``. Inputs are small batches of independent bandits: R
# runs of K arms. Rewards are drawn around an offset of -2 to 5 and baselines are never 0, so a
# forgotten or reversed baseline shows; edge cases hold logits of ±1000 (exp overflows, log of a
# softmax that underflowed is -inf), the first reward of an arm (count 1) and equal scores.


def _l05_randint(generator: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (), generator=generator))


def _l05_scale(generator: torch.Generator) -> float:
    return 0.5 + 2.5 * float(torch.rand((), generator=generator))


# -- the sample-average update -------------------------------------------------------------------


def _draw_sample_average(generator: torch.Generator) -> Inputs:
    runs, arms = _l05_randint(generator, 1, 8), _l05_randint(generator, 2, 6)
    shape = [(runs,), (runs, arms)][_l05_randint(generator, 0, 1)]
    estimate = torch.randn(shape, generator=generator) * 2
    count = torch.randint(2, 60, shape, generator=generator).float()  # rewards seen, this one included
    reward = estimate + torch.randn(shape, generator=generator) * _l05_scale(generator) + 1.0
    return {"estimate": estimate, "count": count, "reward": reward}


def _sample_average_edges() -> list[Inputs]:
    return [
        # the first reward of each arm (count 1) replaces the initial estimate
        {"estimate": torch.tensor([0.0, 5.0, -3.0]), "count": torch.ones(3),
         "reward": torch.tensor([1.5, -0.5, 2.0])},
        # after a million rewards one more barely moves the average
        {"estimate": torch.tensor([[1.0, -2.0], [0.5, 4.0]]), "count": torch.full((2, 2), 1e6),
         "reward": torch.tensor([[9.0, -8.0], [3.0, 0.0]])},
        # one bandit, one arm: tensors holding a single number
        {"estimate": torch.tensor(2.0), "count": torch.tensor(3.0), "reward": torch.tensor(-1.0)},
    ]


def _average_is_reward(estimate, count, reward):
    return reward + 0.0 * estimate


def _average_count_plus_one(estimate, count, reward):
    return estimate + (reward - estimate) / (count + 1)


def _average_count_minus_one(estimate, count, reward):
    return estimate + (reward - estimate) / (count - 1)


def _average_halves(estimate, count, reward):
    return (estimate + reward) / 2


def _average_reversed(estimate, count, reward):
    return estimate - (reward - estimate) / count


def _average_fixed_step(estimate, count, reward):
    return estimate + 0.1 * (reward - estimate)


def _average_total(estimate, count, reward):
    return estimate + reward


def _average_times_count(estimate, count, reward):
    return estimate + (reward - estimate) * count


SAMPLE_AVERAGE_UPDATE = Exercise(
    name="sample_average_update",
    reference="rlhf_kit.bandits:sample_average_update",
    draw=_draw_sample_average,
    edge_cases=_sample_average_edges,
    hint_in_place="return `estimate + (reward - estimate) / count`, a new tensor, rather than "
                  "`estimate += ...`",
    mistakes=(
        Mistake("sample_average_update returns the new reward and forgets the old estimate: "
                "move the estimate only 1/count of the way towards the reward, "
                "estimate + (reward - estimate) / count.",
                _average_is_reward),
        Mistake("sample_average_update divides by the wrong count: count already includes the "
                "new reward, so divide by count itself (the first reward, count 1, replaces the "
                "estimate).",
                _average_count_plus_one, _average_count_minus_one),
        Mistake("sample_average_update averages the old estimate and the new reward as equals: "
                "the old estimate stands for count - 1 rewards, so the new one gets weight "
                "1/count, estimate + (reward - estimate) / count.",
                _average_halves),
        Mistake("sample_average_update moves the estimate away from the reward: the error is "
                "reward - estimate, and it is added, estimate + (reward - estimate) / count.",
                _average_reversed),
        Mistake("sample_average_update uses a fixed step size: a sample average moves by 1/count, "
                "a step that shrinks as rewards accumulate.",
                _average_fixed_step),
        Mistake("sample_average_update adds the reward to a running total: keep an average, "
                "estimate + (reward - estimate) / count, so it stays on the scale of one reward.",
                _average_total),
        Mistake("sample_average_update multiplies the error by count: divide by it, so that "
                "each new reward moves the average less.",
                _average_times_count),
    ),
)


def check_sample_average_update(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(estimate, count, reward)`` against ``rlhf_kit.bandits.sample_average_update``."""
    __tracebackhide__ = True
    SAMPLE_AVERAGE_UPDATE.check(fn)


# -- ∇ log π of a softmax policy -----------------------------------------------------------------


def _draw_policy_gradient(generator: torch.Generator) -> Inputs:
    runs, arms = _l05_randint(generator, 1, 8), _l05_randint(generator, 2, 10)
    logits = torch.randn(runs, arms, generator=generator) * _l05_scale(generator)
    return {"logits": logits, "actions": torch.randint(arms, (runs,), generator=generator)}


def _policy_gradient_edges() -> list[Inputs]:
    return [
        # every arm equally likely: the taken arm gets 1 - 1/K, the others -1/K
        {"logits": torch.zeros(2, 4), "actions": torch.tensor([3, 0])},
        # logits of ±1000: exp() overflows to inf, unless the largest logit is subtracted first
        {"logits": torch.tensor([[1000.0, 999.0, 990.0], [-1000.0, -1001.0, -995.0]]),
         "actions": torch.tensor([1, 2])},
        # two arms, one run
        {"logits": torch.tensor([[0.3, -0.8]]), "actions": torch.tensor([1])},
    ]


def _onehot(logits, actions):
    return F.one_hot(actions, logits.shape[-1]).to(logits.dtype)


def _grad_reversed(logits, actions):
    return torch.softmax(logits, dim=-1) - _onehot(logits, actions)


def _grad_onehot_only(logits, actions):
    return _onehot(logits, actions)


def _grad_minus_probs_only(logits, actions):
    return -torch.softmax(logits, dim=-1)


def _grad_of_probability(logits, actions):
    probs = torch.softmax(logits, dim=-1)
    taken = probs.gather(-1, actions[:, None])  # (R, 1): π(a)
    return taken * (_onehot(logits, actions) - probs)


def _grad_raw_logits(logits, actions):
    return _onehot(logits, actions) - logits


def _grad_softmax_dim0(logits, actions):
    return _onehot(logits, actions) - torch.softmax(logits, dim=0)


def _grad_unstable(logits, actions):
    weights = torch.exp(logits)
    return _onehot(logits, actions) - weights / weights.sum(dim=-1, keepdim=True)


LOG_POLICY_GRADIENT = Exercise(
    name="log_policy_gradient",
    reference="rlhf_kit.bandits:log_policy_gradient",
    draw=_draw_policy_gradient,
    edge_cases=_policy_gradient_edges,
    mistakes=(
        Mistake("log_policy_gradient has the wrong sign: taking an arm raises its own logit, so "
                "the gradient is onehot(a) - π, not π - onehot(a).",
                _grad_reversed),
        Mistake("log_policy_gradient returns onehot(a) alone: log π(a) also depends on every "
                "other logit through the softmax's sum, which subtracts π: onehot(a) - π.",
                _grad_onehot_only),
        Mistake("log_policy_gradient leaves out onehot(a): the taken arm's own logit gets +1, "
                "so the gradient is onehot(a) - π.",
                _grad_minus_probs_only),
        Mistake("log_policy_gradient gives the gradient of π(a), not of log π(a): that is π(a) "
                "times too small; the gradient of the log-probability is onehot(a) - π.",
                _grad_of_probability),
        Mistake("log_policy_gradient subtracts the logits: subtract the probabilities, "
                "π = softmax(logits), from onehot(a).",
                _grad_raw_logits),
        Mistake("log_policy_gradient takes the softmax over the wrong dimension: the arms are "
                "the last one, so use softmax(logits, dim=-1).",
                _grad_softmax_dim0),
        Mistake("log_policy_gradient overflows on large logits (exp of more than about 88 is "
                "inf in float32): use torch.softmax, or subtract each row's largest logit "
                "before exp.",
                _grad_unstable),
    ),
)


def check_log_policy_gradient(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(logits, actions)`` against ``rlhf_kit.bandits.log_policy_gradient``."""
    __tracebackhide__ = True
    LOG_POLICY_GRADIENT.check(fn)


# -- the REINFORCE loss with a baseline ----------------------------------------------------------


def _draw_reinforce(generator: torch.Generator) -> Inputs:
    runs, arms = _l05_randint(generator, 2, 16), _l05_randint(generator, 2, 8)
    offset = -2.0 + 7.0 * float(torch.rand((), generator=generator))
    rewards = offset + torch.randn(runs, generator=generator) * _l05_scale(generator)
    if float(torch.rand((), generator=generator)) < 0.7:  # a number: the average reward so far
        baseline = round(offset + float(torch.randn((), generator=generator)) * 0.5, 2) or 0.5
    else:  # one per run, as a value model would give
        baseline = offset + torch.randn(runs, generator=generator) * 0.5
    return {"logits": torch.randn(runs, arms, generator=generator) * _l05_scale(generator),
            "actions": torch.randint(arms, (runs,), generator=generator),
            "rewards": rewards, "baseline": baseline}


def _reinforce_edges() -> list[Inputs]:
    return [
        # no baseline: plain REINFORCE
        {"logits": torch.tensor([[0.5, -0.5, 1.0], [0.0, 0.2, -1.0]]), "actions": torch.tensor([2, 0]),
         "rewards": torch.tensor([1.0, -2.0]), "baseline": 0.0},
        # logits of ±1000: the softmax of an unlikely arm underflows to 0, and log(0) is -inf
        {"logits": torch.tensor([[1000.0, 0.0, -1000.0], [5.0, 1000.0, 0.0]]), "actions": torch.tensor([2, 0]),
         "rewards": torch.tensor([3.0, 1.0]), "baseline": 2.5},
        # one run
        {"logits": torch.tensor([[0.1, 0.4, -0.3, 0.0]]), "actions": torch.tensor([1]),
         "rewards": torch.tensor([4.0]), "baseline": 3.0},
    ]


def _taken_logprobs(logits, actions):
    return torch.log_softmax(logits, dim=-1).gather(-1, actions[:, None]).squeeze(-1)


def _reinforce_no_baseline(logits, actions, rewards, baseline):
    return -(rewards * _taken_logprobs(logits, actions)).mean()


def _reinforce_adds_baseline(logits, actions, rewards, baseline):
    return -((rewards + baseline) * _taken_logprobs(logits, actions)).mean()


def _reinforce_no_minus(logits, actions, rewards, baseline):
    return ((rewards - baseline) * _taken_logprobs(logits, actions)).mean()


def _reinforce_probabilities(logits, actions, rewards, baseline):
    probs = torch.softmax(logits, dim=-1).gather(-1, actions[:, None]).squeeze(-1)
    return -((rewards - baseline) * probs).mean()


def _reinforce_raw_logits(logits, actions, rewards, baseline):
    return -((rewards - baseline) * logits.gather(-1, actions[:, None]).squeeze(-1)).mean()


def _reinforce_every_action(logits, actions, rewards, baseline):
    advantages = torch.as_tensor(rewards - baseline)
    return -(advantages[..., None] * torch.log_softmax(logits, dim=-1)).mean()


def _reinforce_sum(logits, actions, rewards, baseline):
    return -((rewards - baseline) * _taken_logprobs(logits, actions)).sum()


def _reinforce_unstable(logits, actions, rewards, baseline):
    taken = torch.log(torch.softmax(logits, dim=-1)).gather(-1, actions[:, None]).squeeze(-1)
    return -((rewards - baseline) * taken).mean()


REINFORCE_LOSS = Exercise(
    name="reinforce_loss",
    reference="rlhf_kit.bandits:reinforce_loss",
    draw=_draw_reinforce,
    edge_cases=_reinforce_edges,
    mistakes=(
        Mistake("reinforce_loss ignores the baseline: weigh each log-probability by the "
                "advantage, rewards - baseline, so that only better-than-usual actions are pushed up.",
                _reinforce_no_baseline),
        Mistake("reinforce_loss adds the baseline: subtract it, rewards - baseline, so that an "
                "action is pushed up only when it did better than usual.",
                _reinforce_adds_baseline),
        Mistake("reinforce_loss has the wrong sign: training minimises the loss, so it is "
                "-mean((rewards - baseline) * log π(a)); without the minus, good actions become rarer.",
                _reinforce_no_minus),
        Mistake("reinforce_loss uses probabilities instead of log-probabilities: the policy "
                "gradient is the gradient of log π(a) (torch.log_softmax, then gather).",
                _reinforce_probabilities),
        Mistake("reinforce_loss uses the raw logits as log-probabilities: take "
                "torch.log_softmax(logits, dim=-1) first, then gather the taken actions.",
                _reinforce_raw_logits),
        Mistake("reinforce_loss weighs the log-probability of every arm, not only of the one "
                "taken: gather log π at `actions` (logprobs.gather(-1, actions[:, None])).",
                _reinforce_every_action),
        Mistake("reinforce_loss adds up the runs' losses instead of averaging them: take the "
                "mean, so that the step size does not grow with the number of runs.",
                _reinforce_sum),
        Mistake("reinforce_loss takes the log of a softmax that underflowed to 0 (log 0 is "
                "-inf): use torch.log_softmax, which computes log π without forming π.",
                _reinforce_unstable),
    ),
)


def check_reinforce_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(logits, actions, rewards, baseline)`` against ``rlhf_kit.bandits.reinforce_loss``."""
    __tracebackhide__ = True
    REINFORCE_LOSS.check(fn)


# -- the Bradley–Terry probability ---------------------------------------------------------------


def _draw_preference(generator: torch.Generator) -> Inputs:
    n = _l05_randint(generator, 1, 10)
    shape = [(n,), (_l05_randint(generator, 2, 4), n)][_l05_randint(generator, 0, 1)]
    scale = _l05_scale(generator)
    return {"score_a": torch.randn(shape, generator=generator) * scale,
            "score_b": torch.randn(shape, generator=generator) * scale}


def _preference_edges() -> list[Inputs]:
    return [
        # equal scores: a coin flip
        {"score_a": torch.tensor([0.0, 1.5, -2.0]), "score_b": torch.tensor([0.0, 1.5, -2.0])},
        # large scores: exp(100) is inf in float32, the difference of 10 is harmless
        {"score_a": torch.tensor([100.0, 90.0, -95.0]), "score_b": torch.tensor([90.0, 100.0, -100.0])},
        # far apart: a certain verdict either way
        {"score_a": torch.tensor([-100.0, 100.0]), "score_b": torch.tensor([100.0, -100.0])},
    ]


def _preference_reversed(score_a, score_b):
    return torch.sigmoid(score_b - score_a)


def _preference_difference(score_a, score_b):
    return score_a - score_b


def _preference_ratio(score_a, score_b):
    return score_a / (score_a + score_b)


def _preference_unstable(score_a, score_b):
    return torch.exp(score_a) / (torch.exp(score_a) + torch.exp(score_b))


def _preference_odds(score_a, score_b):
    return torch.exp(score_a - score_b)


PREFERENCE_PROBABILITY = Exercise(
    name="preference_probability",
    reference="rlhf_kit.bandits:preference_probability",
    draw=_draw_preference,
    edge_cases=_preference_edges,
    mistakes=(
        Mistake("preference_probability gives the probability that b wins: a is preferred with "
                "probability σ(score_a - score_b), a's score minus b's.",
                _preference_reversed),
        Mistake("preference_probability returns the score difference, not a probability: pass "
                "it through the sigmoid, σ(score_a - score_b), which maps any number into (0, 1).",
                _preference_difference),
        Mistake("preference_probability divides the raw scores, score_a / (score_a + score_b): "
                "scores can be negative; the model is σ(score_a - score_b) = e^a / (e^a + e^b).",
                _preference_ratio),
        Mistake("preference_probability overflows on large scores (exp of more than about 88 "
                "is inf in float32, and inf / inf is nan): compute torch.sigmoid(score_a - "
                "score_b), which only sees the difference.",
                _preference_unstable),
        Mistake("preference_probability returns the odds exp(score_a - score_b), which can "
                "exceed 1: the probability is odds / (1 + odds) = σ(score_a - score_b).",
                _preference_odds),
    ),
)


def check_preference_probability(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(score_a, score_b)`` against ``rlhf_kit.bandits.preference_probability``."""
    __tracebackhide__ = True
    PREFERENCE_PROBABILITY.check(fn)


EXERCISES.update({exercise.name: exercise for exercise in (SAMPLE_AVERAGE_UPDATE, LOG_POLICY_GRADIENT,
                                                           REINFORCE_LOSS, PREFERENCE_PROBABILITY)})


# ----------------------------------------------------------------------------------------------
# Lesson 6 (PPO): KL-penalised rewards, GAE, the clipped policy loss, the clipped value loss
# ----------------------------------------------------------------------------------------------
#
# Inputs look like one batch of PPO: B completions of up to T tokens, each a run of real tokens
# (mask 1) followed by padding (mask 0), as ``sampling.generate`` returns them. Values of padding
# are random on purpose: a value model outputs something there too, and GAE must not use it.


def _ppo_randint(generator: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (), generator=generator))


def _ppo_pick(generator: torch.Generator, options: Sequence[Any]) -> Any:
    return options[int(torch.randint(len(options), (), generator=generator))]


def _completion_mask(generator: torch.Generator, batch: int, time: int) -> torch.Tensor:
    """(B, T) long: each row 1 on its first 1..T tokens, 0 after; at least one row padded if T > 1."""
    lengths = torch.randint(1, time + 1, (batch,), generator=generator)
    if time > 1:
        lengths[int(torch.randint(batch, (), generator=generator))] = _ppo_randint(generator, 1, time - 1)
    return (torch.arange(time)[None, :] < lengths[:, None]).long()


def _ppo_masked_mean(x, mask):
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


# -- KL-penalised rewards ------------------------------------------------------------------------


def _draw_kl_rewards(generator: torch.Generator) -> Inputs:
    batch, time = _ppo_randint(generator, 1, 4), _ppo_randint(generator, 2, 8)
    return {"scores": torch.randn(batch, generator=generator) * 2,
            "logprobs": -torch.rand(batch, time, generator=generator) * 4,
            "ref_logprobs": -torch.rand(batch, time, generator=generator) * 4,
            "mask": _completion_mask(generator, batch, time),
            "kl_coef": _ppo_pick(generator, (0.02, 0.05, 0.1, 0.2, 0.5))}


def _kl_rewards_edges() -> list[Inputs]:
    generator = torch.Generator().manual_seed(5)
    logprobs = -torch.rand(3, 4, generator=generator) * 3
    return [
        # completions of 2, 1 and 4 tokens
        {"scores": torch.tensor([1.0, -2.0, 0.5]), "logprobs": logprobs,
         "ref_logprobs": -torch.rand(3, 4, generator=generator) * 3,
         "mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]), "kl_coef": 0.1},
        # no penalty: the score alone, on the last real token
        {"scores": torch.tensor([3.0, 1.5]), "logprobs": logprobs[:2], "ref_logprobs": logprobs[:2] - 1,
         "mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]), "kl_coef": 0.0},
        # a one-token completion
        {"scores": torch.tensor([0.7]), "logprobs": torch.tensor([[-1.0]]),
         "ref_logprobs": torch.tensor([[-2.0]]), "mask": torch.tensor([[1]]), "kl_coef": 0.2},
    ]


def _kl_part(logprobs, ref_logprobs, mask, kl_coef):
    return -kl_coef * (logprobs - ref_logprobs) * mask


def _last_index(mask):
    positions = torch.arange(mask.shape[1])
    return torch.where(mask.bool(), positions, -1).max(dim=1).values


def _add_at(rewards, index, scores):
    at = (torch.arange(rewards.shape[1])[None, :] == index[:, None]).to(rewards.dtype)
    return rewards + at * scores[:, None]


def _kl_rewards_last_column(scores, logprobs, ref_logprobs, mask, kl_coef):
    rewards = _kl_part(logprobs, ref_logprobs, mask, kl_coef)
    return _add_at(rewards, torch.full_like(scores, rewards.shape[1] - 1, dtype=torch.long), scores)


def _kl_rewards_first_token(scores, logprobs, ref_logprobs, mask, kl_coef):
    rewards = _kl_part(logprobs, ref_logprobs, mask, kl_coef)
    return _add_at(rewards, torch.zeros_like(scores, dtype=torch.long), scores)


def _kl_rewards_one_late(scores, logprobs, ref_logprobs, mask, kl_coef):
    rewards = _kl_part(logprobs, ref_logprobs, mask, kl_coef)
    rewards[torch.arange(len(scores)), mask.sum(dim=1)] += scores  # IndexError on a full row
    return rewards


def _kl_rewards_every_token(scores, logprobs, ref_logprobs, mask, kl_coef):
    return _kl_part(logprobs, ref_logprobs, mask, kl_coef) + scores[:, None] * mask


def _kl_rewards_every_position(scores, logprobs, ref_logprobs, mask, kl_coef):
    return _kl_part(logprobs, ref_logprobs, mask, kl_coef) + scores[:, None]


def _kl_rewards_plus_kl(scores, logprobs, ref_logprobs, mask, kl_coef):
    return _add_at(-_kl_part(logprobs, ref_logprobs, mask, kl_coef), _last_index(mask), scores)


def _kl_rewards_unmasked_kl(scores, logprobs, ref_logprobs, mask, kl_coef):
    return _add_at(-kl_coef * (logprobs - ref_logprobs), _last_index(mask), scores)


def _kl_rewards_no_coef(scores, logprobs, ref_logprobs, mask, kl_coef):
    return _add_at(_kl_part(logprobs, ref_logprobs, mask, 1.0), _last_index(mask), scores)


KL_PENALIZED_REWARDS = Exercise(
    name="kl_penalized_rewards",
    reference="rlhf_kit.ppo:kl_penalized_rewards",
    draw=_draw_kl_rewards,
    edge_cases=_kl_rewards_edges,
    mistakes=(
        Mistake("kl_penalized_rewards puts the score on the last column, which is padding when a "
                "completion stopped early: put it on the last token where mask is 1.",
                _kl_rewards_last_column),
        Mistake("kl_penalized_rewards puts the score one token too late, at index mask.sum() (the "
                "first padding token, or past the end): the last real token is at mask.sum() - 1.",
                _kl_rewards_one_late),
        Mistake("kl_penalized_rewards puts the score on the first token: the reward model judges "
                "the whole completion, so its score arrives with the last token, where mask is 1 "
                "for the last time.",
                _kl_rewards_first_token),
        Mistake("kl_penalized_rewards adds the score to every token: it is one reward for the "
                "whole completion, given once, on its last real token.",
                _kl_rewards_every_token, _kl_rewards_every_position),
        Mistake("kl_penalized_rewards rewards the KL instead of penalising it: each token gets "
                "-kl_coef * (logprobs - ref_logprobs), negative when the policy likes a token more "
                "than the reference does.",
                _kl_rewards_plus_kl),
        Mistake("kl_penalized_rewards charges the KL on padding too: multiply it by mask, so that "
                "the tokens after a completion stopped get reward 0.",
                _kl_rewards_unmasked_kl),
        Mistake("kl_penalized_rewards leaves out kl_coef: the penalty per token is "
                "kl_coef * (logprobs - ref_logprobs), and kl_coef sets how tight the leash is.",
                _kl_rewards_no_coef),
    ),
)


def check_kl_penalized_rewards(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(scores, logprobs, ref_logprobs, mask, kl_coef)`` against ``rlhf_kit.ppo.kl_penalized_rewards``."""
    __tracebackhide__ = True
    KL_PENALIZED_REWARDS.check(fn)


# -- GAE -----------------------------------------------------------------------------------------


def _draw_gae(generator: torch.Generator) -> Inputs:
    batch, time = _ppo_randint(generator, 1, 4), _ppo_randint(generator, 2, 8)
    mask = _completion_mask(generator, batch, time)
    return {"rewards": torch.randn(batch, time, generator=generator) * mask,
            "values": torch.randn(batch, time, generator=generator),  # padding too: not to be used
            "mask": mask,
            "gamma": _ppo_pick(generator, (1.0, 0.99, 0.9)),
            "lam": _ppo_pick(generator, (0.95, 0.9, 0.8))}


def _gae_edges() -> list[Inputs]:
    return [
        # gamma = lam = 1: the advantage is the reward still to come minus the value
        {"rewards": torch.tensor([[0.0, 0.0, 1.0], [0.5, -1.0, 0.0]]),
         "values": torch.tensor([[0.2, 0.4, 0.6], [0.1, -0.3, 9.0]]),
         "mask": torch.tensor([[1, 1, 1], [1, 1, 0]]), "gamma": 1.0, "lam": 1.0},
        # lam = 0: the one-step TD error
        {"rewards": torch.tensor([[0.1, -0.2, 0.3, 0.0]]), "values": torch.tensor([[1.0, 0.5, -0.5, 7.0]]),
         "mask": torch.tensor([[1, 1, 1, 0]]), "gamma": 0.9, "lam": 0.0},
        # a one-token completion next to a longer one
        {"rewards": torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]),
         "values": torch.tensor([[0.5, 3.0, 3.0, 3.0], [0.2, 0.1, 0.4, 0.3]]),
         "mask": torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]]), "gamma": 0.99, "lam": 0.95},
    ]


def _gae_loop(rewards, values, gamma, lam, forwards=False, delta_gamma=True, use_lam=True):
    """GAE's recursion written out, with switches for the usual slips; no masking."""
    batch, time = rewards.shape
    advantages = torch.zeros_like(rewards)
    carried = torch.zeros(batch, dtype=rewards.dtype)
    steps = range(time) if forwards else reversed(range(time))
    for t in steps:
        next_values = values[:, t + 1] if t + 1 < time else torch.zeros(batch, dtype=rewards.dtype)
        delta = rewards[:, t] + (gamma if delta_gamma else 1.0) * next_values - values[:, t]
        carried = delta + gamma * (lam if use_lam else 1.0) * carried
        advantages[:, t] = carried
    return advantages


def _gae_masked(mask_values=True, **slips):
    def gae(rewards, values, mask, gamma, lam):
        mask = mask.to(values.dtype)
        used = values * mask if mask_values else values
        advantages = _gae_loop(rewards * mask, used, gamma, lam, **slips) * mask
        return advantages, (advantages + used) * mask
    return gae


_gae_forwards = _gae_masked(forwards=True)
_gae_forwards.__name__ = "_gae_forwards"
_gae_no_lam = _gae_masked(use_lam=False)
_gae_no_lam.__name__ = "_gae_no_lam"
_gae_no_gamma_in_delta = _gae_masked(delta_gamma=False)
_gae_no_gamma_in_delta.__name__ = "_gae_no_gamma_in_delta"
_gae_padding_values = _gae_masked(mask_values=False)
_gae_padding_values.__name__ = "_gae_padding_values"


def _gae_no_mask(rewards, values, mask, gamma, lam):
    advantages = _gae_loop(rewards, values, gamma, lam)
    return advantages, advantages + values


def _gae_returns_are_advantages(rewards, values, mask, gamma, lam):
    mask = mask.to(values.dtype)
    advantages = _gae_loop(rewards * mask, values * mask, gamma, lam) * mask
    return advantages, advantages


COMPUTE_GAE = Exercise(
    name="compute_gae",
    reference="rlhf_kit.ppo:compute_gae",
    draw=_draw_gae,
    edge_cases=_gae_edges,
    mistakes=(
        Mistake("compute_gae runs forwards in time: an advantage sums what comes after a token, so "
                "loop from the last token to the first (reversed(range(T))).",
                _gae_forwards),
        Mistake("compute_gae bootstraps from the values of the padding after a completion: it has "
                "ended, so the value after its last real token is 0 (multiply values by mask first).",
                _gae_padding_values, _gae_no_mask),
        Mistake("compute_gae leaves lam out of the recursion: A_t = delta_t + gamma * lam * A_{t+1}.",
                _gae_no_lam),
        Mistake("compute_gae leaves gamma out of the TD error: "
                "delta_t = rewards_t + gamma * V_{t+1} - V_t.",
                _gae_no_gamma_in_delta),
        Mistake("compute_gae returns the advantages as the returns: the value model's target is "
                "returns = advantages + values.",
                _gae_returns_are_advantages),
    ),
)


def check_compute_gae(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Check ``fn(rewards, values, mask, gamma, lam)`` against ``rlhf_kit.ppo.compute_gae``."""
    __tracebackhide__ = True
    COMPUTE_GAE.check(fn)


# -- the clipped policy loss ---------------------------------------------------------------------


def _draw_policy_loss(generator: torch.Generator) -> Inputs:
    batch, time = _ppo_randint(generator, 1, 4), _ppo_randint(generator, 2, 8)
    old_logprobs = -torch.rand(batch, time, generator=generator) * 4
    return {"logprobs": old_logprobs + torch.randn(batch, time, generator=generator) * 0.4,
            "old_logprobs": old_logprobs,
            "advantages": torch.randn(batch, time, generator=generator),
            "mask": _completion_mask(generator, batch, time),
            "clip_eps": _ppo_pick(generator, (0.1, 0.2, 0.3))}


def _policy_loss_edges() -> list[Inputs]:
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.2, -1.5, -2.5, -1.0]])
    advantages = torch.tensor([[1.0, -0.5, 2.0, 0.3], [-1.0, 0.7, 0.0, 1.5]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return [
        # the policy has not moved: every ratio is 1, nothing is clipped
        {"logprobs": old.clone(), "old_logprobs": old, "advantages": advantages, "mask": mask,
         "clip_eps": 0.2},
        # every ratio e^0.5 = 1.65, far outside [0.8, 1.2]
        {"logprobs": old + 0.5, "old_logprobs": old, "advantages": advantages, "mask": mask,
         "clip_eps": 0.2},
        # every ratio e^-0.5 = 0.61, far below
        {"logprobs": old - 0.5, "old_logprobs": old, "advantages": advantages, "mask": mask,
         "clip_eps": 0.1},
    ]


def _ppo_ratio_parts(logprobs, old_logprobs):
    log_ratio = logprobs - old_logprobs
    return log_ratio, torch.exp(log_ratio)


def _policy_loss_with(loss_fn=None, clipfrac_fn=None, kl_fn=None, ratio_fn=None, average=None):
    """The reference with one part replaced by a slip."""
    def policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps):
        log_ratio, ratio = (ratio_fn or _ppo_ratio_parts)(logprobs, old_logprobs)
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
        per_token = (loss_fn or (lambda u, c: torch.maximum(u, c)))(unclipped, clipped)
        clipfrac = (clipfrac_fn or (lambda u, c, r, eps: (c > u).float()))(unclipped, clipped, ratio, clip_eps)
        kl = (kl_fn or (lambda lr, r: (r - 1) - lr))(log_ratio, ratio)
        mean = average or _ppo_masked_mean
        return mean(per_token, mask), mean(clipfrac, mask), mean(kl, mask)
    return policy_loss


def _abs_clipfrac(unclipped, clipped, ratio, clip_eps):
    return ((ratio - 1).abs() > clip_eps).float()


def _named(fn, name):
    fn.__name__ = name
    return fn


_policy_loss_unclipped = _named(_policy_loss_with(loss_fn=lambda u, c: u), "_policy_loss_unclipped")
_policy_loss_min = _named(_policy_loss_with(loss_fn=lambda u, c: torch.minimum(u, c)), "_policy_loss_min")
_policy_loss_objective = _named(_policy_loss_with(loss_fn=lambda u, c: -torch.maximum(u, c)),
                                "_policy_loss_objective")
_policy_loss_log_ratio = _named(
    _policy_loss_with(ratio_fn=lambda new, old: (new - old, new - old)), "_policy_loss_log_ratio")
_policy_loss_inverted = _named(
    _policy_loss_with(ratio_fn=lambda new, old: (old - new, torch.exp(old - new))), "_policy_loss_inverted")
_policy_loss_unmasked = _named(_policy_loss_with(average=lambda x, mask: x.mean()), "_policy_loss_unmasked")
_policy_loss_abs_clipfrac = _named(_policy_loss_with(clipfrac_fn=_abs_clipfrac), "_policy_loss_abs_clipfrac")
_policy_loss_k1 = _named(_policy_loss_with(kl_fn=lambda lr, r: -lr), "_policy_loss_k1")
_policy_loss_k2 = _named(_policy_loss_with(kl_fn=lambda lr, r: 0.5 * lr**2), "_policy_loss_k2")


def _policy_loss_unmasked_loss_only(logprobs, old_logprobs, advantages, mask, clip_eps):
    _, clipfrac, approx_kl = _policy_loss_with()(logprobs, old_logprobs, advantages, mask, clip_eps)
    loss, _, _ = _policy_loss_unmasked(logprobs, old_logprobs, advantages, mask, clip_eps)
    return loss, clipfrac, approx_kl


CLIPPED_POLICY_LOSS = Exercise(
    name="clipped_policy_loss",
    reference="rlhf_kit.ppo:clipped_policy_loss",
    draw=_draw_policy_loss,
    edge_cases=_policy_loss_edges,
    mistakes=(
        Mistake("clipped_policy_loss does not clip: each token's loss is the larger of "
                "-ratio * A and -clamp(ratio, 1 - clip_eps, 1 + clip_eps) * A.",
                _policy_loss_unclipped),
        Mistake("clipped_policy_loss keeps the smaller of the two losses, the optimistic one: PPO "
                "keeps the larger (torch.maximum), so that clipping can only take an incentive away, "
                "never add one.",
                _policy_loss_min),
        Mistake("clipped_policy_loss returns the objective instead of the loss: the optimiser "
                "minimises, so negate it (loss = -min(ratio * A, clip(ratio) * A)).",
                _policy_loss_objective),
        Mistake("clipped_policy_loss uses the difference of log-probabilities as the ratio: "
                "ratio = exp(logprobs - old_logprobs).",
                _policy_loss_log_ratio),
        Mistake("clipped_policy_loss turns the ratio upside down: it is pi_new / pi_old = "
                "exp(logprobs - old_logprobs).",
                _policy_loss_inverted),
        Mistake("clipped_policy_loss averages over padding too: average over the tokens where "
                "mask is 1.",
                _policy_loss_unmasked, _policy_loss_unmasked_loss_only),
        Mistake("clipped_policy_loss counts every token whose ratio left [1 - clip_eps, 1 + clip_eps] "
                "as clipped: count only those where the clipped term is the larger loss (there the "
                "gradient is 0), which depends on the sign of the advantage.",
                _policy_loss_abs_clipfrac),
        Mistake("clipped_policy_loss estimates approx_kl another way: use the mean of "
                "(ratio - 1) - log(ratio), which is never negative.",
                _policy_loss_k1, _policy_loss_k2),
    ),
)


def check_clipped_policy_loss(fn: Callable[..., tuple]) -> None:
    """Check ``fn(logprobs, old_logprobs, advantages, mask, clip_eps)`` against
    ``rlhf_kit.ppo.clipped_policy_loss``."""
    __tracebackhide__ = True
    CLIPPED_POLICY_LOSS.check(fn)


# -- the clipped value loss ----------------------------------------------------------------------


def _draw_value_loss(generator: torch.Generator) -> Inputs:
    batch, time = _ppo_randint(generator, 1, 4), _ppo_randint(generator, 2, 8)
    old_values = torch.randn(batch, time, generator=generator)
    return {"values": old_values + torch.randn(batch, time, generator=generator) * 0.4,
            "old_values": old_values,
            "returns": old_values + torch.randn(batch, time, generator=generator),
            "mask": _completion_mask(generator, batch, time),
            "clip_eps_value": _ppo_pick(generator, (0.1, 0.2, 0.5))}


def _value_loss_edges() -> list[Inputs]:
    old = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]])
    returns = torch.tensor([[1.5, -0.5, 0.0], [1.0, 0.5, 3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return [
        # the value model has not moved: nothing to clip
        {"values": old.clone(), "old_values": old, "returns": returns, "mask": mask, "clip_eps_value": 0.2},
        # every value moved by 1, five times the clip range
        {"values": old + 1.0, "old_values": old, "returns": returns, "mask": mask, "clip_eps_value": 0.2},
    ]


def _value_errors(values, old_values, returns, clip_eps_value):
    clipped = old_values + torch.clamp(values - old_values, -clip_eps_value, clip_eps_value)
    return (values - returns) ** 2, (clipped - returns) ** 2


def _value_loss_unclipped(values, old_values, returns, mask, clip_eps_value):
    return 0.5 * _ppo_masked_mean((values - returns) ** 2, mask)


def _value_loss_clipped_only(values, old_values, returns, mask, clip_eps_value):
    return 0.5 * _ppo_masked_mean(_value_errors(values, old_values, returns, clip_eps_value)[1], mask)


def _value_loss_min(values, old_values, returns, mask, clip_eps_value):
    return 0.5 * _ppo_masked_mean(torch.minimum(*_value_errors(values, old_values, returns, clip_eps_value)), mask)


def _value_loss_no_half(values, old_values, returns, mask, clip_eps_value):
    return _ppo_masked_mean(torch.maximum(*_value_errors(values, old_values, returns, clip_eps_value)), mask)


def _value_loss_unmasked(values, old_values, returns, mask, clip_eps_value):
    return 0.5 * torch.maximum(*_value_errors(values, old_values, returns, clip_eps_value)).mean()


CLIPPED_VALUE_LOSS = Exercise(
    name="clipped_value_loss",
    reference="rlhf_kit.ppo:clipped_value_loss",
    draw=_draw_value_loss,
    edge_cases=_value_loss_edges,
    mistakes=(
        Mistake("clipped_value_loss does not clip: compare the squared error of values with that "
                "of old_values + clamp(values - old_values, -clip_eps_value, clip_eps_value), and "
                "keep the larger.",
                _value_loss_unclipped),
        Mistake("clipped_value_loss uses only the clipped error: keep the larger of the clipped and "
                "the unclipped squared error at each token.",
                _value_loss_clipped_only),
        Mistake("clipped_value_loss keeps the smaller of the two squared errors: keep the larger "
                "(torch.maximum), the pessimistic one, as the policy loss does.",
                _value_loss_min),
        Mistake("clipped_value_loss leaves out the 1/2: the loss is 0.5 * mean(max(...)), whose "
                "gradient is the plain error.",
                _value_loss_no_half),
        Mistake("clipped_value_loss averages over padding too: average over the tokens where mask is 1.",
                _value_loss_unmasked),
    ),
)


def check_clipped_value_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(values, old_values, returns, mask, clip_eps_value)`` against
    ``rlhf_kit.ppo.clipped_value_loss``."""
    __tracebackhide__ = True
    CLIPPED_VALUE_LOSS.check(fn)


EXERCISES.update({exercise.name: exercise for exercise in (KL_PENALIZED_REWARDS, COMPUTE_GAE,
                                                           CLIPPED_POLICY_LOSS, CLIPPED_VALUE_LOSS)})


# ----------------------------------------------------------------------------------------------
# Lesson 7 (after PPO): the DPO loss, GRPO's group advantages, best-of-n
# ----------------------------------------------------------------------------------------------
#
# References: ``rlhf_kit.alternatives.dpo_loss`` and ``group_advantages``, and
# ``rlhf_kit.compare.best_of_n_indices``. Log-probabilities of whole replies are sums over tokens,
# tens of nats below zero; the policy's differ from the reference's by a few nats, in both
# directions, so a forgotten reference or a swapped pair shows. Edge cases: a policy equal to
# its reference (the loss is ln 2), a margin of -400 nats (σ underflows to 0 in float32), a
# group whose replies all scored the same (its standard deviation is 0), ties for the best score.


def _l07_batch(generator: torch.Generator) -> int:
    return int(torch.randint(1, 17, (), generator=generator))


def _draw_dpo(generator: torch.Generator) -> Inputs:
    b = _l07_batch(generator)
    ref_chosen = -(5 + 55 * torch.rand(b, generator=generator))
    ref_rejected = -(5 + 55 * torch.rand(b, generator=generator))
    beta = [0.05, 0.1, 0.5, 1.0][int(torch.randint(0, 4, (), generator=generator))]
    return {"policy_chosen_logps": ref_chosen + 3 * torch.randn(b, generator=generator),
            "policy_rejected_logps": ref_rejected + 3 * torch.randn(b, generator=generator),
            "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected, "beta": beta}


def _dpo_edges() -> list[Inputs]:
    same = torch.tensor([-12.0, -30.5, -7.25])
    return [
        # the policy is still its reference: every implicit reward is 0, the loss is ln 2
        {"policy_chosen_logps": same, "policy_rejected_logps": same - 4, "ref_chosen_logps": same,
         "ref_rejected_logps": same - 4, "beta": 0.1},
        # the policy made the rejected reply 400 nats likelier: σ(-40) and σ(-400) underflow
        {"policy_chosen_logps": torch.tensor([-50.0, -20.0]), "policy_rejected_logps": torch.tensor([-10.0, 0.0]),
         "ref_chosen_logps": torch.tensor([-50.0, -20.0]), "ref_rejected_logps": torch.tensor([-410.0, -400.0]),
         "beta": 1.0},
        # one pair
        {"policy_chosen_logps": torch.tensor([-3.0]), "policy_rejected_logps": torch.tensor([-9.0]),
         "ref_chosen_logps": torch.tensor([-4.0]), "ref_rejected_logps": torch.tensor([-8.0]), "beta": 0.5},
    ]


def _dpo_margin(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def _dpo_no_beta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -F.logsigmoid(_dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                     ref_rejected_logps)).mean()


def _dpo_no_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)).mean()


def _dpo_swapped(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -F.logsigmoid(-beta * _dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                             ref_rejected_logps)).mean()


def _dpo_beta_outside(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -beta * F.logsigmoid(_dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                            ref_rejected_logps)).mean()


def _dpo_sum(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -F.logsigmoid(beta * _dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                            ref_rejected_logps)).sum()


def _dpo_unstable(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return -torch.log(torch.sigmoid(beta * _dpo_margin(policy_chosen_logps, policy_rejected_logps,
                                                       ref_chosen_logps, ref_rejected_logps))).mean()


DPO_LOSS = Exercise(
    name="dpo_loss",
    reference="rlhf_kit.alternatives:dpo_loss",
    draw=_draw_dpo,
    edge_cases=_dpo_edges,
    mistakes=(
        Mistake("dpo_loss leaves out beta: the implicit reward is beta times the log-ratio, "
                "beta * (policy_logps - ref_logps), and beta sets how far the policy may move.",
                _dpo_no_beta),
        Mistake("dpo_loss puts beta outside the log-sigmoid: multiply the margin by beta first, "
                "-logsigmoid(beta * margin), since beta scales the implicit reward.",
                _dpo_beta_outside),
        Mistake("dpo_loss ignores the reference model: each implicit reward is a log-ratio, "
                "policy_logps - ref_logps, not the policy's log-probability alone.",
                _dpo_no_reference),
        Mistake("dpo_loss rewards the rejected reply: the margin is the chosen reply's log-ratio "
                "minus the rejected reply's, each log-ratio being policy minus reference.",
                _dpo_swapped),
        Mistake("dpo_loss adds up the pair losses: average them, so the loss does not grow with "
                "the batch.",
                _dpo_sum),
        Mistake("dpo_loss overflows when the policy prefers the rejected reply by far: σ(-400) is "
                "0 in float32 and log(0) is -inf; use F.logsigmoid.",
                _dpo_unstable),
    ),
)


def check_dpo_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    beta)`` against ``rlhf_kit.alternatives.dpo_loss``."""
    __tracebackhide__ = True
    DPO_LOSS.check(fn)


def _draw_groups(generator: torch.Generator) -> Inputs:
    size = int(torch.randint(2, 9, (), generator=generator))
    prompts = int(torch.randint(2, 7, (), generator=generator))
    offsets = 3 * torch.randn(prompts, generator=generator)  # prompts differ in how well they can score
    scores = (offsets.repeat_interleave(size) + torch.randn(prompts * size, generator=generator))
    return {"scores": scores, "group_size": size}


def _group_edges() -> list[Inputs]:
    return [
        # the second prompt's replies all scored the same: no reply is better than its group
        {"scores": torch.tensor([1.0, 2.0, 4.0, 0.5, 0.5, 0.5]), "group_size": 3},
        # one prompt, two replies
        {"scores": torch.tensor([-1.0, 1.0]), "group_size": 2},
        # groups on very different scales
        {"scores": torch.tensor([100.0, 101.0, 99.0, 100.0, 0.01, 0.02, 0.0, 0.03]), "group_size": 4},
    ]


def _groups_of(scores, group_size):
    return scores.view(-1, group_size)


def _group_batch(scores, group_size):
    return (scores - scores.mean()) / (scores.std() + 1e-4)


def _group_no_scale(scores, group_size):
    groups = _groups_of(scores, group_size)
    return (groups - groups.mean(dim=1, keepdim=True)).reshape(-1)


def _group_biased_std(scores, group_size):
    groups = _groups_of(scores, group_size)
    return ((groups - groups.mean(dim=1, keepdim=True))
            / (groups.std(dim=1, unbiased=False, keepdim=True) + 1e-4)).reshape(-1)


def _group_no_eps(scores, group_size):
    groups = _groups_of(scores, group_size)
    return ((groups - groups.mean(dim=1, keepdim=True)) / groups.std(dim=1, keepdim=True)).reshape(-1)


def _group_strided(scores, group_size):
    groups = scores.view(group_size, -1)  # reply j of every prompt together: the wrong groups
    return ((groups - groups.mean(dim=0, keepdim=True))
            / (groups.std(dim=0, keepdim=True) + 1e-4)).reshape(-1)


def _group_variance(scores, group_size):
    groups = _groups_of(scores, group_size)
    return ((groups - groups.mean(dim=1, keepdim=True))
            / (groups.var(dim=1, keepdim=True) + 1e-4)).reshape(-1)


GROUP_ADVANTAGES = Exercise(
    name="group_advantages",
    reference="rlhf_kit.alternatives:group_advantages",
    draw=_draw_groups,
    edge_cases=_group_edges,
    mistakes=(
        Mistake("group_advantages normalises over the whole batch: compare each reply with the "
                "other replies to its own prompt, scores.view(-1, group_size), mean and std per row.",
                _group_batch),
        Mistake("group_advantages groups the wrong replies: the replies to one prompt are "
                "consecutive, so the groups are the rows of scores.view(-1, group_size).",
                _group_strided),
        Mistake("group_advantages does not divide by the group's standard deviation: GRPO scales "
                "(score - group mean) by 1 / (group std + 1e-4).",
                _group_no_scale),
        Mistake("group_advantages divides by the variance: divide by the standard deviation, so "
                "the advantages of a group have unit spread.",
                _group_variance),
        Mistake("group_advantages divides by zero when a group's replies all scored the same: add "
                "1e-4 to the standard deviation, so those advantages are 0, not NaN.",
                _group_no_eps),
        Mistake("group_advantages uses the population standard deviation: use torch's default, "
                "std(dim=1), which divides by group_size - 1, as TRL does.",
                _group_biased_std),
    ),
)


def check_group_advantages(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(scores, group_size)`` against ``rlhf_kit.alternatives.group_advantages``."""
    __tracebackhide__ = True
    GROUP_ADVANTAGES.check(fn)


def _draw_best_of_n(generator: torch.Generator) -> Inputs:
    n = int(torch.randint(2, 9, (), generator=generator))
    prompts = int(torch.randint(2, 7, (), generator=generator))
    return {"scores": torch.randn(prompts * n, generator=generator) * 2, "n": n}


def _best_of_n_edges() -> list[Inputs]:
    return [
        # ties for the best score: the first of them is kept
        {"scores": torch.tensor([1.0, 3.0, 3.0, -1.0, 0.0, 0.0]), "n": 3},
        # one reply per prompt: nothing to choose
        {"scores": torch.tensor([0.5, -2.0, 1.0]), "n": 1},
        # one prompt
        {"scores": torch.tensor([-3.0, -1.0, -2.0, -5.0]), "n": 4},
    ]


def _best_worst(scores, n):
    return scores.view(-1, n).argmin(dim=1) + n * torch.arange(scores.numel() // n)


def _best_in_group(scores, n):
    return scores.view(-1, n).argmax(dim=1)


def _best_strided(scores, n):
    groups = scores.view(n, -1)  # reply j of every prompt together: the wrong groups
    return groups.argmax(dim=0) * groups.shape[1] + torch.arange(groups.shape[1])


def _best_scores(scores, n):
    return scores.view(-1, n).max(dim=1).values


BEST_OF_N = Exercise(
    name="best_of_n",
    reference="rlhf_kit.compare:best_of_n_indices",
    draw=_draw_best_of_n,
    edge_cases=_best_of_n_edges,
    mistakes=(
        Mistake("best_of_n keeps the worst reply: the reward model's highest score is the best, "
                "so use argmax.",
                _best_worst),
        Mistake("best_of_n returns each reply's place within its group: add n times the prompt's "
                "number, so each index points into the flat list of replies.",
                _best_in_group),
        Mistake("best_of_n groups the wrong replies: the n replies to one prompt are consecutive, "
                "so the groups are the rows of scores.view(-1, n).",
                _best_strided),
        Mistake("best_of_n returns the best scores: return their indices into the flat list "
                "(argmax, not max).",
                _best_scores),
    ),
)


def check_best_of_n(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(scores, n)`` against ``rlhf_kit.compare.best_of_n_indices``."""
    __tracebackhide__ = True
    BEST_OF_N.check(fn)


EXERCISES.update({exercise.name: exercise for exercise in (DPO_LOSS, GROUP_ADVANTAGES, BEST_OF_N)})
