"""PPO: the pure functions by hand and against naive loops, then short runs of the whole loop on
a tiny untrained GPT (2 layers, width 32): a planted reward goes up, a NaN stops the run, the
guards fire, and a resumed run continues exactly."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from rlhf_kit.checks import (
    CLIPPED_POLICY_LOSS,
    CLIPPED_VALUE_LOSS,
    COMPUTE_GAE,
    KL_PENALIZED_REWARDS,
    CheckFailed,
)
from rlhf_kit.models import load_model, load_tokenizer, new_gpt
from rlhf_kit.ppo import (
    build_ppo,
    CHECKPOINT,
    CheckpointMismatch,
    KLTooHigh,
    NonFiniteReward,
    PPOConfig,
    prompt_indices,
    RatioOutOfRange,
    rubric_watch,
    train_ppo,
)
from rlhf_kit.ppo_math import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    kl_penalized_rewards,
    whiten,
)
from rlhf_kit.ppo_model import (
    ROLLOUT_LOGITS_BYTES,
    adamw,
    completion_logprobs,
    final_norm,
    join,
    PolicyAndValue,
    ppo_optimizer,
    rollout_forward,
    rollout_rows,
    trained_weights,
)
from rlhf_kit.reward import score
from rlhf_kit.sampling import generate
from rlhf_kit.tokenizer import chat_prompt, train_tokenizer
from rlhf_kit import ppo as ppo_module
from rlhf_kit.behaviours import BehaviourWorld
from rlhf_kit.world import World

torch.set_num_threads(1)

# ----------------------------------------------------------------------------------------------
# Step 4: per-token rewards
# ----------------------------------------------------------------------------------------------


def test_kl_penalized_rewards_put_the_score_on_the_last_real_token():
    scores = torch.tensor([1.0, -2.0, 0.5])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -4.0]] * 3)
    ref_logprobs = logprobs - torch.tensor([[0.5, 1.0, 2.0, 4.0]])  # KL per token 0.5, 1, 2, 4
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    rewards = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, -0.1 + 1.0, 0.0, 0.0],
                             [-0.05 - 2.0, 0.0, 0.0, 0.0],
                             [-0.05, -0.1, -0.2, -0.4 + 0.5]])
    torch.testing.assert_close(rewards, expected)
    # padding gets nothing, whatever the log-probabilities say there
    assert (rewards[mask == 0] == 0).all()


def test_whiten_gives_mean_zero_and_unit_variance_over_real_tokens_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = whiten(x, mask)
    real = out[mask.bool()]
    assert real.mean().abs() < 1e-6 and real.var().item() == pytest.approx(1.0, rel=1e-4)
    assert (out[~mask.bool()] == 0).all()
    kept = whiten(x, mask, shift_mean=False)[mask.bool()]  # rewards: scaled, the mean kept
    assert kept.mean().item() == pytest.approx(x[mask.bool()].mean().item(), rel=1e-5)
    assert kept.var().item() == pytest.approx(1.0, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# Step 6: GAE
# ----------------------------------------------------------------------------------------------


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 9.0, 9.0]])  # 9.0: values of padding, unused
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: δ2 = 1 - 0.7 = 0.3; δ1 = 0.9*0.7 - 0.6 = 0.03; δ0 = 0.9*0.6 - 0.5 = 0.04
    #        A2 = 0.3; A1 = 0.03 + 0.72*0.3 = 0.246; A0 = 0.04 + 0.72*0.246 = 0.21712
    # row 1: one token, nothing after it: A0 = 0.5 - 0.2 = 0.3
    torch.testing.assert_close(advantages, torch.tensor([[0.21712, 0.246, 0.3], [0.3, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0], [0.5, 0.0, 0.0]]))


def naive_gae(rewards, values, lengths, gamma, lam):
    """GAE as the explicit sum A_t = Σ_l (γλ)^l δ_{t+l}, row by row, in Python floats."""
    batch, time = len(rewards), len(rewards[0])
    advantages = [[0.0] * time for _ in range(batch)]
    for b in range(batch):
        n = lengths[b]
        v = values[b][:n] + [0.0]  # nothing after the last token
        deltas = [rewards[b][t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            advantages[b][t] = sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t))
    returns = [[advantages[b][t] + (values[b][t] if t < lengths[b] else 0.0) for t in range(time)]
               for b in range(batch)]
    return advantages, returns


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_a_naive_loop_on_random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    batch, time = 4, 9
    lengths = torch.randint(1, time + 1, (batch,), generator=g)
    mask = (torch.arange(time)[None] < lengths[:, None]).long()
    rewards = torch.randn(batch, time, generator=g, dtype=torch.float64) * mask
    values = torch.randn(batch, time, generator=g, dtype=torch.float64)
    gamma, lam = [(1.0, 0.95), (0.99, 0.9), (0.9, 0.5), (1.0, 1.0), (0.95, 0.0)][seed]
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    want_a, want_r = naive_gae(rewards.tolist(), values.tolist(), lengths.tolist(), gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor(want_a, dtype=torch.float64))
    torch.testing.assert_close(returns, torch.tensor(want_r, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# Step 7: the clipped losses
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio, advantage, loss, clipped", [
    (1.1, 1.0, -1.1, False),   # inside the range: the plain ratio·A
    (0.9, -1.0, 0.9, False),
    (1.5, 1.0, -1.2, True),    # a good token already made 50 % likelier: capped at 1 + ε
    (0.5, -1.0, 0.8, True),    # a bad token already halved: capped at 1 - ε
    (1.5, -1.0, 1.5, False),   # a bad token made likelier: never capped, the loss keeps growing
    (0.5, 1.0, -0.5, False),   # a good token made rarer: never capped either
])
def test_clipped_policy_loss_inside_and_outside_the_clip_range(ratio, advantage, loss, clipped):
    old = torch.tensor([[-1.0]])
    logprobs = (old + math.log(ratio)).requires_grad_()
    got, clipfrac, approx_kl = clipped_policy_loss(logprobs, old, torch.tensor([[advantage]]),
                                                   torch.tensor([[1]]), clip_eps=0.2)
    assert got.item() == pytest.approx(loss, rel=1e-5)
    assert clipfrac.item() == float(clipped)
    assert approx_kl.item() == pytest.approx((ratio - 1) - math.log(ratio), rel=1e-4)
    got.backward()
    assert (logprobs.grad.abs().item() == 0) == clipped  # a clipped token teaches nothing


def test_clipped_policy_loss_ignores_padding_and_is_minus_the_advantage_at_ratio_one():
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    advantages = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clipfrac, approx_kl = clipped_policy_loss(old.clone(), old, advantages, mask, 0.2)
    assert loss.item() == pytest.approx(-2.0) and clipfrac.item() == 0 and approx_kl.item() == 0


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 1.0, 1.0]])
    returns = torch.tensor([[1.0, 2.0, -1.0]])
    loss = clipped_value_loss(values, old, returns, torch.tensor([[1, 1, 1]]), clip_eps_value=0.2)
    # token 0: inside the range, 0.81; token 1: clipped to 0.2, error max(1, 3.24) = 3.24;
    # token 2: clipped to 0.2, error max(4, 1.44) = 4 (the unclipped error is the larger)
    assert loss.item() == pytest.approx(0.5 * (0.81 + 3.24 + 4.0) / 3, rel=1e-5)


def test_the_adaptive_kl_controller_follows_its_target():
    fixed = AdaptiveKLController(0.1)
    assert fixed.update(50.0, 64) == 0.1
    control = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert control.update(12.0, 1000) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error capped at 0.2
    assert control.update(3.0, 1000) < 0.1 * 1.02  # too close: the leash loosens
    again = AdaptiveKLController(1.0)
    again.load_state_dict(control.state_dict())
    assert again.state_dict() == control.state_dict()


@pytest.mark.parametrize("exercise", [KL_PENALIZED_REWARDS, COMPUTE_GAE, CLIPPED_POLICY_LOSS,
                                      CLIPPED_VALUE_LOSS], ids=lambda e: e.name)
def test_the_exercise_checks_pass_the_kit_and_name_every_mistake(exercise, capsys):
    exercise.check(exercise.reference_function())
    assert capsys.readouterr().out.startswith(f"✓ {exercise.name} matches")
    for mistake in exercise.mistakes:
        for wrong in mistake.implementations:
            with pytest.raises(CheckFailed) as failed:
                exercise.check(wrong)
            assert str(failed.value) == mistake.message


# ----------------------------------------------------------------------------------------------
# The loop on a tiny model
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world():
    return World(seed=0)


@pytest.fixture(scope="module")
def tokenizer(world):
    return train_tokenizer(world.corpus(400), vocab_size=400)


@pytest.fixture(scope="module")
def prompts(world):
    return [q.text for q in world.questions("ppo")]


def tiny_gpt(tokenizer, seed=0):
    torch.manual_seed(seed)
    return new_gpt(len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=64,
                   eos_token_id=tokenizer.eos_token_id)


def tiny_value_model(policy, seed=1):
    torch.manual_seed(seed)
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    return GPT2ForSequenceClassification(config)


def run(tokenizer, prompts, config, models=None, **kwargs):
    """train_ppo on the planted reward, with models made afresh (the same start every time)."""
    policy, ref_policy, value_model = models or (tiny_gpt(tokenizer), tiny_gpt(tokenizer),
                                                 tiny_value_model(tiny_gpt(tokenizer)))
    kwargs.setdefault("reward_fn", count_e)
    return train_ppo(policy, ref_policy, None, value_model, tokenizer, prompts, config,
                     progress=False, **kwargs)


def count_e(prompts, completions):
    """A planted reward: how many times the letter e appears in the completion."""
    return [float(c.count("e")) for c in completions]


FAST = dict(batch_size=8, max_new_tokens=6, ppo_epochs=2, minibatch_size=4, train="all", lr=1e-2,
            value_lr=1e-2, kl_coef=0.02, missing_eos_penalty=0.0)


def test_logprobs_of_a_padded_batch_equal_those_of_each_row_alone(tokenizer, prompts):
    policy = tiny_gpt(tokenizer)
    queries = [chat_prompt(tokenizer, p) for p in prompts[:4]] + ["<|endoftext|>Hi\n"]  # lengths differ
    out = generate(policy, tokenizer, queries, max_new_tokens=5, seed=0)
    query = tokenizer(queries, return_tensors="pt", padding=True, add_special_tokens=False)
    assert torch.equal(query.input_ids, out.prompt_ids)
    input_ids, attention_mask, position_ids = join(query.input_ids, query.attention_mask,
                                                   out.completion_ids, out.completion_mask)
    with torch.no_grad():
        logits = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        batched = completion_logprobs(logits[:, query.input_ids.shape[1] - 1 : -1], out.completion_ids, 0.7)
        for row in range(len(queries)):
            # the last prompt starts with <|endoftext|>, the padding token, and it still counts
            prompt = query.input_ids[row][query.attention_mask[row].bool()]
            completion = out.completion_ids[row][out.completion_mask[row].bool()]
            alone = policy(input_ids=torch.cat([prompt, completion])[None]).logits[0, len(prompt) - 1 : -1]
            want = torch.log_softmax(alone / 0.7, -1).gather(-1, completion[:, None]).squeeze(-1)
            torch.testing.assert_close(batched[row, : len(completion)], want, rtol=1e-4, atol=1e-5)


def test_the_rollout_gives_the_same_numbers_in_one_chunk_or_many(tokenizer, prompts):
    policy, ref_policy = tiny_gpt(tokenizer), tiny_gpt(tokenizer, seed=2)
    both = PolicyAndValue(policy, tiny_value_model(policy))
    queries = [chat_prompt(tokenizer, p) for p in prompts[:6]]
    out = generate(policy, tokenizer, queries, max_new_tokens=5, seed=0)
    query = tokenizer(queries, return_tensors="pt", padding=True, add_special_tokens=False)
    inputs = join(query.input_ids, query.attention_mask, out.completion_ids, out.completion_mask)
    width = query.input_ids.shape[1]
    whole = rollout_forward(both, ref_policy, *inputs, width, 1.0, chunk=6)
    for chunk in (1, 4):  # 4 leaves a ragged last chunk of 2
        parts = rollout_forward(both, ref_policy, *inputs, width, 1.0, chunk=chunk)
        for a, b in zip(whole, parts):  # logprobs, ref_logprobs, values, entropies
            assert a.shape == (6, out.completion_ids.shape[1])
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_rollout_chunks_hold_the_batch_when_its_logits_fit_and_a_minibatch_at_least():
    assert rollout_rows(32, 48, 798, at_least=8) == 32  # the embedded model: 5 MB, one pass
    assert rollout_rows(32, 300, 50_257, at_least=8) == 8  # GPT-2's vocabulary: 60 MB a row
    fit = ROLLOUT_LOGITS_BYTES // (300 * 50_257 * 4)
    assert rollout_rows(32, 300, 50_257, at_least=0) == max(1, fit)
    assert rollout_rows(4, 48, 798, at_least=8) == 8  # never below a minibatch, even past the batch


def test_prompt_batches_cover_every_prompt_once_per_pass():
    seen = [i for batch in range(5) for i in prompt_indices(10, batch, 4, seed=3)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert prompt_indices(10, 3, 4, seed=3) == seen[12:16]


def test_a_planted_reward_goes_up_within_a_few_batches(tokenizer, prompts, world):
    config = PPOConfig(**{**FAST, "batch_size": 16, "max_new_tokens": 8, "ppo_epochs": 4}, batches=8)
    history = run(tokenizer, prompts, config, watch_fn=rubric_watch(world))
    scores = [h["ppo/score"] for h in history]
    assert len(history) == 8
    assert sum(scores[-3:]) / 3 > 2 * sum(scores[:3]) / 3 + 0.5, scores
    assert history[-1]["ppo/kl"] > 0.1  # it moved away from the reference to get there
    for key in ("ppo/kl", "ppo/clipfrac", "ppo/approx_kl", "loss/policy", "loss/value",
                "ppo/explained_variance", "ppo/entropy", "ppo/completion_length", "ppo/rubric_score"):
        assert all(math.isfinite(h[key]) for h in history), key
    sample = history[-1]["samples"][0]
    assert set(sample) >= {"prompt", "completion", "score", "reward", "kl", "rubric score"}
    assert sample["score"] == sample["completion"].count("e")


def test_final_norm_changes_only_the_policys_last_norm_gains_and_the_value_model(tokenizer, prompts):
    policy, ref_policy, value_model = tiny_gpt(tokenizer), tiny_gpt(tokenizer), tiny_value_model(tiny_gpt(tokenizer))
    policy_before = copy.deepcopy(policy.state_dict())
    value_before = copy.deepcopy(value_model.state_dict())
    run(tokenizer, prompts, PPOConfig(**{**FAST, "train": "final-norm"}, batches=2),
        models=(policy, ref_policy, value_model))
    after = policy.state_dict()
    assert [k for k in after if not torch.equal(after[k], policy_before[k])] == ["transformer.ln_f.weight"]
    assert all(not w.requires_grad for n, w in policy.named_parameters() if n != "transformer.ln_f.weight")
    value_after = value_model.state_dict()
    assert all(not torch.equal(value_after[k], value_before[k]) for k in ("score.weight", "transformer.h.0.attn.c_attn.weight"))


def test_final_norm_finds_the_last_norm_of_other_model_families():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2))
    assert final_norm(llama) is llama.model.norm.weight
    assert trained_weights(llama, "final-norm") == [llama.model.norm.weight]
    assert [n for n, w in llama.named_parameters() if w.requires_grad] == ["model.norm.weight"]
    assert len(trained_weights(llama, "all")) == len(list(llama.parameters()))
    assert all(w.requires_grad for w in llama.parameters())  # "all" thaws what "final-norm" froze


def test_the_optimiser_gives_the_policys_trained_weights_lr_and_the_value_model_value_lr(tokenizer):
    policy, value_model = tiny_gpt(tokenizer), tiny_value_model(tiny_gpt(tokenizer))
    config = PPOConfig()  # the defaults: every weight at 1e-5, the value model at 1e-4
    optimizer = ppo_optimizer(policy, value_model, config, torch.device("cpu"))
    policy_group, value_group = optimizer.param_groups
    assert policy_group["params"] == list(policy.parameters()) and policy_group["lr"] == config.lr == 1e-5
    assert len(value_group["params"]) == len(list(value_model.parameters()))
    assert value_group["lr"] == config.value_lr == 1e-4
    norm = PPOConfig(train="final-norm", lr=3e-3)  # the option: only the final norm's gains
    policy_group = ppo_optimizer(policy, value_model, norm, torch.device("cpu")).param_groups[0]
    assert policy_group["params"] == [policy.transformer.ln_f.weight] and policy_group["lr"] == 3e-3


def test_an_unknown_train_setting_is_refused_before_any_work(tokenizer, prompts):
    with pytest.raises(ValueError, match="'final-norm' or 'all'"):
        run(tokenizer, prompts, PPOConfig(**{**FAST, "train": "head"}, batches=1))


def test_on_batch_sees_each_entry_as_its_batch_ends(tokenizer, prompts):
    seen = []

    def on_batch(entry):  # a live plot would draw here; the history so far has this entry last
        seen.append((entry["batch"], entry["ppo/score"]))

    history = run(tokenizer, prompts, PPOConfig(**FAST, batches=3), on_batch=on_batch)
    assert seen == [(h["batch"], h["ppo/score"]) for h in history] and len(seen) == 3


def test_the_optimiser_is_fused_on_cpu():
    model = torch.nn.Linear(3, 1)
    assert adamw(model.parameters(), 1e-4, torch.device("cpu")).defaults["fused"] is True


def test_a_nan_in_the_rewards_stops_the_run_with_a_named_error(tokenizer, prompts):
    calls = []

    def broken(prompts, completions):
        calls.append(1)
        scores = count_e(prompts, completions)
        if len(calls) == 2:
            scores[3] = float("nan")
        return scores

    with pytest.raises(NonFiniteReward, match="at batch 1") as stopped:
        run(tokenizer, prompts, PPOConfig(**FAST, batches=3), reward_fn=broken)
    assert len(stopped.value.history) == 1  # the batch before it is kept for plotting


def test_the_kl_ceiling_stops_a_policy_that_drifts(tokenizer, prompts):
    with pytest.raises(KLTooHigh, match="max_kl"):
        run(tokenizer, prompts, PPOConfig(**{**FAST, "kl_coef": 0.0}, batches=4, max_kl=0.05))


def test_the_ratio_check_catches_log_probabilities_that_differ_from_sampling(tokenizer, prompts):
    policy = tiny_gpt(tokenizer)
    forward = policy.forward

    def noisy(*args, **kwargs):  # like dropout left on: training differs from sampling
        out = forward(*args, **kwargs)
        if torch.is_grad_enabled():
            out.logits = out.logits + torch.randn_like(out.logits)
        return out

    policy.forward = noisy
    models = (policy, tiny_gpt(tokenizer), tiny_value_model(tiny_gpt(tokenizer)))
    with pytest.raises(RatioOutOfRange, match="not 1"):
        run(tokenizer, prompts, PPOConfig(**FAST, batches=1), models=models)


class Watch:
    """A watch_fn (the length of each completion) that can crash the run after some batches."""

    def __init__(self, crash_after: int | None = None):
        self.crash_after, self.calls = crash_after, 0

    def __call__(self, prompts, completions):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise KeyboardInterrupt  # the kernel dies in the middle of a batch
        return [float(len(c)) for c in completions]


def test_resume_continues_exactly(tokenizer, prompts, tmp_path):
    # adaptive KL, so that the controller's state matters too
    config = PPOConfig(**FAST, batches=3, checkpoint_every=1, kl_target=0.5, kl_horizon=50, log_samples=8)
    whole = run(tokenizer, prompts, config, watch_fn=Watch())
    with pytest.raises(KeyboardInterrupt):  # batches 0 and 1 done and saved, 2 interrupted
        run(tokenizer, prompts, config, watch_fn=Watch(crash_after=2), checkpoint_dir=tmp_path)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["next_batch"] == 2
    resumed = run(tokenizer, prompts, config, watch_fn=Watch(), checkpoint_dir=tmp_path, resume=True)
    assert len(resumed) == 3
    assert whole[0]["ppo/kl_coef"] != whole[2]["ppo/kl_coef"]
    assert resumed[2] == whole[2]  # the same samples, scores and metrics, to the last bit
    assert resumed[:2] == whole[:2]  # and the history of the batches before the crash

    with pytest.raises(CheckpointMismatch, match="lr"):
        run(tokenizer, prompts, PPOConfig(**{**FAST, "lr": 1e-3}, batches=4, checkpoint_every=1,
                                          kl_target=0.5, kl_horizon=50), checkpoint_dir=tmp_path,
            resume=True)


# ----------------------------------------------------------------------------------------------
# Models loaded by the kit: a reward model with its own tokenizer, a value model from a folder
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tokenizer, world, tmp_path_factory):
    """A tiny 'sft' folder (the policy) and a 'reward' folder whose tokenizer is a different one."""
    root = tmp_path_factory.mktemp("ppo-models")
    tiny_gpt(tokenizer).save_pretrained(root / "sft")
    tokenizer.save_pretrained(root / "sft")
    other = train_tokenizer(world.corpus(300, seed=5), vocab_size=300)
    torch.manual_seed(2)
    reward = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(other), n_layer=1, n_embd=32, n_head=2, n_positions=128, num_labels=1,
        pad_token_id=other.pad_token_id, bos_token_id=other.eos_token_id, eos_token_id=other.eos_token_id))
    reward.save_pretrained(root / "reward")
    other.save_pretrained(root / "reward")
    return root


def test_a_reward_model_with_its_own_tokenizer_scores_the_decoded_text(folders, prompts, world):
    tokenizer = load_tokenizer(folders / "sft")
    policy, ref_policy = load_model(folders / "sft", device="cpu"), load_model(folders / "sft", device="cpu")
    value_model = load_model(folders / "sft", kind="reward", device="cpu")  # SFT body, new scalar head
    reward_model = load_model(folders / "reward", kind="reward", device="cpu")
    reward_tokenizer = load_tokenizer(folders / "reward")
    assert len(reward_tokenizer) != len(tokenizer)
    history = train_ppo(policy, ref_policy, reward_model, value_model, tokenizer, prompts,
                        PPOConfig(**FAST, batches=1, log_samples=8), reward_tokenizer=reward_tokenizer,
                        watch_fn=rubric_watch(world), progress=False)
    samples = history[0]["samples"]
    want = score(reward_model, reward_tokenizer, [s["prompt"] for s in samples],
                 [s["completion"] for s in samples])
    assert [s["score"] for s in samples] == want.tolist()
    with pytest.raises(ValueError, match="reward_tokenizer"):  # the policy's ids overflow its vocabulary
        train_ppo(policy, ref_policy, reward_model, value_model, tokenizer, prompts,
                  PPOConfig(**{**FAST, "max_new_tokens": 12}, batches=1), progress=False)


def test_build_ppo_writes_a_stage_folder(folders, tmp_path):
    # the reward folder reads other ids, so the value model starts from the policy's body here
    meta = build_ppo(tmp_path, PPOConfig(**FAST, batches=1), sft=folders / "sft",
                     reward=folders / "reward", progress=False, n_prompts=64)
    assert (tmp_path / "config.json").exists() and (tmp_path / "tokenizer.json").exists()
    assert meta["prompts"] == 64 and "ppo/rubric_score" in meta["final"]
    assert meta["value_source"] == str(folders / "sft")


def test_ppo_practises_on_training_tasks_and_never_on_held_out_ones(folders, tmp_path, monkeypatch):
    seen = []
    real = ppo_module.train_ppo

    def spy(policy, ref, rm, value, tokenizer, prompts, config, **kwargs):
        seen.extend(prompts)
        return real(policy, ref, rm, value, tokenizer, prompts, config, **kwargs)

    monkeypatch.setattr(ppo_module, "train_ppo", spy)
    build_ppo(tmp_path, PPOConfig(**FAST, batches=1), sft=folders / "sft", reward=folders / "reward",
              progress=False, n_prompts=200)
    world = BehaviourWorld(seed=0)
    train, heldout = {t.text for t in world.questions("train")}, {t.text for t in world.questions("heldout")}
    assert len(seen) == 200 and set(seen) <= train and not set(seen) & heldout
    kinds = {t.kind for t in world.questions("train") if t.text in set(seen)}
    assert kinds == {"fact", "unknown", "insult"}


def test_ppo_defaults_are_instructgpt_s_recipe():
    config = PPOConfig()
    assert config.train == "all" and config.kl_coef > 0  # every weight, on a KL leash to the SFT model
