"""The ranking widget in a real JupyterLab: clicks reach the store, errors reach the screen, a rerun
resumes, "Done" fills in only what the learner left, and every label can be read.

The notebook opened in headless Chromium runs the lesson's own cells, read from
``course/04_human_feedback.ipynb``: its set-up cell, its stand-in cell (the simulated labeler) and
its widget cell (tagged ``ranking-widget``), which opens lesson 4's store in the artifacts folder
and shows the widget. The test puts that folder in its own directory and, instead of sampling the
SFT model, gives the widget two prompts of lesson 3's writers. At the width of a laptop's notebook
it takes a screenshot of the widget and checks that no label or button is cut off. It submits an
incomplete ranking (its error must appear in the widget, and nothing may be stored), then ranks by
clicking, with a tie, submits, and reads the ranking back from the SQLite file, from outside the
kernel. Running the cells again must resume on the next prompt and say how many are done; "Done"
must add the simulated labeler's ranking of the one prompt left, and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from rlhf_kit import behaviours
from rlhf_kit.behaviours import BehaviourWorld
from rlhf_kit.feedback import RankingStore

LESSON = Path(__file__).resolve().parents[2] / "course" / "04_human_feedback.ipynb"
WIDGET_TAG = "ranking-widget"
NOTEBOOK_WIDTH = 1024  # a laptop's browser window: the notebook is narrower than the tests' default

ITEMS_CELL = '''\
config = reward.RewardConfig()
items = behaviours.writer_items(world)[:2]  # in the lesson: the SFT model's answers to eight prompts'''

# Every label, button and line of text of the widget, with how much of it is hidden.
CUT_OFF = """(widget) => [...widget.querySelectorAll(
    "button, .widget-label, .widget-html-content, .widget-html-content > div")]
  .filter((e) => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
  .map((e) => `${e.className} "${e.textContent.trim().slice(0, 40)}": ${e.scrollWidth} > ${e.clientWidth}`)"""


def lesson_cells() -> tuple[str, str, str]:
    """The lesson's set-up cell, stand-in cell and widget cell (the one tagged ``ranking-widget``)."""
    cells = nbformat.read(LESSON, as_version=4).cells
    setup = next(c.source for c in cells if c.get("id") == "setup")
    stand_in = next(c.source for c in cells if c.get("id") == "stand-in")
    [widget] = [c.source for c in cells if WIDGET_TAG in c.metadata.get("tags", [])]
    assert "RankingWidget(" in widget and "default_store_path(4)" in widget and "fill_in=stand_in" in widget
    return setup, stand_in, widget


@pytest.mark.browser
def test_ranking_is_clicked_submitted_stored_resumed_and_filled_in(lab, tmp_path):
    from playwright.sync_api import expect

    first, second = behaviours.writer_items(BehaviourWorld(seed=0))[:2]
    setup, stand_in, widget_cell = lesson_cells()
    home = lab.folder / "artifacts"  # the kernel's artifacts folder: the store lands in it
    isolate = f"import os\nos.environ['RLHF_KIT_HOME'] = {str(home)!r}"
    page = lab.open(lab.write_notebook("ranking.ipynb", [isolate, setup, ITEMS_CELL, stand_in, widget_cell]))
    lab.run_all(page)
    widget = page.locator(".rlhf-ranking")
    expect(widget).to_be_visible()
    expect(widget.locator(".rlhf-progress")).to_contain_text("Ranked 0 of 2 prompts · 0 skipped")
    expect(widget.locator(".rlhf-help")).to_contain_text("then press Done")
    expect(widget.locator(".rlhf-prompt")).to_contain_text(first.prompt)
    expect(widget.locator(".rlhf-pick")).to_have_count(4)
    store_path = home / "feedback" / "lesson-4.sqlite"
    assert store_path.exists()  # created by the widget cell, before anything is ranked

    # Readable at a laptop's width: a screenshot, no label or button cut off, nothing wider than the cell.
    page.set_viewport_size({"width": NOTEBOOK_WIDTH, "height": 900})
    widget.scroll_into_view_if_needed()
    page.wait_for_timeout(300)  # let the layout settle at the new width
    shot = tmp_path / "ranking-widget.png"
    widget.screenshot(path=shot)
    print(f"screenshot of the ranking widget at {NOTEBOOK_WIDTH} px: {shot}")
    assert widget.evaluate(CUT_OFF) == [], f"cut off (screenshot {shot})"
    box, cell = widget.bounding_box(), page.locator(".jp-OutputArea-output").last.bounding_box()
    assert box["x"] + box["width"] <= cell["x"] + cell["width"] + 1, f"wider than its cell (screenshot {shot})"
    for button in ("tie", "undo", "reset", "skip", "submit", "done"):
        expect(widget.locator(f".rlhf-{button}")).to_be_visible()

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
    expect(widget.locator(".rlhf-prompt")).to_contain_text(second.prompt)

    with RankingStore(store_path) as store:  # read back from outside the kernel
        [record] = store.rankings()
    order = record.shown_order
    assert record.prompt == first.prompt and record.model == "writers"
    assert record.ranking == tuple(order[p] for p in clicks)
    assert record.ties == (tuple(sorted((order[3], order[1]))),)
    assert (record.labeler, record.labeler_kind) == ("you", "person")

    # Running the cells again resumes on the prompt that is left, says so, and carries no clicks over.
    widget.locator(".rlhf-pick-0").click()
    expect(widget.locator(".rlhf-pick-0")).to_have_text("#1")
    lab.run_all(page)
    expect(page.locator(".jp-InputPrompt").first).to_contain_text("[6]")  # five cells, run twice
    widget = page.locator(".rlhf-ranking")
    expect(widget.locator(".rlhf-pick-0")).to_have_text("rank")
    expect(widget.locator(".rlhf-progress")).to_contain_text("Ranked 1 of 2 prompts")
    expect(widget.locator(".rlhf-message")).to_contain_text("Welcome back: 1 of 2 ranked")
    expect(widget.locator(".rlhf-prompt")).to_contain_text(second.prompt)
    with RankingStore(store_path) as store:
        assert len(store) == 1

    # Done: the simulated labeler ranks the one prompt left, once; the learner's ranking is unchanged.
    widget.locator(".rlhf-done").click()
    expect(widget.locator(".rlhf-message")).to_contain_text("Done: you ranked 1 of 2 prompts")
    expect(widget.locator(".rlhf-progress")).to_contain_text("1 filled in by simulated-0")
    widget.locator(".rlhf-done").click()
    expect(widget.locator(".rlhf-message")).to_contain_text("(0 new)")
    with RankingStore(store_path) as store:
        stored = store.rankings()
    assert stored[0] == record and len(stored) == 2
    assert (stored[1].prompt, stored[1].labeler_kind) == (second.prompt, "simulated")
