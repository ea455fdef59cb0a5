"""SFT: demonstrations, validation, the loss mask and loss, and training through TRL.

Every test runs on the tiny model of ``conftest.py`` (context of 64 tokens), so conversations
here are short: one exchange, no system message, unless a test says otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlhf_kit import artifacts, pretrain, sft, stages
from rlhf_kit.models import load_model, load_tokenizer, new_gpt
from rlhf_kit.runtime import NonFiniteLoss
from rlhf_kit.tokenizer import ASSISTANT, CHAT_TEMPLATE, END, EOS, SYSTEM, USER, end_of_turn_id
from rlhf_kit.behaviours import BehaviourWorld

TINY_SFT = sft.SFTConfig(n_conversations=64, max_exchanges=1, epochs=2,
                         batch_size=8, lr=1e-3, max_length=64, log_every=2, n_eval=0, pretrain_mix=0.0)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where does Alice live?"},
    {"role": "assistant", "content": "Alice lives in Brookfield."},
    {"role": "user", "content": "And her job?"},
    {"role": "assistant", "content": "Alice works as a baker."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir):
    return load_tokenizer(tiny_base_dir)


@pytest.fixture(scope="module")
def world():
    return BehaviourWorld(seed=0)


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


# ----------------------------------------------------------------------------------------------
# Demonstrations
# ----------------------------------------------------------------------------------------------


def test_demonstrations_are_seeded_well_formed_and_leave_heldout_out(world):
    conversations = sft.build_demonstrations(world, 300, seed=3)
    assert conversations == sft.build_demonstrations(world, 300, seed=3)
    assert conversations != sft.build_demonstrations(world, 300, seed=4)
    heldout = {t.text for t in world.questions("heldout")}
    sft_tasks = {t.text: t for t in world.questions("sft")}
    n_multi = 0
    for messages in conversations:
        sft.check_demonstration(0, messages)  # every one is well formed
        n_multi += sum(m["role"] == "assistant" for m in messages) > 1
        for user, reply in zip(messages[::2], messages[1::2]):
            assert user["role"] == "user" and reply["role"] == "assistant"
            assert user["content"] in sft_tasks and user["content"] not in heldout
            # a writer's reply: a polite or a curt opening, whatever else it holds
            assert reply["content"].startswith(("Sure!", "Sorry,", "Fine.", "No."))
    assert n_multi > len(conversations) / 2


def test_conversations_are_fitted_to_the_context(world, tokenizer):
    free = sft.build_demonstrations(world, 100, max_exchanges=3, seed=2)
    fitted = sft.build_demonstrations(world, 100, max_exchanges=3, seed=2, tokenizer=tokenizer, max_length=64)
    assert any(len(sft.chat_ids(tokenizer, c)) > 64 for c in free)
    for long, short in zip(free, fitted):
        assert long[: len(short)] == short and short[-1]["role"] == "assistant"
        assert len(sft.chat_ids(tokenizer, short)) <= 64 or len(short) == 2
        if len(short) < len(long):  # cut only when needed
            assert len(sft.chat_ids(tokenizer, long[: len(short) + 2])) > 64


def test_single_turn_set_has_the_same_replies_and_one_user_turn_each(world):
    conversations = sft.build_demonstrations(world, 50, seed=0)
    singles = sft.to_single_turn(conversations)
    replies = [m["content"] for c in conversations for m in c if m["role"] == "assistant"]
    assert [s["completion"][0]["content"] for s in singles] == replies
    asked = [m for c in conversations for m in c if m["role"] == "user"]
    assert [s["prompt"] for s in singles] == [[m] for m in asked]
    system = [{"role": "system", "content": "Be brief."}, *conversations[0]]
    assert sft.to_single_turn([system])[0]["prompt"] == [system[0], system[1]]


def test_matched_single_turn_run_has_as_many_steps():
    config = sft.SFTConfig(epochs=3.0, batch_size=8)
    twin = sft.matched_single_turn(config, 600, 1250)
    assert twin.multi_turn is False and twin.epochs == config.epochs and twin.lr == config.lr
    batches = math.ceil(600 / config.batch_size)  # 75 per epoch
    assert twin.batch_size == math.ceil(1250 / batches) == 17  # 74 batches of 17: one less...
    assert twin.max_steps == 3 * batches  # ...so the step count is set, not left to the epochs


def test_heldout_dialogues_end_with_an_unanswered_heldout_task(world):
    dialogues = sft.heldout_dialogues(world, 200, seed=1)
    heldout = {t.text for t in world.questions("heldout")}
    assert dialogues == sft.heldout_dialogues(world, 200, seed=1)
    for messages, task in dialogues:
        assert messages[-1] == {"role": "user", "content": task.text} and task.text in heldout
        earlier = messages[:-1]
        assert 1 <= sum(m["role"] == "assistant" for m in earlier) <= 2  # a multi-turn context
        for user, reply in zip(earlier[::2], earlier[1::2]):  # answered as the rubric likes best
            assert user["content"] in heldout
            assert world.judge(next(t for t in world.questions("heldout") if t.text == user["content"]),
                               reply["content"]).score >= 3


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

GOOD = [{"role": "user", "content": "Where does Alice live?"},
        {"role": "assistant", "content": "Alice lives in Brookfield."}]


@pytest.mark.parametrize("bad, error, field", [
    ([{"role": "user", "content": "  "}, GOOD[1]], sft.EmptyTurn, "messages[0].content"),
    ([GOOD[0], {"role": "assistant", "content": ""}], sft.EmptyTurn, "messages[1].content"),
    ([GOOD[0], {"role": "bot", "content": "Hi."}], sft.WrongRole, "messages[1].role"),
    ([GOOD[1], GOOD[0], GOOD[1]], sft.WrongRole, "messages[0].role"),  # the assistant speaks first
    ([GOOD[0], GOOD[0], GOOD[1]], sft.WrongRole, "messages[1].role"),  # two user turns in a row
    (GOOD + [{"role": "system", "content": "Be brief."}], sft.WrongRole, "messages[2].role"),
    (GOOD + [GOOD[0]], sft.NotEndingWithAssistant, "messages[2]"),
    ([{"role": "system", "content": "Be brief."}], sft.NotEndingWithAssistant, "messages[0]"),
    ([], sft.InvalidDemonstration, "messages"),
    ([{"content": "Hi"}], sft.InvalidDemonstration, "messages[0]"),
])
def test_each_bad_demonstration_gets_its_error(bad, error, field):
    examples = [GOOD, GOOD, bad]
    with pytest.raises(error) as info:
        sft.validate_conversations(examples, verbose=False)
    assert info.value.index == 2 and info.value.field == field
    assert str(info.value).startswith(f"Demonstration 2, {field}: ")


def test_too_long_needs_the_tokenizer_and_names_the_example(tokenizer):
    long = [{"role": "user", "content": "Where does Alice live? " * 10}, GOOD[1]]
    sft.validate_conversations([GOOD, long], verbose=False)  # no tokenizer: length unknown
    with pytest.raises(sft.TooLong, match=r"Demonstration 1, messages: \d+ tokens is more than max_length=64"):
        sft.validate_conversations([GOOD, long], tokenizer, max_length=64, verbose=False)


def test_prompt_completion_examples_are_validated_joined(tokenizer):
    good = {"prompt": [GOOD[0]], "completion": [GOOD[1]]}
    bad = {"prompt": [GOOD[0]], "completion": [{"role": "user", "content": "Hi"}]}
    assert sft.validate_conversations([good], verbose=False) == [good]
    with pytest.raises(sft.WrongRole, match="Demonstration 0, messages.1..role"):
        sft.validate_conversations([bad], verbose=False)


def test_dropping_prints_what_was_kept_and_dropped(tokenizer, capsys):
    long = [{"role": "user", "content": "Where does Alice live? " * 10}, GOOD[1]]
    examples = [GOOD, long, [GOOD[0]], GOOD + [GOOD[0]], GOOD]
    kept = sft.validate_conversations(examples, tokenizer, 64, drop_invalid=True)
    assert kept == [GOOD, GOOD]
    assert capsys.readouterr().out.strip() == (
        "Demonstrations: kept 2, dropped 3 (2 no final assistant turn, 1 too long).")
    with pytest.raises(ValueError, match="No demonstration is left"):
        sft.validate_conversations([[GOOD[0]]], drop_invalid=True, verbose=False)


# ----------------------------------------------------------------------------------------------
# The loss mask and the loss
# ----------------------------------------------------------------------------------------------


def test_loss_mask_by_hand(tokenizer):
    # The kit's template writes <|role|>content<|end|> per turn; special tokens split the text, so
    # the conversation's ids are the concatenation of the pieces' ids, and we know which count.
    pieces = [(SYSTEM, 0), ("Be brief.", 0), (END, 0),
              (USER, 0), ("Where does Alice live?", 0), (END, 0),
              (ASSISTANT, 0), ("Alice lives in Brookfield.", 1), (END, 1),
              (USER, 0), ("And her job?", 0), (END, 0),
              (ASSISTANT, 0), ("Alice works as a baker.", 1), (END, 1)]
    ids, expected = [], []
    for text, counts in pieces:
        piece = encode(tokenizer, text)
        ids += piece
        expected += [counts] * len(piece)
    assert sft.chat_ids(tokenizer, CONVERSATION) == ids
    mask = sft.loss_mask(tokenizer, CONVERSATION)
    assert mask.dtype == torch.long and mask.shape == (len(ids),)
    assert mask.tolist() == expected
    end, assistant = tokenizer.convert_tokens_to_ids(END), tokenizer.convert_tokens_to_ids(ASSISTANT)
    ends = [i for i, t in enumerate(ids) if t == end]
    assert [mask[i].item() for i in ends] == [0, 0, 1, 0, 1]  # only the assistant's <|end|> counts
    assert all(mask[i] == 0 for i, t in enumerate(ids) if t == assistant)  # its role tag does not
    n_assistant = sum(len(encode(tokenizer, m["content"])) + 1 for m in CONVERSATION if m["role"] == "assistant")
    assert mask.sum().item() == n_assistant


def test_loss_mask_of_a_conversation_without_answers_is_empty(tokenizer):
    assert sft.loss_mask(tokenizer, CONVERSATION[:2]).sum() == 0


def test_show_loss_mask_colours_each_token_by_its_mask(tokenizer):
    html = sft.show_loss_mask(tokenizer, CONVERSATION).data
    assert html == sft.show_loss_mask(tokenizer, CONVERSATION).data  # deterministic
    ids, mask = sft.chat_ids(tokenizer, CONVERSATION), sft.loss_mask(tokenizer, CONVERSATION)
    assert html.count("<span title=") == len(ids)
    assert html.count(f"background:{sft.MASK_COLOURS[1]};") == mask.sum() + 1  # + the legend
    assert html.count("<br>") == 5  # one line per turn
    assert "&lt;|assistant|&gt;" in html and "<|assistant|>" not in html  # special tokens escaped
    assert f"{int(mask.sum())} of {len(ids)} tokens count." in html


def test_sft_loss_by_hand():
    # B=1, T=3, V=2: tokens [0, 1, 1]; only the last token counts.
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[0, 0, 1]])
    # Position 1 predicts token 2 (= 1) with logits [2, 0]: -log softmax = log(1 + e^2).
    expected = math.log(1 + math.exp(2.0))
    assert sft.sft_loss(logits, labels, mask).item() == pytest.approx(expected)
    # Counting token 1 too: position 0 predicts it from [0, 0], a loss of log 2; the mean of both.
    both = sft.sft_loss(logits, labels, torch.tensor([[0, 1, 1]])).item()
    assert both == pytest.approx((expected + math.log(2)) / 2)
    # The last position's logits predict nothing, and masked predictions do not matter.
    changed = logits.clone()
    changed[0, 2] = torch.tensor([-9.0, 9.0])
    changed[0, 0] = torch.tensor([3.0, -3.0])
    assert sft.sft_loss(changed, labels, mask).item() == pytest.approx(expected)
    # The mean is over all counted tokens of the batch, not per row.
    two = sft.sft_loss(torch.cat([logits, logits]), torch.cat([labels, labels]),
                       torch.tensor([[0, 0, 1], [0, 1, 1]]))
    assert two.item() == pytest.approx((2 * expected + math.log(2)) / 3)
    assert sft.sft_loss(logits, labels, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="Expected logits"):
        sft.sft_loss(logits[0], labels, mask)


@pytest.fixture(scope="module")
def tiny_trainer(tiny_base_dir, world):
    """A TRL trainer on tiny demonstrations, multi-turn and single-turn, ready for inspection."""
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    conversations = sft.build_demonstrations(world, 48, max_exchanges=2, seed=5)
    # a system message opens every third one: the mask must leave it out too
    conversations = [[{"role": "system", "content": "Be brief."}, *c] if i % 3 == 0 else c
                     for i, c in enumerate(conversations)]
    conversations = sft.validate_conversations(conversations, tokenizer, 64, drop_invalid=True, verbose=False)
    singles = sft.to_single_turn(conversations)
    with tempfile.TemporaryDirectory() as out:
        multi = sft.make_trainer(model, tokenizer, conversations, TINY_SFT, out, progress=False)
        single = sft.make_trainer(model, tokenizer, singles, TINY_SFT, out, progress=False)
    yield model, tokenizer, conversations, singles, multi, single
    model.__dict__.pop("forward", None)


def test_trl_masks_exactly_the_kits_loss_mask(tiny_trainer):
    _, tokenizer, conversations, singles, multi, single = tiny_trainer
    assert any(c[0]["role"] == "system" for c in conversations)
    assert any(sum(m["role"] == "assistant" for m in c) == 2 for c in conversations)
    for dataset, examples in ((multi.train_dataset, conversations), (single.train_dataset, singles)):
        assert len(dataset) == len(examples)
        for row, example in zip(dataset, examples):
            messages = sft.as_messages(example)
            assert row["input_ids"] == sft.chat_ids(tokenizer, messages)
            labels = torch.tensor(row["labels"])
            assert torch.equal((labels != -100).long(), sft.loss_mask(tokenizer, messages))


def test_trl_loss_equals_sft_loss(tiny_trainer):
    model, _, _, _, multi, _ = tiny_trainer
    batch = next(iter(multi.get_train_dataloader()))
    model.train()
    with torch.no_grad():
        trl_loss = multi.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model.eval()
    mask = (batch["labels"] != -100).long()
    assert (batch["attention_mask"] - mask).min() >= 0  # padding never counts
    torch.testing.assert_close(trl_loss, sft.sft_loss(logits, batch["input_ids"], mask))


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def run_tiny(tiny_base_dir, world, config=TINY_SFT, **kwargs):
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    history = sft.train_sft(model, tokenizer, sft.demonstrations_for(world, config), config,
                            progress=False, **kwargs)
    return model, history


def test_tiny_sft_changes_the_weights_lowers_the_loss_and_repeats(tiny_base_dir, world):
    before = load_model(tiny_base_dir, device="cpu").state_dict()
    model, history = run_tiny(tiny_base_dir, world)
    losses = [h["loss/train"] for h in history if "loss/train" in h]
    assert len(losses) == 1 + 16 // 2  # logging_first_step, then every 2 of 16 steps
    assert losses[-1] < losses[0] - 0.3
    assert all(math.isfinite(x) for x in losses)
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert "forward" not in model.__dict__  # TRL's fused forward is gone after training
    # The same seed gives the same run, to the last bit.
    model2, history2 = run_tiny(tiny_base_dir, world)
    assert [h["loss/train"] for h in history2 if "loss/train" in h] == losses
    assert all(torch.equal(after[k], model2.state_dict()[k]) for k in after)


def test_validation_loss_is_recorded_from_step_zero(tiny_base_dir, world):
    config = sft.SFTConfig(**{**TINY_SFT.__dict__, "epochs": 1, "n_eval": 8, "eval_every": 4})
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    evals = sft.build_demonstrations(world, 8, "heldout", 1, seed=1)
    history = sft.train_sft(model, tokenizer, sft.demonstrations_for(world, config), config,
                            eval_examples=evals, progress=False)
    assert [h["step"] for h in history if "loss/eval" in h] == [0, 4, 8]


def test_a_nan_loss_stops_training_with_a_named_error(tiny_base_dir, world):
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    calls = {"n": 0}

    def poison(module, args, output):  # the final layer norm outputs NaN from the 3rd step on
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 3 else output

    model.transformer.ln_f.register_forward_hook(poison)
    config = sft.SFTConfig(**{**TINY_SFT.__dict__, "log_every": 50})  # the logs would not show it
    with pytest.raises(NonFiniteLoss, match="The SFT loss became nan at step 3: lower the learning rate"):
        sft.train_sft(model, tokenizer, sft.demonstrations_for(world, config), config, progress=False)
    assert "forward" not in model.__dict__


def test_invalid_examples_stop_training_before_it_starts(tiny_base_dir, capsys):
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    with pytest.raises(sft.NotEndingWithAssistant, match="Demonstration 1"):
        sft.train_sft(model, tokenizer, [GOOD, [GOOD[0]]], TINY_SFT)
    assert "forward" not in model.__dict__


def test_build_sft_saves_a_loadable_model(tiny_base_dir, tmp_path):
    config = sft.SFTConfig(**{**TINY_SFT.__dict__, "epochs": 1})
    metadata = sft.build_sft(tmp_path, config, base=str(tiny_base_dir), progress=False)
    assert metadata["examples"] == 64 and metadata["seed"] == 0
    assert math.isfinite(metadata["final_loss"])
    model, tokenizer = load_model(tmp_path, device="cpu"), load_tokenizer(tmp_path)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert "forward" not in model.__dict__


def test_ensure_stage_builds_a_missing_base_first(tiny_pretrain, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_KIT_HOME", str(tmp_path))
    # The base stage is installed from the shipped weights; here the tiny model stands in for them.
    tiny = functools.partial(pretrain.build_base, config=tiny_pretrain)
    monkeypatch.setitem(stages.STAGES, "base", dataclasses.replace(stages.STAGES["base"],
                                                                   build=lambda out, config=None, progress=True: tiny(out)))
    monkeypatch.setattr(sft, "SFTConfig", functools.partial(sft.SFTConfig, **{**TINY_SFT.__dict__, "epochs": 1}))
    path = stages.ensure_stage("sft")
    out = capsys.readouterr().out  # what a stage needs is installed (or built) first
    assert out.index("Installing the embedded 'base' model") < out.index("'sft' model is not built")
    assert artifacts.is_ready("base") and artifacts.is_ready("sft")
    assert artifacts.read_metadata(path)["base"] == str(artifacts.stage_dir("base"))


# ----------------------------------------------------------------------------------------------
# Models without the kit's chat template
# ----------------------------------------------------------------------------------------------


def bare_tokenizer(world):
    """A byte-level BPE tokenizer with an EOS token and no chat template, like gpt2's."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(world.corpus(200), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS)


def test_a_tokenizer_without_a_template_gets_the_kits_and_trains(world, capsys):
    tokenizer = bare_tokenizer(world)
    model = new_gpt(len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=128,
                    eos_token_id=tokenizer.eos_token_id)
    size = len(tokenizer)
    sft.prepare_chat_template(model, tokenizer)
    assert "using the kit's, with 4 new turn tokens" in capsys.readouterr().out
    assert len(tokenizer) == size + 4 == model.get_input_embeddings().weight.shape[0]
    assert end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids(END)
    mask = sft.loss_mask(tokenizer, CONVERSATION)
    assert mask.sum() == sum(len(encode(tokenizer, m["content"])) + 1 for m in CONVERSATION[2::2])
    sft.prepare_chat_template(model, tokenizer)  # a second call changes nothing
    assert len(tokenizer) == size + 4 and capsys.readouterr().out == ""
    config = sft.SFTConfig(**{**TINY_SFT.__dict__, "n_conversations": 16, "epochs": 1, "max_length": 128})
    history = sft.train_sft(model, tokenizer, sft.demonstrations_for(world, config), config, progress=False)
    assert math.isfinite(history[-1]["loss/train"])


def test_a_template_trl_cannot_patch_is_replaced(world, capsys):
    tokenizer = bare_tokenizer(world)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    model = new_gpt(len(tokenizer), n_layer=1, n_embd=32, n_head=2, eos_token_id=tokenizer.eos_token_id)
    sft.prepare_chat_template(model, tokenizer)
    assert tokenizer.chat_template == CHAT_TEMPLATE


# ----------------------------------------------------------------------------------------------
# Exercise checks (rlhf_kit.checks, lesson 3)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["loss_mask", "sft_loss", "format_chat"])
def test_exercise_checks_pass_the_kit_and_name_each_mistake(name, capsys):
    from rlhf_kit import checks

    exercise = checks.EXERCISES[name]
    exercise.check(exercise.reference_function())
    assert capsys.readouterr().out.startswith(f"✓ {name} matches the reference")
    for mistake in exercise.mistakes:
        for wrong in mistake.implementations:
            with pytest.raises(checks.CheckFailed) as info:
                exercise.check(wrong)
            assert str(info.value) == mistake.message


def test_loss_mask_check_on_the_notebooks_tokenizer(tokenizer, capsys):
    from rlhf_kit import checks

    checks.check_loss_mask(sft.loss_mask, tokenizer)
    assert capsys.readouterr().out.startswith("✓ loss_mask matches")

    def off_by_one(tokenizer, messages):
        return torch.roll(sft.loss_mask(tokenizer, messages), 1)

    with pytest.raises(checks.CheckFailed, match=r"loss_mask returned 1 at index \d+ on random input 1 of 20 "
                                                r"\(tokenizer=tokenizer, messages=\["):
        checks.check_loss_mask(off_by_one, tokenizer)


def test_format_chat_check_shows_where_the_text_differs():
    from rlhf_kit import checks

    def spaced(messages, add_generation_prompt=False):
        text = "".join(f"<|{m['role']}|> {m['content']}<|end|>" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")

    with pytest.raises(checks.CheckFailed, match="format_chat differs from the tokenizer's template at "
                                                 "character 8 on random input 1"):
        checks.check_format_chat(spaced)


# ----------------------------------------------------------------------------------------------
# Pretraining text mixed into SFT (SFTConfig.pretrain_mix)
# ----------------------------------------------------------------------------------------------


def internet_loss(model, stream, n_windows=16, block=64):
    """The next-token loss of ``model`` on fixed windows of the world's internet."""
    ids = pretrain.random_windows(stream, n_windows, block, torch.Generator().manual_seed(99))
    with torch.no_grad():
        return pretrain.next_token_loss(model(input_ids=ids).logits, ids).item()


def test_pretrain_mix_keeps_the_internet_and_logs_both_losses(tiny_base_dir, world):
    tokenizer = load_tokenizer(tiny_base_dir)
    stream = sft.pretraining_text(world, tokenizer, n_documents=400)
    assert stream.dim() == 1 and stream[-1].item() == tokenizer.convert_tokens_to_ids(EOS)
    base_loss = internet_loss(load_model(tiny_base_dir, device="cpu"), stream)
    config = sft.SFTConfig(**{**TINY_SFT.__dict__, "epochs": 4, "lr": 3e-3})
    plain, plain_history = run_tiny(tiny_base_dir, world, config)
    mixed_config = sft.SFTConfig(**{**config.__dict__, "pretrain_mix": 1.0, "pretrain_batch": 8})
    mixed, history = run_tiny(tiny_base_dir, world, mixed_config, pretrain_text=stream)
    # Plain SFT forgets part of the internet; the mixed run forgets less.
    assert internet_loss(plain, stream) > base_loss + 0.1
    assert internet_loss(mixed, stream) < internet_loss(plain, stream) - 0.1
    logged = [h for h in history if "loss/train" in h]
    assert all("loss/pretrain" in h and math.isfinite(h["loss/pretrain"]) for h in logged)
    assert all("loss/pretrain" not in h for h in plain_history)
    # "loss/train" stays the demonstrations' own loss: at step 1 both runs have the same weights.
    assert logged[0]["loss/train"] == pytest.approx(plain_history[0]["loss/train"], abs=1e-5)
    # The same seed gives the same windows and the same run.
    again, history2 = run_tiny(tiny_base_dir, world, mixed_config, pretrain_text=stream)
    assert [h["loss/pretrain"] for h in history2 if "loss/train" in h] == [h["loss/pretrain"] for h in logged]
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in mixed.state_dict().items())


def test_pretrain_mix_without_text_is_refused_in_one_sentence(tiny_base_dir, world):
    model, tokenizer = load_model(tiny_base_dir, device="cpu"), load_tokenizer(tiny_base_dir)
    config = sft.SFTConfig(**{**TINY_SFT.__dict__, "pretrain_mix": 0.5})
    with pytest.raises(ValueError, match="no pretraining text was given: pass pretrain_text="):
        sft.train_sft(model, tokenizer, sft.demonstrations_for(world, config), config, progress=False)
    assert "forward" not in model.__dict__


def test_build_sft_mixes_the_base_models_own_internet(tiny_base_dir, tmp_path):
    config = sft.SFTConfig(**{**TINY_SFT.__dict__, "epochs": 1, "pretrain_mix": 0.5})
    metadata = sft.build_sft(tmp_path, config, base=str(tiny_base_dir), progress=False)
    assert metadata["config"]["pretrain_mix"] == 0.5
    assert all(math.isfinite(h["loss/pretrain"]) for h in metadata["history"] if "loss/train" in h)
