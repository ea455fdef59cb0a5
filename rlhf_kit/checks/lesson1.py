"""Lesson 1 (next-token prediction): the checks of its three exercises,
``softmax_with_temperature``, ``top_p_filter`` (nucleus filtering) and ``next_token_loss``,
against the kit's own functions in ``rlhf_kit.sampling`` and ``rlhf_kit.pretrain``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .framework import Exercise, Inputs, Mistake, draw_int


# -- softmax with temperature --------------------------------------------------------------------


def _random_logits(generator: torch.Generator, vocab: tuple[int, int] = (2, 40)) -> torch.Tensor:
    """Logits of a random shape: (V,), (B, V) or (B, T, V), at a random scale."""
    batch, time = draw_int(generator, 1, 4), draw_int(generator, 2, 6)
    vocab_size = draw_int(generator, *vocab)
    shape = [(vocab_size,), (batch, vocab_size), (batch, time, vocab_size)][draw_int(generator, 0, 2)]
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


# -- top-p (nucleus) filtering -------------------------------------------------------------------
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
    from ..sampling import top_p_filter

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


# -- the next-token loss -------------------------------------------------------------------------


def _draw_next_token(generator: torch.Generator) -> Inputs:
    batch, time, vocab = draw_int(generator, 1, 4), draw_int(generator, 3, 10), draw_int(generator, 3, 30)
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
    grad_inputs=("logits",),
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


LESSON_EXERCISES = (SOFTMAX_WITH_TEMPERATURE, TOP_P_FILTER, NEXT_TOKEN_LOSS)
"""This lesson's exercises, in the order its notebook asks for them."""
