"""Lesson 7's chat and blind comparison in a real JupyterLab: typing, Enter, clicks, the store.

The notebook opened in headless Chromium runs the lesson's own set-up cell and its two widget
cells (tagged ``chat-widget`` and ``comparison-widget``), read from ``course/07_lets_chat.ipynb``.
Instead of the lesson's seven models the test gives the chat two (the embedded base and SFT
stages), and the comparison two pairs of its own. It sends a message with the Send button and
one with Enter, reads the bubbles back, sends an empty message (its error must appear, nothing
added), clears, then judges a pair blind and reads the verdict and the order it was shown in
back from the SQLite file, from outside the kernel. It also checks, on a screenshot's page, that no
label of the chat's controls is cut off.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from rlhf_kit.feedback import RankingStore
from rlhf_kit.runtime import artifacts_home

LESSON = Path(__file__).resolve().parents[2] / "course" / "07_lets_chat.ipynb"

MODELS_CELL = '''\
folders = {stage: ensure_stage(stage) for stage in ("base", "sft")}
tokenizer = load_tokenizer(folders["sft"])
models = {"base": load_model(folders["base"]), "SFT": load_model(folders["sft"])}'''

PAIRS_CELL = '''\
pairs = [  # in the lesson: one SFT and one PPO reply to each held-out question
    feedback.ComparisonItem("Where does Alice live?", ("Alice lives in Brookfield.", "Nobody cares."),
                            ("sft", "ppo")),
    feedback.ComparisonItem("What is Bruno's job?", ("Bruno works as a baker.", "Why do you ask?"),
                            ("sft", "ppo")),
]'''


def lesson_cells() -> dict[str, str]:
    cells = nbformat.read(LESSON, as_version=4).cells
    found = {"setup": next(c.source for c in cells if c.get("id") == "setup")}
    for tag in ("chat-widget", "comparison-widget"):
        [found[tag]] = [c.source for c in cells if tag in c.metadata.get("tags", [])]
    assert "ChatWidget(" in found["chat-widget"]
    assert "ComparisonWidget(" in found["comparison-widget"] and "default_store_path(7)" in found["comparison-widget"]
    return found


@pytest.mark.browser
def test_chat_and_blind_comparison_in_the_browser(lab):
    from playwright.sync_api import expect

    cells = lesson_cells()
    home = lab.folder / "artifacts"
    # The stages come from this test run's artifacts folder (built already); the store goes to `home`.
    stages = f"import os\nos.environ['RLHF_KIT_HOME'] = {str(artifacts_home())!r}"
    isolate = f"os.environ['RLHF_KIT_HOME'] = {str(home)!r}"
    notebook = lab.write_notebook("lesson7.ipynb", [stages, cells["setup"], MODELS_CELL, cells["chat-widget"],
                                                    isolate, PAIRS_CELL, cells["comparison-widget"]])
    page = lab.open(notebook)
    lab.run_all(page)

    chat = page.locator(".rlhf-chat")
    expect(chat).to_be_visible()
    # Every label of the chat (model, temperature, top-p, reply tokens) is shown whole: none is cut
    # off by the width ipywidgets gives a description. A screenshot is kept to look at.
    chat.screenshot(path=str(lab.folder / "chat-widget.png"))
    labels = chat.locator(".widget-label").evaluate_all(
        "labels => labels.map(l => [l.textContent, l.scrollWidth, l.clientWidth])")
    shown = [text for text, _, _ in labels]
    assert {"Model", "Temperature", "Top-p", "Reply tokens"} <= set(shown), shown
    cut = [(text, scroll, client) for text, scroll, client in labels if text and scroll > client]
    assert not cut, f"labels cut off (text, full width, shown width): {cut}"
    expect(chat.locator(".rlhf-chat-history")).to_contain_text("No messages yet.")
    text_box = chat.locator(".rlhf-chat-input input")
    text_box.fill("Where does Pavel live?")
    chat.locator(".rlhf-chat-send").click()
    history = chat.locator(".rlhf-chat-history")
    expect(history).to_contain_text("You")
    expect(history).to_contain_text("Where does Pavel live?")
    expect(history).to_contain_text("SFT")
    expect(text_box).to_have_value("")
    text_box.fill("And what is his job?")
    text_box.press("Enter")
    expect(history).to_contain_text("And what is his job?")

    chat.locator(".rlhf-chat-send").click()  # nothing typed
    expect(chat.locator(".rlhf-chat-message")).to_have_text(
        "Type a message first: an empty one gives the model nothing to answer.")
    chat.locator(".rlhf-chat-clear").click()
    expect(history).to_contain_text("No messages yet.")

    comparison = page.locator(".rlhf-comparison")
    expect(comparison.locator(".rlhf-progress")).to_contain_text("Compared 0 of 2 prompts")
    expect(comparison.locator(".rlhf-prompt")).to_contain_text("Where does Alice live?")
    comparison.locator(".rlhf-choose-a").click()
    expect(comparison.locator(".rlhf-message")).to_have_text("Saved.")
    expect(comparison.locator(".rlhf-progress")).to_contain_text("Compared 1 of 2 prompts")

    with RankingStore(home / "feedback" / "lesson-7.sqlite") as store:  # from outside the kernel
        [record] = store.comparisons("you")
    assert record.prompt == "Where does Alice live?" and record.models == ("sft", "ppo")
    assert record.winner == record.shown_order[0]  # "A" is the completion shown first
    assert sorted(record.shown_order) == [0, 1] and record.labeler_kind == "person"
