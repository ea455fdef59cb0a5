"""The chat of lesson 7: history kept, chat template applied, context respected, errors lose nothing."""

from __future__ import annotations

import pytest

from rlhf_kit.stages import ensure_stage
from rlhf_kit.chat import Chat, ChatModel, MessageTooLong, fit_context, side_by_side
from rlhf_kit.evaluate import CHAT, PLAIN
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.widgets import ChatWidget


@pytest.fixture(scope="module")
def models() -> dict[str, ChatModel]:
    out = {}
    for name, stage, style in (("base", "base", PLAIN), ("SFT", "sft", CHAT)):
        folder = ensure_stage(stage)
        out[name] = ChatModel(name, load_model(folder), load_tokenizer(folder), style)
    return out


def plain(history: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in history]


def test_history_is_kept_and_the_next_turn_reads_it_through_the_chat_template(models):
    chat = Chat(models, max_new_tokens=16)
    first = chat.ask("Where does Pavel live?", "SFT")
    second = chat.ask("And what is his job?", "SFT")
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in chat.history[::2]] == ["Where does Pavel live?", "And what is his job?"]
    assert chat.history[1] == {"role": "assistant", "content": first.text, "model": "SFT"}
    tokenizer = models["SFT"].tokenizer
    expected = tokenizer.apply_chat_template(plain(chat.history[:3]), tokenize=False,
                                             add_generation_prompt=True)
    assert second.prompt == expected  # the whole history, through the template, ending in the assistant's tag
    assert second.prompt.count("<|user|>") == 2 and first.text in second.prompt
    assert second.prompt.endswith("<|assistant|>") and second.left_out == 0
    assert second.prompt_tokens == len(tokenizer(expected, add_special_tokens=False).input_ids)


def test_the_base_model_reads_a_plain_transcript_and_replies_with_one_line(models):
    chat = Chat(models, max_new_tokens=16)
    reply = chat.ask("Where does Pavel live?", "base")
    assert reply.prompt == models["base"].tokenizer.bos_token + "Where does Pavel live?\n"
    assert "\n" not in reply.text and "<|user|>" not in reply.prompt
    follow_up = chat.ask("Why?", "base")
    assert follow_up.prompt.endswith(f"Where does Pavel live?\n{reply.text}\nWhy?\n")


def test_switching_models_keeps_the_history_and_names_each_writer(models):
    chat = Chat(models, max_new_tokens=8)
    chat.ask("Where does Pavel live?", "base")
    reply = chat.ask("Where does Pavel live?", "SFT")
    assert [m.get("model") for m in chat.history] == [None, "base", None, "SFT"]
    assert reply.prompt.startswith("<|user|>Where does Pavel live?<|end|><|assistant|>" + chat.history[1]["content"])


def test_replays_are_identical_and_the_temperature_is_used(models):
    def conversation(temperature):
        chat = Chat(models, temperature=temperature, max_new_tokens=12, seed=3)
        return [chat.ask(q, "SFT").text for q in ("Where does Pavel live?", "What is his job?")]

    assert conversation(0.7) == conversation(0.7)
    def replies(temperature):
        return {Chat(models, temperature=temperature, max_new_tokens=12, seed=s).ask("Hello", "SFT").text
                for s in range(6)}

    assert len(replies(0.0)) == 1  # temperature 0 is greedy: every seed gives the same reply
    assert len(replies(1.5)) > 1  # hot sampling: the seeds differ, so the setting reaches the sampler


def test_oldest_exchanges_are_left_out_when_the_context_is_full(models):
    sft = models["SFT"]
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"Question number {i} about the town of Kingsport?"},
                    {"role": "assistant", "content": f"Answer number {i}: Kingsport is lovely."}]
    messages = history + [{"role": "user", "content": "And now?"}]
    room = 40
    kept, left_out = fit_context(sft, messages, room)
    assert left_out > 0 and left_out % 2 == 0 and kept == messages[left_out:]
    assert kept[0]["role"] == "user" and kept[-1]["content"] == "And now?"
    assert sft.n_tokens(sft.render(kept)) + room <= sft.context  # it fits ...
    longer = messages[left_out - 2:]
    assert sft.n_tokens(sft.render(longer)) + room > sft.context  # ... and one more exchange would not

    chat = Chat(models, max_new_tokens=room, history=history)
    reply = chat.ask("And now?", "SFT")
    assert reply.left_out == left_out and reply.prompt == sft.render(kept)
    assert len(chat.history) == len(messages) + 1  # what the model no longer reads stays on screen


def test_a_message_that_cannot_fit_is_refused_and_nothing_is_lost(models):
    chat = Chat(models, max_new_tokens=16)
    chat.ask("Where does Pavel live?", "SFT")
    before = list(chat.history)
    with pytest.raises(MessageTooLong, match=r"takes \d+ tokens and SFT reads at most 128, 16 of which"):
        chat.ask("Where does Pavel live? " * 30, "SFT")
    with pytest.raises(ValueError, match="Type a message first"):
        chat.ask("   ", "SFT")
    with pytest.raises(KeyError, match="the models are: base, SFT"):
        chat.ask("Hello", "PPO")
    assert chat.history == before


def test_a_chat_model_needs_a_chat_template(models):
    tokenizer = load_tokenizer(ensure_stage("base"))
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template; give this model style='plain'"):
        ChatModel("raw", models["base"].model, tokenizer, CHAT)


def test_side_by_side_asks_every_model_afresh(models):
    rows = side_by_side(models, "Where does Pavel live?", samples=2, max_new_tokens=12)
    assert [r["model"] for r in rows] == ["base", "base", "SFT", "SFT"]
    alone = Chat({"SFT": models["SFT"]}, temperature=0.7, max_new_tokens=12, seed=1)
    assert rows[3]["reply"] == alone.ask("Where does Pavel live?", "SFT").text  # sample 2 is seed 1


def test_the_widget_adds_turns_and_shows_errors_without_losing_the_typed_text(models):
    widget = ChatWidget(Chat(models, max_new_tokens=8), model="SFT")
    assert "No messages yet" in widget._history.value
    assert widget.send("Where does Pavel live?") is True
    assert len(widget.chat.history) == 2 and widget._input.value == ""
    assert "Where does Pavel live?" in widget._history.value and ">SFT<" in widget._history.value
    widget._input.value = "a draft"
    widget._picker.value = "base"
    widget._temperature.value = 1.2
    widget._length.value = 12
    assert widget.send("") is False
    assert widget.message == "Type a message first: an empty one gives the model nothing to answer."
    assert widget._input.value == "a draft" and len(widget.chat.history) == 2
    assert widget.send("Why?") is True
    assert widget.chat.history[-1]["model"] == "base"
    assert (widget.chat.temperature, widget.chat.max_new_tokens) == (1.2, 12)  # the sliders are used
    assert repr(widget) == "ChatWidget(models=['base', 'SFT'], turns=4)"
    widget.clear()
    assert widget.chat.history == [] and "No messages yet" in widget._history.value


def test_the_widget_says_when_the_model_no_longer_reads_the_first_turns(models):
    widget = ChatWidget(Chat(models, max_new_tokens=8), model="SFT")
    widget._length.value = 64
    for _ in range(4):  # 64 of 128 tokens kept for the reply: two exchanges fill the rest
        assert widget.send("Where does Pavel live, and what is his job, and his pet?")
        if widget.message:
            break
    assert widget.message.startswith("SFT reads at most 128 tokens, so it no longer sees the first ")
