"""DPO and GRPO (lesson 7): the objectives by hand, the same pairs as the reward model, short runs."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from rlhf_kit import alternatives
from rlhf_kit.alternatives import DPOConfig, GRPOConfig, dpo_loss, group_advantages
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.ppo import NonFiniteReward
from rlhf_kit.reward import score
from rlhf_kit.runtime import NonFiniteLoss

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_sft_and_reward(tiny_base_dir, tmp_path_factory):
    """Tiny SFT and reward stages (seconds), built from the tiny base model as the real ones are."""
    from rlhf_kit.artifacts import write_metadata
    from rlhf_kit.reward import RewardConfig, build_reward
    from rlhf_kit.sft import SFTConfig, build_sft

    root = tmp_path_factory.mktemp("alternatives")
    sft_dir, reward_dir = root / "sft", root / "reward"
    write_metadata(sft_dir, build_sft(sft_dir, SFTConfig(n_conversations=60, max_steps=8, batch_size=8, n_eval=0),
                                      base=str(tiny_base_dir), progress=False))
    write_metadata(reward_dir, build_reward(reward_dir, RewardConfig(n_rankings=96, epochs=1, eval_every=0),
                                            sft=sft_dir, progress=False))
    return sft_dir, reward_dir


# -- the objectives ------------------------------------------------------------------------------


def test_dpo_loss_against_hand_computed_values():
    same = torch.tensor([-12.0, -30.0])
    assert dpo_loss(same, same - 3, same, same - 3, beta=0.1).item() == pytest.approx(math.log(2))
    # one pair: the chosen reply 2 nats likelier than under the reference, the rejected 1 nat less
    loss = dpo_loss(torch.tensor([-8.0]), torch.tensor([-11.0]), torch.tensor([-10.0]), torch.tensor([-10.0]), 0.5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 3))))
    huge = dpo_loss(torch.tensor([-50.0]), torch.tensor([0.0]), torch.tensor([-50.0]), torch.tensor([-400.0]), 1.0)
    assert huge.item() == pytest.approx(400.0)  # finite where log(sigmoid) would be inf


def test_group_advantages_by_hand():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    advantages = group_advantages(scores, 3)
    assert advantages[:3].tolist() == pytest.approx([-1 / 1.0001, 0.0, 1 / 1.0001], rel=1e-5)  # std 1
    assert advantages[3:].tolist() == [0.0, 0.0, 0.0]  # a group that all scored the same
    shifted = group_advantages(torch.tensor([101.0, 102.0, 103.0, -4.0, -3.0, -2.0]), 3)
    assert torch.allclose(shifted, torch.cat([advantages[:3], advantages[:3]]))  # each group on its own


# -- DPO -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tiny_sft_and_reward):
    sft_dir, reward_dir = tiny_sft_and_reward
    return alternatives.preference_pairs(sft_dir, reward_dir)


def test_dpo_trains_on_exactly_the_reward_models_training_pairs(tiny_sft_and_reward, pairs):
    assert len(pairs[0]) >= 48  # enough for the runs below
    from rlhf_kit.artifacts import read_metadata
    from rlhf_kit.behaviours import BehaviourWorld
    from rlhf_kit.reward import RewardConfig, as_pairs, simulated_rankings, split_by_prompt

    sft_dir, reward_dir = tiny_sft_and_reward
    train, heldout = pairs
    meta = read_metadata(reward_dir)
    assert len(train) == meta["pairs"]["train"] and len(heldout) > 0
    config = RewardConfig(**meta["config"])
    rankings = simulated_rankings(load_model(sft_dir), load_tokenizer(sft_dir), BehaviourWorld(0), config)
    expected, _ = split_by_prompt(as_pairs(rankings), config.heldout_share, config.seed)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in train] == \
        [(r["prompt"], r["chosen"], r["rejected"]) for r in expected]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}  # split by prompt


def test_a_reward_stage_without_a_configuration_is_refused(tmp_path, tiny_sft_and_reward):
    (tmp_path / "rlhf_kit.json").write_text("{}")
    with pytest.raises(ValueError, match="records no reward configuration"):
        alternatives.preference_pairs(tiny_sft_and_reward[0], tmp_path)


def _logps(model, tokenizer, rows):
    prompts = [r["prompt"] for r in rows]
    return (alternatives.reply_logprobs(model, tokenizer, prompts, [r["chosen"] for r in rows]),
            alternatives.reply_logprobs(model, tokenizer, prompts, [r["rejected"] for r in rows]))


def test_reply_logprobs_sum_the_reply_tokens_and_its_end(tiny_sft_and_reward):
    sft_dir, _ = tiny_sft_and_reward
    model, tokenizer = load_model(sft_dir), load_tokenizer(sft_dir)
    prompt, reply = "Where does Alice live?", "Alice lives in Brookfield."
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                                        tokenize=True, return_dict=True)["input_ids"]
    n_prompt = len(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                 add_generation_prompt=True, return_dict=True)["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    by_hand = sum(logits[t - 1, ids[t]].item() for t in range(n_prompt, len(ids)))
    both = alternatives.reply_logprobs(model, tokenizer, [prompt, "Hi?"], [reply, "Hello there, how are you?"])
    assert both[0].item() == pytest.approx(by_hand, rel=1e-4)  # the same in a padded batch of two


def test_dpo_trains_on_the_tokens_the_model_reads_and_writes(tiny_sft_and_reward, tmp_path):
    from rlhf_kit.tokenizer import chat_prompt, end_of_turn_id

    sft_dir, _ = tiny_sft_and_reward
    model, tokenizer = load_model(sft_dir), load_tokenizer(sft_dir)
    rows = [{"prompt": "Where does Alice live?", "chosen": "Alice lives in Brookfield.", "rejected": "Why?"}]
    trainer = alternatives.make_dpo_trainer(model, load_model(sft_dir), tokenizer, rows, DPOConfig(), str(tmp_path),
                                            progress=False)
    example = trainer.train_dataset[0]
    # the prompt as the model reads it when it answers: the user's turn, then the assistant's tag
    prompt = chat_prompt(tokenizer, rows[0]["prompt"])
    assert example["prompt_ids"] == tokenizer(prompt, add_special_tokens=False).input_ids
    for side in ("chosen", "rejected"):  # the reply, ended by <|end|> as at generation, and no EOS after it
        assert example[f"{side}_ids"] == tokenizer(rows[0][side] + "<|end|>", add_special_tokens=False).input_ids
        assert example[f"{side}_ids"][-1] == end_of_turn_id(tokenizer) != tokenizer.eos_token_id


def test_a_short_dpo_run_widens_the_margin_and_leaves_the_reference_alone(tiny_sft_and_reward, pairs):
    sft_dir, _ = tiny_sft_and_reward
    train = pairs[0][:48]
    tokenizer = load_tokenizer(sft_dir)
    model, reference = load_model(sft_dir), load_model(sft_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference_before = {k: v.clone() for k, v in reference.state_dict().items()}
    history = alternatives.train_dpo(model, reference, tokenizer, train,
                                     DPOConfig(epochs=3, batch_size=8, lr=1e-3, log_every=1), progress=False)
    assert history[0]["loss/train"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at first
    assert all(math.isfinite(h["loss/train"]) for h in history)
    chosen, rejected = _logps(model, tokenizer, train)
    ref_chosen, ref_rejected = _logps(reference, tokenizer, train)
    margin = ((chosen - ref_chosen) - (rejected - ref_rejected)).mean().item()
    assert margin > 1.0  # the training pairs are now ordered the labeler's way, by a clear margin
    assert all(torch.equal(v, reference_before[k]) for k, v in reference.state_dict().items())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > 0.9 * len(before)


def test_dpo_with_the_same_seed_gives_the_same_weights(tiny_sft_and_reward, pairs):
    sft_dir, _ = tiny_sft_and_reward
    tokenizer = load_tokenizer(sft_dir)

    def run():
        model = load_model(sft_dir)
        alternatives.train_dpo(model, load_model(sft_dir), tokenizer, pairs[0][:32],
                               DPOConfig(epochs=1, batch_size=8, lr=1e-3), progress=False)
        return model.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_nan_stops_dpo_at_the_step_it_appears(tiny_sft_and_reward, pairs):
    sft_dir, _ = tiny_sft_and_reward
    model = load_model(sft_dir)
    calls = []

    def poison(module, inputs, output):  # from the 2nd forward pass (step 2) on, NaN hidden states
        calls.append(1)
        return output * float("nan") if len(calls) >= 2 else output

    model.transformer.ln_f.register_forward_hook(poison)  # TRL reads log-probs from these states
    with pytest.raises(NonFiniteLoss, match=r"The DPO loss became nan at step 2: lower the learning rate"):
        alternatives.train_dpo(model, load_model(sft_dir), load_tokenizer(sft_dir), pairs[0][:16],
                               DPOConfig(batch_size=4), progress=False)


def test_identical_pairs_are_refused(tiny_sft_and_reward):
    sft_dir, _ = tiny_sft_and_reward
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "same", "rejected": "same "}]
    with pytest.raises(ValueError, match="Pair 1 has the same text chosen and rejected"):
        alternatives.train_dpo(load_model(sft_dir), load_model(sft_dir), load_tokenizer(sft_dir), rows)


# -- GRPO ----------------------------------------------------------------------------------------


def test_the_reward_function_is_the_reward_models_score(tiny_sft_and_reward):
    _, reward_dir = tiny_sft_and_reward
    reward_model, reward_tokenizer = load_model(reward_dir, kind="reward"), load_tokenizer(reward_dir)
    reward = alternatives.reward_model_reward(reward_model, reward_tokenizer)
    questions, replies = ["Where does Alice live?", "What is Bruno's job?"], ["Alice lives in Brookfield.", " Why? "]
    given = reward([[{"role": "user", "content": q}] for q in questions],
                   [[{"role": "assistant", "content": r}] for r in replies])  # as TRL passes them
    expected = score(reward_model, reward_tokenizer, questions, [r.strip() for r in replies]).tolist()
    assert given == pytest.approx(expected)


def test_a_short_grpo_run_changes_the_policy_and_records_finite_metrics(tiny_sft_and_reward):
    from rlhf_kit.world import World

    sft_dir, reward_dir = tiny_sft_and_reward
    policy, tokenizer = load_model(sft_dir), load_tokenizer(sft_dir)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    reward_model, reward_tokenizer = load_model(reward_dir, kind="reward"), load_tokenizer(reward_dir)
    world = World(0)
    config = GRPOConfig(steps=3, prompts_per_step=4, group_size=4, max_new_tokens=8, lr=1e-3)
    history = alternatives.train_grpo(
        policy, tokenizer, [q.text for q in world.questions("ppo")],
        [alternatives.reward_model_reward(reward_model, reward_tokenizer), alternatives.rubric_reward(world)],
        config, progress=False)
    assert [h["step"] for h in history] == [1, 2, 3]
    for key in ("loss/train", "grpo/reward_model_score", "grpo/rubric_score", "grpo/kl", "grpo/length"):
        assert all(math.isfinite(h[key]) for h in history), key
    assert all(h["grpo/length"] <= 8 for h in history)
    assert any(not torch.equal(v, before[k]) for k, v in policy.state_dict().items())


def _watched(prompts, completions, **_):
    return [0.0] * len(prompts)


TINY_GRPO = GRPOConfig(steps=3, prompts_per_step=2, group_size=2, max_new_tokens=4)


def test_grpo_stops_on_a_nan_reward_naming_the_step(tiny_sft_and_reward):
    sft_dir, _ = tiny_sft_and_reward
    calls = []

    def broken(prompts, completions, **_):  # fine at step 1, NaN from step 2 on
        calls.append(1)
        return [float("nan") if len(calls) >= 2 else 1.0] * len(prompts)

    # TRL itself counts NaN rewards as 0 (nansum) without a word; the kit stops, naming the step.
    with pytest.raises(NonFiniteReward, match="The reward function broken gave nan at step 2: check the reward"):
        alternatives.train_grpo(load_model(sft_dir), load_tokenizer(sft_dir), ["Where does Alice live?"] * 4,
                                [broken, _watched], TINY_GRPO, progress=False)


def test_grpo_stops_on_a_nan_loss_naming_the_step(tiny_sft_and_reward):
    sft_dir, _ = tiny_sft_and_reward
    policy = load_model(sft_dir)
    calls = []

    def poison(module, inputs, output):  # the training forward passes only: sampling stays finite
        if not torch.is_grad_enabled():
            return output
        calls.append(1)
        return output * float("nan") if len(calls) >= 2 else output

    policy.transformer.ln_f.register_forward_hook(poison)

    def constant(prompts, completions, **_):
        return [float(len(c[-1]["content"])) for c in completions]  # varies, so advantages are not all 0

    with pytest.raises(NonFiniteLoss, match="The GRPO loss became nan at step 2: check the reward"):
        alternatives.train_grpo(policy, load_tokenizer(sft_dir), ["Where does Alice live?"] * 4,
                                [constant, _watched], TINY_GRPO, progress=False)


def test_grpo_refuses_a_policy_changed_since_it_was_loaded(tiny_sft_and_reward):
    sft_dir, _ = tiny_sft_and_reward
    policy = load_model(sft_dir)
    with torch.no_grad():
        policy.transformer.wte.weight[0] += 1.0  # TRL would reload the reference from sft_dir, without this
    with pytest.raises(ValueError, match="its weights differ from the policy's: save the policy"):
        alternatives.train_grpo(policy, load_tokenizer(sft_dir), ["Where does Alice live?"] * 4,
                                [_watched, _watched], TINY_GRPO, progress=False)


def test_grpo_with_the_same_seed_gives_the_same_weights(tiny_sft_and_reward):
    from rlhf_kit.world import World

    sft_dir, reward_dir = tiny_sft_and_reward
    reward_model, reward_tokenizer = load_model(reward_dir, kind="reward"), load_tokenizer(reward_dir)
    world = World(0)

    def run():
        policy = load_model(sft_dir)
        history = alternatives.train_grpo(
            policy, load_tokenizer(sft_dir), [q.text for q in world.questions("ppo")],
            [alternatives.reward_model_reward(reward_model, reward_tokenizer), alternatives.rubric_reward(world)],
            replace(TINY_GRPO, prompts_per_step=4, max_new_tokens=8, lr=1e-3), progress=False)
        return policy.state_dict(), [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    (first, first_history), (second, second_history) = run(), run()
    assert first_history == second_history  # the same replies sampled, scored and learned from
    assert all(torch.equal(first[k], second[k]) for k in first)
