"""Every figure of the course is readable at a laptop's width, and every widget says how to show it.

What a learner sees first is the notebook as it was saved: no kernel has run yet. JupyterLab draws
a plotly figure from the JSON stored in the output (the ``jupyterlab-plotly`` extension, installed
with plotly), and a ```` ```mermaid ```` block of a markdown cell as a picture. This test opens every
stored ``course/*.ipynb`` in one JupyterLab (one server, one browser context for the whole module)
in a 1280×800 window with the default layout (file browser open, so the notebook is about 950 px
wide), scrolls each figure into view, saves a screenshot of it under pytest's temporary folder
(its path is printed: run with ``-s`` or read the captured output), and checks:

* plotly figures (one test per stored plotly output): the figure fits the output area (no
  horizontal overflow of the output, and its SVG no wider than the output); every text element
  (subplot titles, i.e. annotations; figure and axis titles; legend items; tick labels) lies inside
  the figure and has a font of at least ``MIN_FONT_PX``; the labels (annotations, titles, legend
  items) do not overlap one another, judged from their bounding boxes in the DOM.
* mermaid diagrams: JupyterLab shows the SVG as an ``<img>`` scaled down to the cell's width; the
  labels' font size times that scale (the size a learner reads) is at least ``MIN_FONT_PX``.

Widgets need a kernel: a saved notebook shows a widget cell's output as text until the cell is
run (the widgets themselves are tested with a kernel in test_ranking_widget.py and
test_lesson7_widgets.py). So, for every widget cell of a course notebook, the markdown cell right
above it (no code cell in between) must tell the learner to run it: it must match ``RUN_THE_CELL``,
i.e. say "Run the cell to show the widget" (any case; "this cell", "the cell below", "to see",
"to display" and "to open" also do; "run the cell again" alone does not). A widget cell is a code cell whose stored output is a
widget that is not a progress bar, or whose source creates one of the widgets of
``rlhf_kit.widgets``. That check reads the notebooks only and needs no browser.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

COURSE = Path(__file__).resolve().parents[2] / "course"
NOTEBOOKS = sorted(COURSE.glob("[0-9][0-9]_*.ipynb"))
VIEWPORT = {"width": 1280, "height": 800}  # a typical laptop window
MIN_FONT_PX = 10.0
TIMEOUT_MS = 60_000  # opening a notebook: two busy shared cores can be slow
DRAW_TIMEOUT_MS = 20_000  # drawing one figure once it is in view
OVERLAP_PX = 1.0  # boxes sharing less than this along either axis only touch
PLOTLY = "application/vnd.plotly.v1+json"
WIDGET = "application/vnd.jupyter.widget-view+json"
PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's text: "PPO:  40%|████      | 16/40 [...]"
RUN_THE_CELL = re.compile(r"\brun (the|this) cell (below )?to (show|see|display|open)\b", re.IGNORECASE)
MERMAID = re.compile(r"^```mermaid\s*$", re.MULTILINE)

# Widgets whose missing "Run the cell" line the lesson owners have yet to add:
# {(notebook stem, cell id): reason}. Each is xfail(strict=True): adding the line makes it fail.
MISSING_RUN_LINE: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Figure:
    notebook: str  # file name, e.g. "02_learning_from_rewards.ipynb"
    cell_id: str
    kind: str  # "plotly" or "mermaid"
    nth: int  # the nth figure of this kind in the cell

    @property
    def name(self) -> str:
        return f"{self.notebook[:-len('.ipynb')]}-{self.cell_id}-{self.kind}{self.nth}"


def stored_figures() -> list[Figure]:
    figures = []
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                count = len(MERMAID.findall(cell.source))
                figures += [Figure(path.name, cell.id, "mermaid", k) for k in range(count)]
            elif cell.cell_type == "code":
                count = sum(PLOTLY in output.get("data", {}) for output in cell.get("outputs", []))
                figures += [Figure(path.name, cell.id, "plotly", k) for k in range(count)]
    return figures


def widget_classes() -> list[str]:
    import ipywidgets

    from rlhf_kit import widgets

    return sorted(name for name, value in vars(widgets).items()
                  if isinstance(value, type) and issubclass(value, ipywidgets.DOMWidget)
                  and value.__module__ == widgets.__name__ and not name.startswith("_"))


def is_widget_cell(cell, classes: list[str]) -> bool:
    if cell.cell_type != "code":
        return False
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if WIDGET in data and not PROGRESS_BAR.search(str(data.get("text/plain", ""))):
            return True
    return any(re.search(rf"\b{name}\(", cell.source) for name in classes)


def widget_cells() -> list:
    classes = widget_classes()
    params = []
    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        for index, cell in enumerate(cells):
            if is_widget_cell(cell, classes):
                key = (path.stem, cell.id)
                marks = ([pytest.mark.xfail(strict=True, reason=MISSING_RUN_LINE[key])]
                         if key in MISSING_RUN_LINE else [])
                params.append(pytest.param(path.name, index, id=f"{path.stem}-{cell.id}",
                                           marks=marks))
    return params


@pytest.mark.parametrize(("notebook", "index"), widget_cells())
def test_widget_cell_says_run_the_cell(notebook, index):
    cells = nbformat.read(COURSE / notebook, as_version=4).cells
    cell, above = cells[index], (cells[index - 1] if index > 0 else None)
    if above is None or above.cell_type != "markdown":
        pytest.fail(f"{notebook}: the widget cell {cell.id!r} (cell {index}) has no markdown cell "
                    "right above it to say 'Run the cell to show the widget'", pytrace=False)
    if not RUN_THE_CELL.search(above.source):
        pytest.fail(f"{notebook}: the markdown right above the widget cell {cell.id!r} (cell {index}) "
                    "does not say 'Run the cell to show the widget' (a saved notebook shows the "
                    "widget as text until the cell runs)", pytrace=False)


# --- the browser part ------------------------------------------------------------------------

# Measures a plotly figure: the element is the .jp-RenderedPlotly of the figure.
MEASURE_PLOTLY = """(fig) => {
  const output = fig.closest('.jp-OutputArea-output') || fig;
  const svg = fig.querySelector('svg.main-svg');
  const box = (e) => { const r = e.getBoundingClientRect();
                       return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; };
  const texts = (selector, kind) => Array.from(fig.querySelectorAll(selector))
      .filter((e) => e.textContent.trim() && e.getBoundingClientRect().width > 0)
      .map((e) => ({kind, text: e.textContent.trim().slice(0, 60), box: box(e),
                    font: parseFloat(getComputedStyle(e).fontSize)}));
  const overflow = [fig, output, output.parentElement].filter(Boolean)
      .filter((e) => e.scrollWidth > e.clientWidth + 1)
      .map((e) => `${e.className}: scrollWidth ${e.scrollWidth} > clientWidth ${e.clientWidth}`);
  return {
    output: box(output), svg: svg ? box(svg) : null, overflow,
    labels: [...texts('g.annotation text', 'annotation'), ...texts('text[class$="title"]', 'title'),
             ...texts('g.legend text.legendtext', 'legend item')],
    ticks: texts('g[class*="tick"] > text', 'tick label'),
  };
}"""

# Measures a mermaid diagram: the element is the <img> JupyterLab shows it as. The SVG is parsed
# from the image's data URL and laid out, hidden, beside it, to read the labels' computed font
# size (the diagram's own stylesheet sets it); the image's scale turns that into what is seen.
MEASURE_MERMAID = """(img) => {
  const text = decodeURIComponent(img.src.slice(img.src.indexOf(',') + 1));
  const svg = new DOMParser().parseFromString(text, 'image/svg+xml').documentElement;
  const viewBox = (svg.getAttribute('viewBox') || '').split(/[ ,]+/).map(Number);
  const holder = document.createElement('div');
  holder.style.cssText = 'position:absolute; left:-20000px; top:0; visibility:hidden';
  holder.appendChild(document.importNode(svg, true));
  document.body.appendChild(holder);
  const labels = [];
  for (const e of holder.querySelectorAll('text, foreignObject *')) {
    const own = Array.from(e.childNodes).filter((n) => n.nodeType === 3)
        .map((n) => n.textContent).join(' ').trim();
    if (own) labels.push({text: own.slice(0, 60), font: parseFloat(getComputedStyle(e).fontSize)});
  }
  holder.remove();
  const r = img.getBoundingClientRect();
  const cell = img.closest('.jp-Cell').getBoundingClientRect();
  return {width: r.width, right: r.right, cellRight: cell.right, viewBoxWidth: viewBox[2],
          labels};
}"""


def overlap(a: dict, b: dict) -> bool:
    dx = min(a["right"], b["right"]) - max(a["left"], b["left"])
    dy = min(a["bottom"], b["bottom"]) - max(a["top"], b["top"])
    return dx > OVERLAP_PX and dy > OVERLAP_PX


def inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack
            and inner["top"] >= outer["top"] - slack and inner["bottom"] <= outer["bottom"] + slack)


class CourseViewer:
    """One browser context at a laptop's size; shows one stored course notebook at a time."""

    def __init__(self, server, browser, shots: Path):
        self.server = server
        self.folder = server.root / "course-figures"
        self.folder.mkdir()
        for path in NOTEBOOKS:  # as committed: outputs stored, never run here
            shutil.copy(path, self.folder / path.name)
        self.shots = shots
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = None
        self.notebook = None
        self.cell_ids: list[str] = []

    def show(self, notebook: str):
        """The page showing ``notebook`` with all its cells attached (opened once per notebook)."""
        if self.notebook == notebook:
            return self.page
        if self.page is not None:
            self.page.close()
            self.server.shutdown_kernels()  # JupyterLab starts one per notebook it opens
        from playwright.sync_api import expect

        self.cell_ids = [c.id for c in nbformat.read(self.folder / notebook, as_version=4).cells]
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.goto(f"{self.server.url}/lab/tree/course-figures/{notebook}?reset")
        expect(self.page.locator(".jp-Notebook .jp-Cell")).to_have_count(len(self.cell_ids), timeout=TIMEOUT_MS)
        self.notebook = notebook
        return self.page

    def cell(self, figure: Figure):
        page = self.show(figure.notebook)
        assert figure.cell_id in self.cell_ids, f"{figure.notebook} has no cell {figure.cell_id!r} now"
        index = self.cell_ids.index(figure.cell_id)
        return page.locator(f'.jp-Notebook .jp-Cell[data-windowed-list-index="{index}"]')

    def screenshot(self, figure: Figure, element) -> Path:
        path = self.shots / f"{figure.name}.png"
        element.screenshot(path=path)
        print(f"screenshot of {figure.notebook} cell {figure.cell_id}: {path}")
        return path

    def close(self):
        self.context.close()
        self.server.shutdown_kernels()


@pytest.fixture(scope="module")
def viewer(chromium, lab_server, tmp_path_factory):
    viewer = CourseViewer(lab_server, chromium, tmp_path_factory.mktemp("figures"))
    yield viewer
    viewer.close()


def settled(page, target) -> None:
    """Wait until ``target`` is drawn and its size stops changing."""
    target.wait_for(state="visible")
    last = None
    for _ in range(50):
        size = target.evaluate("(e) => { const r = e.getBoundingClientRect(); return [r.width, r.height]; }")
        if size == last:
            return
        last = size
        page.wait_for_timeout(100)


def drawn(viewer, figure: Figure, selector: str):
    """Scroll the figure's cell into view and return ``selector``'s nth match once it is drawn;
    fail with what the cell shows instead when it is not drawn in time."""
    cell = viewer.cell(figure)
    cell.scroll_into_view_if_needed()
    target = cell.locator(selector).nth(figure.nth)
    try:
        target.scroll_into_view_if_needed(timeout=DRAW_TIMEOUT_MS)
        settled(viewer.page, target)
    except Exception as error:
        shown = cell.evaluate("(c) => Array.from(c.querySelectorAll('.jp-OutputArea-output, "
                              ".jp-RenderedMarkdown')).map((e) => e.className + ': ' "
                              "+ e.textContent.slice(0, 120))")
        path = viewer.shots / f"{figure.name}-not-drawn.png"
        viewer.page.screenshot(path=path)
        pytest.fail(f"{figure.name}: JupyterLab did not draw the stored {figure.kind} figure "
                    f"({selector} nth {figure.nth}) within {DRAW_TIMEOUT_MS / 1000:g} s; the cell "
                    f"shows {shown} (screenshot {path}); {type(error).__name__}", pytrace=False)
    return target


FIGURES = stored_figures()


@pytest.mark.browser
@pytest.mark.parametrize("figure", [f for f in FIGURES if f.kind == "plotly"], ids=lambda f: f.name)
def test_plotly_figure_is_readable(viewer, figure):
    # (a figure JupyterLab cannot draw, e.g. without the jupyterlab-plotly extension, shows as text)
    element = drawn(viewer, figure, ".jp-RenderedPlotly:has(svg.main-svg)")
    shot = viewer.screenshot(figure, element)
    m = element.evaluate(MEASURE_PLOTLY)
    where = f"{figure.name} (screenshot {shot})"
    problems = [f"horizontal overflow: {o}" for o in m["overflow"]]
    if m["svg"] is None or m["svg"]["right"] > m["output"]["right"] + 1:
        problems.append(f"the figure ({m['svg']}) is wider than its output area ({m['output']})")
    for t in m["labels"] + m["ticks"]:
        if t["font"] < MIN_FONT_PX:
            problems.append(f"{t['kind']} {t['text']!r}: font {t['font']:g} px < {MIN_FONT_PX:g} px")
        if m["svg"] is not None and not inside(t["box"], m["svg"]):
            problems.append(f"{t['kind']} {t['text']!r} is cut off: it lies outside the figure")
    labels = m["labels"]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if overlap(a["box"], b["box"]):
                problems.append(f"{a['kind']} {a['text']!r} overlaps {b['kind']} {b['text']!r}")
    assert not problems, f"{where}:\n  " + "\n  ".join(problems)


@pytest.mark.browser
@pytest.mark.parametrize("figure", [f for f in FIGURES if f.kind == "mermaid"], ids=lambda f: f.name)
def test_mermaid_diagram_is_readable(viewer, figure):
    image = drawn(viewer, figure, ".jp-RenderedMermaid img")
    shot = viewer.screenshot(figure, image)
    m = image.evaluate(MEASURE_MERMAID)
    assert m["labels"] and m["viewBoxWidth"], f"{figure.name}: no labels or viewBox in the SVG"
    scale = m["width"] / m["viewBoxWidth"]
    assert m["right"] <= m["cellRight"] + 1, f"{figure.name} (screenshot {shot}) is wider than its cell"
    seen = min(label["font"] * scale for label in m["labels"])
    smallest = min(m["labels"], key=lambda label: label["font"])
    assert seen >= MIN_FONT_PX, (
        f"{figure.name} (screenshot {shot}): the diagram is drawn {m['width']:.0f} px wide, "
        f"{scale:.2f} of its natural {m['viewBoxWidth']:.0f} px, so its labels read {seen:.1f} px "
        f"high (e.g. {smallest['text']!r}, {smallest['font']:g} px at full size) < {MIN_FONT_PX:g} "
        "px: draw it top to bottom (flowchart TD), split it, or shorten its labels")


def test_every_stored_figure_is_found():
    """The parametrisation above must see the course's figures (a sign the outputs are stored)."""
    assert sum(f.kind == "plotly" for f in FIGURES) >= 10
    assert any(f.kind == "mermaid" for f in FIGURES)
