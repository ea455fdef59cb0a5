"""The ranking widget in a real JupyterLab: clicks reach the store, errors reach the screen.

The notebook opened in headless Chromium runs the lesson's own cells, read from
``course/04_human_feedback.ipynb``: its set-up cell, then its widget cell (tagged
``ranking-widget``), which opens the store in the artifacts folder and shows the widget. The test
puts that folder in its own directory and, instead of sampling the SFT model, gives the widget
two prompts of its own. It submits an incomplete ranking (its error must appear in the widget, and
nothing may be stored), then ranks by clicking, with a tie, submits, and reads the ranking back
from the SQLite file, from outside the kernel. Running the cells again must resume on the next
prompt.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from rlhf_kit.feedback import RankingStore

LESSON = Path(__file__).resolve().parents[2] / "course" / "04_human_feedback.ipynb"
WIDGET_TAG = "ranking-widget"

ITEMS_CELL = '''\
items = [  # in the lesson: the SFT model's answers to eight prompts
    feedback.Item("Where does Alice live?", ("Alice lives in Brookfield.", "I don't know.",
                                             "Nobody cares, loser.", "Alice lives in Oakridge."), "test"),
    feedback.Item("What is Bruno's job?", ("Bruno works as a baker.", "Why do you ask?"), "test"),
]'''


def lesson_cells() -> tuple[str, str]:
    """The lesson's set-up cell and its widget cell (the one tagged ``ranking-widget``)."""
    cells = nbformat.read(LESSON, as_version=4).cells
    setup = next(c.source for c in cells if c.get("id") == "setup")
    [widget] = [c.source for c in cells if WIDGET_TAG in c.metadata.get("tags", [])]
    assert "RankingWidget(" in widget and "default_store_path()" in widget
    return setup, widget


@pytest.mark.browser
def test_ranking_is_clicked_submitted_and_stored(lab):
    from playwright.sync_api import expect

    setup, widget_cell = lesson_cells()
    home = lab.folder / "artifacts"  # the kernel's artifacts folder: the store lands in it
    isolate = f"import os\nos.environ['RLHF_KIT_HOME'] = {str(home)!r}"
    page = lab.open(lab.write_notebook("ranking.ipynb", [isolate, setup, ITEMS_CELL, widget_cell]))
    lab.run_all(page)
    widget = page.locator(".rlhf-ranking")
    expect(widget).to_be_visible()
    expect(widget.locator(".rlhf-progress")).to_contain_text("Ranked 0 of 2 prompts · 0 skipped")
    expect(widget.locator(".rlhf-prompt")).to_contain_text("Where does Alice live?")
    expect(widget.locator(".rlhf-pick")).to_have_count(4)
    store_path = home / "feedback" / "rankings.sqlite"
    assert store_path.exists()  # created by the widget cell, before anything is ranked

    # An invalid submission: one completion ranked out of four.
    widget.locator(".rlhf-pick-2").click()
    expect(widget.locator(".rlhf-pick-2")).to_have_text("#1")
    widget.locator(".rlhf-submit").click()
    expect(widget.locator(".rlhf-message")).to_have_text(
        "3 of 4 completions are not ranked yet; click every completion from best to worst, "
        "then submit.")
    with RankingStore(store_path) as store:
        assert len(store) == 0

    # Rank the rest, the last one tied with the one before it, and submit.
    clicks = [2, 0, 3, 1]  # positions on screen, best first
    widget.locator(".rlhf-pick-0").click()
    expect(widget.locator(".rlhf-pick-0")).to_have_text("#2")
    widget.locator(".rlhf-pick-3").click()
    widget.locator(".rlhf-tie").click()
    widget.locator(".rlhf-pick-1").click()
    expect(widget.locator(".rlhf-pick-1")).to_have_text("#3=")
    widget.locator(".rlhf-submit").click()
    expect(widget.locator(".rlhf-message")).to_have_text("Saved.")
    expect(widget.locator(".rlhf-progress")).to_contain_text("Ranked 1 of 2 prompts")
    expect(widget.locator(".rlhf-prompt")).to_contain_text("What is Bruno's job?")

    with RankingStore(store_path) as store:  # read back from outside the kernel
        [record] = store.rankings()
    order = record.shown_order
    assert record.prompt == "Where does Alice live?" and record.model == "test"
    assert record.ranking == tuple(order[p] for p in clicks)
    assert record.ties == (tuple(sorted((order[3], order[1]))),)
    assert (record.labeler, record.labeler_kind) == ("you", "person")

    # Running the cell again resumes on the prompt that is left, with no clicks carried over.
    widget.locator(".rlhf-pick-0").click()
    expect(widget.locator(".rlhf-pick-0")).to_have_text("#1")
    lab.run_all(page)
    expect(page.locator(".jp-InputPrompt").first).to_contain_text("[5]")  # four cells, run twice
    widget = page.locator(".rlhf-ranking")
    expect(widget.locator(".rlhf-pick-0")).to_have_text("rank")
    expect(widget.locator(".rlhf-progress")).to_contain_text("Ranked 1 of 2 prompts")
    expect(widget.locator(".rlhf-prompt")).to_contain_text("What is Bruno's job?")
    with RankingStore(store_path) as store:
        assert len(store) == 1
