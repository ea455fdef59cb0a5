"""Exercises: notebooks to fill in, made from the solved ones, and checked against them.

Each lesson has a solutions notebook, ``solutions/NN_topic_solutions.ipynb``, with the exercises
solved and every output stored. This module does three things with it:

1. **Generate** ``exercises/NN_topic_exercises.ipynb``: the same notebook with each solution
   replaced by ``raise NotImplementedError("<hint>")`` and every output cleared. The output is
   deterministic, byte for byte, so a test can tell when a committed exercise notebook is stale
   (``rlhf-kit exercises --check``).
2. **Check** a learner's notebook (``rlhf-kit check exercises/NN_topic_exercises.ipynb``): copy
   the solution's stored outputs into a temporary copy of it, cell by cell through the cell ids
   (generation keeps them), let nbval run it in a fresh kernel and compare, and report each
   exercise as *passes*, *fails* (with the check's one sentence or the output that differs) or
   *still to do* (a ``NotImplementedError`` was raised). Cells the learner added run too, but
   only the course's cells are judged. The copy runs in a temporary folder, so a lesson reads
   its files through the kit (absolute paths), never relative to the notebook.
3. Provide the small pytest plugin that records, for each cell nbval runs, the error it raised
   and the text it printed, so that the report can quote them.

How a solutions notebook marks its exercises
--------------------------------------------

An exercise is one code cell. Its first line names it, and the part the learner writes sits
between two marker lines::

    # Exercise 2: top-p filtering
    def top_p_filter(logits, p):
        ### BEGIN SOLUTION
        # Hint: sort the logits, most likely first, and keep a token while the probability
        #       mass ranked above it is below p.
        ...
        ### END SOLUTION

* ``# Exercise N: title`` must be the cell's first line; exercises are numbered 1, 2, 3... in
  notebook order. The number and title name the exercise in the checker's report.
* A cell may hold several ``### BEGIN SOLUTION`` / ``### END SOLUTION`` blocks; each becomes one
  ``raise NotImplementedError(...)`` at the indentation of its ``BEGIN`` line.
* The hint is the block's first line, ``# Hint: text``, continued on the comment lines that
  follow it whose text is indented by at least two spaces after the ``#``. Without a hint the
  message is ``Exercise N: write your solution here.`` A long message is wrapped into string
  pieces on consecutive lines, so the generated code stays within 100 columns.
* Everything else (markdown, setup cells, the check cell after each exercise) is copied as it
  is; only outputs and execution counts are cleared. Cell ids are kept: the checker relies on
  them, so solution notebooks must have them (nbformat 4.5, what JupyterLab 4 writes).

The cells of an exercise, for the report, run from the markdown cells just above its solution
cell to the cell before the next exercise; cells before the first exercise are the setup.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
TITLE = re.compile(r"^#\s*Exercise\s+(\d+)\s*:\s*(\S.*?)\s*$")
HINT = re.compile(r"^\s*#\s*Hint:\s*(\S.*?)\s*$")
HINT_CONTINUED = re.compile(r"^\s*#\s{2,}(\S.*?)\s*$")

LINE_WIDTH = 100  # generated lines stay within the course's line length

SOLUTIONS_SUFFIX = "_solutions.ipynb"
EXERCISES_SUFFIX = "_exercises.ipynb"


class ExerciseError(ValueError):
    """A notebook or a path the exercise tools cannot use; the message says what to do."""


def course_root() -> Path:
    """The course checkout this package was installed from (``pip install -e .``).

    It holds ``solutions/`` and ``exercises/``; an install from a wheel has neither, and the
    commands then ask for the paths explicitly.
    """
    return Path(__file__).resolve().parent.parent


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """A notebook from disk, or ``ExerciseError`` saying in one sentence why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ExerciseError(f"There is no notebook at {path}.")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as error:  # bad JSON, not a notebook, unreadable: all the same to a learner
        raise ExerciseError(f"{path} is not a readable Jupyter notebook "
                            f"({type(error).__name__}).") from None


# ----------------------------------------------------------------------------------------------
# 1. Finding the exercises of a solutions notebook
# ----------------------------------------------------------------------------------------------


@dataclass
class Exercise:
    """One exercise of a notebook: its number, title, and the id of its solution cell."""

    number: int
    title: str
    cell_id: str

    @property
    def label(self) -> str:
        return f"Exercise {self.number} ({self.title})"


def _has_marker(cell) -> bool:
    return any(line.strip() in (BEGIN, END) for line in cell.source.splitlines())


def find_exercises(nb: nbformat.NotebookNode, where: str = "the notebook") -> list[Exercise]:
    """The exercises of a solutions notebook, validated: titled, numbered 1, 2, 3..., with ids."""
    exercises = []
    for index, cell in enumerate(nb.cells):
        if not _has_marker(cell):
            continue
        if cell.cell_type != "code":
            raise ExerciseError(f"Cell {index} of {where} is {cell.cell_type}: solution markers "
                                "belong in code cells only.")
        if "id" not in cell:
            raise ExerciseError(f"Cell {index} of {where} has no id: save the notebook with "
                                "JupyterLab 4 (nbformat 4.5) so that cells get ids.")
        first = next((line for line in cell.source.splitlines() if line.strip()), "")
        title = TITLE.match(first.strip())
        if not title:
            raise ExerciseError(f"Cell {index} of {where} holds a solution but does not start "
                                "with a '# Exercise N: title' line.")
        number = int(title.group(1))
        if number != len(exercises) + 1:
            raise ExerciseError(f"Cell {index} of {where} is Exercise {number}, but exercises "
                                f"must be numbered 1, 2, 3... in order (expected {len(exercises) + 1}).")
        exercises.append(Exercise(number, title.group(2), cell.id))
    return exercises


# ----------------------------------------------------------------------------------------------
# 2. Generating the exercises notebook
# ----------------------------------------------------------------------------------------------


def _literal(text: str) -> str:
    """A double-quoted Python string literal (JSON's escapes are valid Python ones)."""
    return json.dumps(text, ensure_ascii=False)


def _raise_lines(indent: str, message: str) -> list[str]:
    """``raise NotImplementedError("...")``, a long message wrapped into aligned string pieces."""
    opening = f"{indent}raise NotImplementedError("
    room = max(40, LINE_WIDTH - len(opening) - 1)  # the closing parenthesis needs a column
    pieces = [""]
    for word in message.split(" "):  # greedy, measured as escaped literals; the text is kept exactly
        candidate = f"{pieces[-1]} {word}" if pieces[-1] else word
        if pieces[-1] and len(_literal(candidate + " ")) > room:
            pieces.append(word)
        else:
            pieces[-1] = candidate
    pieces = [p + " " for p in pieces[:-1]] + pieces[-1:]  # the pieces join into the message
    lines = [opening + _literal(pieces[0])]
    lines += [" " * len(opening) + _literal(p) for p in pieces[1:]]
    lines[-1] += ")"
    return lines


def _hint(block: list[str]) -> str:
    """The hint of a solution block as one line of text; empty when it has none."""
    if not block or not HINT.match(block[0]):
        return ""
    pieces = ["Hint: " + HINT.match(block[0]).group(1)]
    for line in block[1:]:
        more = HINT_CONTINUED.match(line)
        if not more:
            break
        pieces.append(more.group(1))
    return " ".join(pieces)


def strip_solutions(source: str, number: int, where: str = "the cell") -> str:
    """The source of an exercise cell with each solution block replaced by a ``raise``."""
    lines = source.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        marker = lines[i].strip()
        if marker == END:
            raise ExerciseError(f"Line {i + 1} of {where} ends a solution that never began "
                                f"(a '{END}' without '{BEGIN}').")
        if marker != BEGIN:
            out.append(lines[i])
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() not in (BEGIN, END):
            end += 1
        if end == len(lines) or lines[end].strip() == BEGIN:
            raise ExerciseError(f"The solution that begins on line {i + 1} of {where} has no "
                                f"'{END}' line before the next '{BEGIN}' or the cell's end.")
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        message = _hint(lines[i + 1 : end]) or f"Exercise {number}: write your solution here."
        out.extend(_raise_lines(indent, message))
        i = end + 1
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def make_exercises(solution: nbformat.NotebookNode, where: str = "the notebook") -> nbformat.NotebookNode:
    """The exercises notebook of a solutions notebook (a new notebook; the input is untouched)."""
    numbers = {e.cell_id: e.number for e in find_exercises(solution, where)}
    nb = copy.deepcopy(solution)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        cell.outputs = []
        cell.execution_count = None
        if cell.get("id") in numbers:
            cell.source = strip_solutions(cell.source, numbers[cell.id], f"cell {index} of {where}")
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """The notebook's file contents: nbformat's JSON (sorted keys, indent 1) and a final newline."""
    return nbformat.writes(nb, version=4) + "\n"


def exercise_path_for(solution_path: Path) -> Path:
    """``solutions/NN_topic_solutions.ipynb`` -> ``exercises/NN_topic_exercises.ipynb``."""
    stem = solution_path.name[: -len(SOLUTIONS_SUFFIX)]
    return solution_path.parent.parent / "exercises" / (stem + EXERCISES_SUFFIX)


def generate(solution_path: str | Path) -> str:
    """The contents the exercises notebook of ``solution_path`` should have."""
    solution_path = Path(solution_path)
    return render(make_exercises(read_notebook(solution_path), solution_path.name))


def regenerate_all(root: str | Path, write: bool = True) -> list[tuple[Path, str]]:
    """Bring ``root/exercises`` in line with ``root/solutions``; returns (path, state) pairs.

    States: ``written``, ``up to date``, ``stale`` (differs, not written because
    ``write=False``) and ``orphan`` (an exercises notebook without a solutions notebook).
    """
    root = Path(root)
    if not (root / "solutions").is_dir():
        raise ExerciseError(f"There is no solutions/ folder in {root}: pass the course folder "
                            "with --root.")
    states = []
    solutions = sorted((root / "solutions").glob("*" + SOLUTIONS_SUFFIX))
    for solution_path in solutions:
        target = exercise_path_for(solution_path)
        wanted = generate(solution_path)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == wanted:
            states.append((target, "up to date"))
        elif write:
            target.parent.mkdir(exist_ok=True)
            target.write_text(wanted, encoding="utf-8", newline="\n")
            states.append((target, "written"))
        else:
            states.append((target, "stale"))
    expected = {exercise_path_for(s).name for s in solutions}
    for path in sorted((root / "exercises").glob("*" + EXERCISES_SUFFIX)):
        if path.name not in expected:
            states.append((path, "orphan"))
    return states


# ----------------------------------------------------------------------------------------------
# 3. Checking a learner's notebook against the solutions
# ----------------------------------------------------------------------------------------------


def solution_path_for(notebook: Path) -> Path:
    """The solutions notebook to compare ``notebook`` with.

    Looked for in ``../solutions/`` next to the notebook (the course layout), then in the course
    checkout this package comes from; a solutions notebook is compared with itself.
    """
    if notebook.name.endswith(SOLUTIONS_SUFFIX):
        return notebook
    if not notebook.name.endswith(EXERCISES_SUFFIX):
        raise ExerciseError(f"{notebook.name} is not named NN_topic{EXERCISES_SUFFIX}, so its "
                            "solutions cannot be found: pass them with --solution PATH.")
    name = notebook.name[: -len(EXERCISES_SUFFIX)] + SOLUTIONS_SUFFIX
    places = [notebook.resolve().parent.parent / "solutions", course_root() / "solutions"]
    for place in places:
        if (place / name).is_file():
            return place / name
    raise ExerciseError(f"Cannot find {name} in {' or '.join(str(p) for p in dict.fromkeys(places))}: "
                        "pass it with --solution PATH.")


def _exercise_of_cells(solution: nbformat.NotebookNode, exercises: list[Exercise]) -> dict[str, int]:
    """Solution cell id -> the exercise it belongs to (0 for the setup cells before the first)."""
    index_of = {cell.get("id"): i for i, cell in enumerate(solution.cells)}
    starts = {}
    for exercise in exercises:
        start = index_of[exercise.cell_id]
        while start > 0 and solution.cells[start - 1].cell_type == "markdown":
            start -= 1  # the explanation above the solution cell belongs to the exercise
        starts[start] = exercise.number
    owner, current = {}, 0
    for i, cell in enumerate(solution.cells):
        current = starts.get(i, current)
        owner[cell.get("id")] = current
    return owner


def _same_exercise(learner: nbformat.NotebookNode, exercise: Exercise,
                   solution: nbformat.NotebookNode) -> bool:
    """Whether the learner's notebook holds ``exercise``: a cell of its id with its title line.

    Every lesson has cells named ``setup`` or ``intro``, so ids alone cannot tell two lessons
    apart; the exercise's ``# Exercise N: title`` line, which the generator keeps, can.
    """
    def title(nb):
        cell = next((c for c in nb.cells if c.get("id") == exercise.cell_id), None)
        return _first_line(cell.source) if cell is not None else None

    found = title(learner)
    return found is not None and found == title(solution)


def merge_for_checking(learner: nbformat.NotebookNode, solution: nbformat.NotebookNode,
                       exercises: list[Exercise]) -> nbformat.NotebookNode:
    """A copy of the learner's notebook holding the solution's outputs, for nbval to compare.

    nbval compares a cell only when it has an execution count, so: the cells of an exercise (its
    check cell and the cells after it) get the solution's outputs and count; the learner's
    exercise cells get none (their code is the learner's, only an error in them counts); the
    setup cells before the first exercise get none either (they load models and data, whose
    printouts can differ in the last digits on another machine: only an error in them counts);
    cells the learner added get none, and ``check_notebook`` does not judge them.
    """
    reference = {cell.get("id"): cell for cell in solution.cells}
    solved = {e.cell_id for e in exercises}
    setup = {cell_id for cell_id, number in _exercise_of_cells(solution, exercises).items()
             if number == 0}
    nb = copy.deepcopy(learner)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        ref = reference.get(cell.get("id"))
        if ref is None or ref.cell_type != "code" or cell.get("id") in solved | setup:
            cell.outputs, cell.execution_count = [], None
        else:
            cell.outputs = copy.deepcopy(ref.outputs)
            cell.execution_count = ref.execution_count
    return nb


@dataclass
class CellResult:
    """What nbval found for one code cell of the learner's notebook."""

    cell_id: str
    passed: bool
    ename: str = ""  # the error the cell raised, if any
    evalue: str = ""
    expected: str = ""  # the text the solution's cell printed, and what the learner's printed
    got: str = ""
    failure: str = ""  # nbval's own reason: "Cell outputs differ", a timeout, a dead kernel...


@dataclass
class ExerciseResult:
    """The verdict on one exercise: ``passes``, ``fails`` or ``to do``, and why."""

    number: int  # 0 for the setup cells
    title: str
    status: str
    detail: str = ""
    cells: list[CellResult] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "Setup" if self.number == 0 else f"Exercise {self.number} ({self.title})"


def _first_line(source: str) -> str:
    line = next((s.strip() for s in source.splitlines() if s.strip()), "")
    return line if len(line) <= 60 else line[:57] + "..."


def _first_difference(expected: str, got: str) -> str:
    """Where two printouts first differ, by line: ``line 2: expected '...', got '...'``."""
    exp_lines, got_lines = expected.splitlines(), got.splitlines()
    for i in range(max(len(exp_lines), len(got_lines))):
        e = repr(exp_lines[i]) if i < len(exp_lines) else "nothing"
        g = repr(got_lines[i]) if i < len(got_lines) else "nothing"
        if e != g:
            return f"line {i + 1}: expected {e}, got {g}"
    return "the outputs differ in something other than their text (a figure, a table?)"


def _verdict(number: int, title: str, cells: list[tuple[CellResult, str]],
             missing: list[str]) -> ExerciseResult:
    """Judge one exercise from its cells' results (and the cells the learner deleted).

    A ``NotImplementedError`` anywhere means still to do; otherwise a check's ``CheckFailed``
    explains best, then the first other error or differing printout.
    """
    results = [r for r, _ in cells]
    todo = next((r for r in results if r.ename == "NotImplementedError"), None)
    if todo:
        return ExerciseResult(number, title, "to do", todo.evalue, results)
    if missing:
        return ExerciseResult(number, title, "fails", f"the cell starting `{missing[0]}` is "
                              "missing from your notebook: copy it back from the solutions.", results)
    check = next((r for r in results if r.ename == "CheckFailed"), None)
    if check:
        return ExerciseResult(number, title, "fails", check.evalue, results)
    for result, source in cells:
        if result.passed:
            continue
        cell = f"the cell starting `{_first_line(source)}`"
        if result.failure == "Cell outputs differ":
            difference = _first_difference(result.expected, result.got)
            detail = f"{cell} printed something else: {difference}."
        elif result.ename and result.ename != "KeyboardInterrupt":  # an interrupt is a timeout
            detail = f"{cell} raised {result.ename}: {result.evalue}"
        else:
            reason = (result.failure or "nbval did not run it").rstrip(".")
            detail = f"{cell} did not finish: {reason}."
        return ExerciseResult(number, title, "fails", detail, results)
    return ExerciseResult(number, title, "passes", "", results)


def check_notebook(notebook: str | Path, solution: str | Path | None = None,
                   cell_timeout: int = 300) -> list[ExerciseResult]:
    """Run a learner's notebook, compare it with the solutions, and judge every exercise.

    The first result is the setup (the cells before exercise 1), then one per exercise.
    """
    notebook = Path(notebook)
    learner = read_notebook(notebook)
    solution_path = Path(solution) if solution else solution_path_for(notebook)
    reference = read_notebook(solution_path)
    exercises = find_exercises(reference, solution_path.name)
    if not exercises:
        raise ExerciseError(f"{solution_path} has no exercises (no '{BEGIN}' markers).")
    learner_ids = {cell.get("id") for cell in learner.cells}
    if not any(_same_exercise(learner, exercise, reference) for exercise in exercises):
        raise ExerciseError(f"{notebook.name} holds none of the exercises of {solution_path.name}: "
                            "check that both are of the same lesson, or pass the right solutions "
                            "with --solution PATH.")
    merged = merge_for_checking(learner, reference, exercises)
    results = {r.cell_id: r for r in _run_nbval(merged, notebook.name, solution_path, cell_timeout)}

    # Attribute every code cell of the learner's notebook to an exercise, in the learner's order.
    owner = _exercise_of_cells(reference, exercises)
    cells: dict[int, list[tuple[CellResult, str]]] = {e.number: [] for e in exercises}
    cells[0] = []
    current = 0
    for cell in merged.cells:
        current = owner.get(cell.get("id"), current)
        # Cells the learner added run (they may change the kernel's state) but are not judged.
        if cell.cell_type == "code" and cell.get("id") in owner:
            result = results.get(cell.get("id"), CellResult(cell.get("id", ""), passed=False))
            cells[current].append((result, cell.source))
    missing: dict[int, list[str]] = {n: [] for n in cells}
    for cell in reference.cells:
        if cell.cell_type == "code" and cell.get("id") not in learner_ids:
            missing[owner[cell.get("id")]].append(_first_line(cell.source))

    verdicts = [_verdict(0, "setup", cells[0], missing[0])]
    verdicts += [_verdict(e.number, e.title, cells[e.number], missing[e.number]) for e in exercises]
    return verdicts


def format_report(results: list[ExerciseResult]) -> str:
    """The report a learner reads: one line per exercise, then the count."""
    marks = {"passes": "✓", "fails": "✗", "to do": "○"}
    setup, exercises = results[0], results[1:]
    lines = []
    if setup.status != "passes":
        lines.append(f"✗ The setup cells (before exercise 1) fail: {setup.detail}")
    for r in exercises:
        if r.status == "passes":
            lines.append(f"✓ {r.label} passes.")
        elif r.status == "to do":
            lines.append(f"○ {r.label} is still to do. {r.detail}".rstrip())
        else:
            lines.append(f"✗ {r.label} fails: {r.detail}")
    counts = {status: sum(r.status == status for r in exercises) for status in marks}
    lines.append("")
    lines.append(f"{counts['passes']} of {len(exercises)} exercises pass, {counts['fails']} "
                 f"fail{'s' if counts['fails'] == 1 else ''}, {counts['to do']} still to do.")
    return "\n".join(lines)


def all_pass(results: list[ExerciseResult]) -> bool:
    return all(r.status == "passes" for r in results)


def _sanitize_file(solution_path: Path) -> Path | None:
    """The course's nbval sanitize rules, shipped with the package (``rlhf_kit/data``)."""
    path = Path(__file__).parent / "data" / "nbval_sanitize.cfg"
    return path if path.exists() else None


def _run_nbval(nb: nbformat.NotebookNode, name: str, solution_path: Path,
               cell_timeout: int) -> list[CellResult]:
    """Run ``nb`` under ``pytest --nbval`` in a subprocess; one result per code cell it ran."""
    with tempfile.TemporaryDirectory(prefix="rlhf-kit-check-") as tmp:
        folder = Path(tmp)
        path = folder / name
        path.write_text(render(nb), encoding="utf-8")
        # An empty ini file pins pytest's configuration: neither the course's pyproject nor a
        # learner's own pytest settings apply to this run.
        (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        report = folder / "results.xml"
        command = [sys.executable, "-m", "pytest", str(path), "--nbval", "--nbval-current-env",
                   f"--nbval-cell-timeout={cell_timeout}", "-c", str(folder / "pytest.ini"),
                   "--rootdir", str(folder), "-p", "no:cacheprovider", "-p", __name__,
                   f"--junitxml={report}", "-q", "--color=no"]
        sanitize = _sanitize_file(solution_path)
        if sanitize:
            command.append(f"--nbval-sanitize-with={sanitize}")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
        run = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        if not report.exists():
            tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-5:])
            raise ExerciseError(f"pytest could not run the notebook:\n{tail}")
        return _parse_junit(report)


def _parse_junit(path: Path) -> list[CellResult]:
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        if "cell_id" not in props:
            continue
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped")
        failure = props.get("failure", "")
        if skipped is not None and skipped.get("type") == "pytest.xfail":
            # nbval expects every cell after a timeout to fail, and pytest files that as skipped
            failed, failure = True, "an earlier cell ran out of time, so this one was not judged"
        results.append(CellResult(props["cell_id"], passed=not failed, ename=props.get("ename", ""),
                                  evalue=props.get("evalue", ""), expected=props.get("expected", ""),
                                  got=props.get("got", ""), failure=failure))
    return results


# ----------------------------------------------------------------------------------------------
# 4. The pytest plugin (loaded with ``-p rlhf_kit.exercises`` by ``_run_nbval``)
# ----------------------------------------------------------------------------------------------


def _text(outputs) -> str:
    """The text a cell showed: its printed streams and the plain-text form of its results."""
    parts = []
    for out in outputs or []:
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out and "text/plain" in out["data"]:
            text = out["data"]["text/plain"]
            parts.append(("".join(text) if isinstance(text, list) else text) + "\n")
    return "".join(parts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After nbval runs a cell, record its id, its error and its text in the junit report."""
    try:
        return (yield)
    except Exception as failure:  # nbval's verdict: outputs differ, an exception, a timeout...
        item.user_properties.append(("failure", str(failure).strip().splitlines()[0]))
        raise
    finally:
        if hasattr(item, "cell") and hasattr(item, "test_outputs"):
            item.user_properties.append(("cell_id", item.cell.get("id", "")))
            error = next((o for o in item.test_outputs or [] if o.get("output_type") == "error"), None)
            if error:
                item.user_properties += [("ename", error["ename"]), ("evalue", error["evalue"])]
            item.user_properties += [("expected", _text(item.cell.outputs)),
                                     ("got", _text(item.test_outputs))]
