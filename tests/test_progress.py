"""A progress bar in a saved notebook shows where the run ended, not 0 %."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from rlhf_kit.runtime import progress_bar


def test_a_notebook_keeps_the_bars_last_line_instead_of_the_widget():
    cell = ("from rlhf_kit.runtime import progress_bar\n"
            "for _ in progress_bar(range(5), desc='demo'):\n"
            "    pass\n"
            "bar = progress_bar(total=3, desc='manual')\n"
            "bar.update(2)\n"
            "bar.close()")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data", "display_data"]
    assert [set(o.data) for o in outputs] == [{"text/plain"}, {"text/plain"}]  # no widget left behind
    assert outputs[0].data["text/plain"].startswith("demo: 100%|")
    assert " 5/5 " in outputs[0].data["text/plain"]
    assert outputs[1].data["text/plain"].startswith("manual:  67%|") and " 2/3 " in outputs[1].data["text/plain"]


def test_outside_a_notebook_it_is_tqdms_bar(capsys):
    assert list(progress_bar(range(3), desc="plain")) == [0, 1, 2]
    assert "plain: 100%" in capsys.readouterr().err
    assert list(progress_bar(range(2), disable=True)) == [0, 1]
