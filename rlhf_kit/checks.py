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


def _mask_counting(rule: Callable[[str, str, bool], bool]) -> Callable[..., torch.Tensor]:
    """A loss mask that counts a piece when ``rule(role, part, is_last_assistant_turn)``."""
    def mask(tokenizer, messages):
        pieces = _template_pieces(tokenizer, messages)
        last = max((i for i, (_, role, _) in enumerate(pieces) if role == "assistant"), default=-1)
        values = []
        for i, (ids, role, part) in enumerate(pieces):
            values += [int(rule(role, part, last - 2 <= i <= last))] * len(ids)
        return torch.tensor(values, dtype=torch.long)

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
                    _mask_counting(lambda role, part, last: role == "assistant" and part == "content")),
            Mistake("loss_mask counts the <|assistant|> tag: the template writes the tag (it ends "
                    "the prompt the model is given), so only the words after it and the closing "
                    "<|end|> count.",
                    _mask_counting(lambda role, part, last: role == "assistant"),
                    _mask_counting(lambda role, part, last: role == "assistant" and part != "end")),
            Mistake("loss_mask counts every token: the system and user turns are context the model "
                    "reads, not text it should learn to write, so they are 0.",
                    _mask_counting(lambda role, part, last: True)),
            Mistake("loss_mask is inverted: 1 belongs on the assistant's words and its <|end|>, 0 "
                    "on everything else.",
                    _mask_counting(lambda role, part, last: not (role == "assistant" and part != "tag"))),
            Mistake("loss_mask counts only the last assistant turn: every assistant turn of a "
                    "demonstration was written by a person, so every one counts.",
                    _mask_counting(lambda role, part, last: last and part != "tag")),
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


def _format_with(separator: str = "", end_assistant: bool = True, prompt: str | None = None):
    """A hand-written template that differs from the kit's in one way."""
    def format_chat(messages, add_generation_prompt=False):
        text = ""
        for m in messages:
            end = "<|end|>" if end_assistant or m["role"] != "assistant" else ""
            text += f"<|{m['role']}|>{m['content']}{end}{separator}"
        wanted = add_generation_prompt if prompt is None else prompt == "always"
        return text + ("<|assistant|>" if wanted else "")

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
                _format_with(separator="\n")),
        Mistake("format_chat leaves out the <|end|> after the assistant's turns: every turn, "
                "the assistant's included, ends with <|end|>.",
                _format_with(end_assistant=False)),
        Mistake("format_chat ignores add_generation_prompt: when it is True, end with "
                "<|assistant|> (the cue for the model to reply), and only then.",
                _format_with(prompt="never"), _format_with(prompt="always")),
    ),
)


def check_format_chat(fn: Callable[..., str]) -> None:
    """Check ``fn(messages, add_generation_prompt)`` against the kit's chat template."""
    __tracebackhide__ = True
    FORMAT_CHAT.check(fn)


EXERCISES.update({exercise.name: exercise for exercise in (LOSS_MASK, SFT_LOSS, FORMAT_CHAT)})
