"""Exercise notebooks: generated from the solutions without drift, and checked against them.

The generator is tested on small notebooks written here; the committed notebooks are compared
with what it writes; ``rlhf-kit check`` runs two variants of the real exercises notebook (one
kernel each): all solved, and one wrong, one solved, one left to do.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from rlhf_kit import stages
from rlhf_kit.cli import COMMANDS, main
from rlhf_kit.exercises import (
    ExerciseError,
    exercise_path_for,
    find_exercises,
    generate,
    make_exercises,
    merge_for_checking,
    regenerate_all,
    render,
    strip_solutions,
)

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*_solutions.ipynb"))
LESSON_1 = ROOT / "solutions" / "01_next_token_prediction_solutions.ipynb"
LESSON_1_EXERCISES = ROOT / "exercises" / "01_next_token_prediction_exercises.ipynb"


def notebook(*cells) -> nbformat.NotebookNode:
    return new_notebook(cells=list(cells), metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}})


SOLVED = '''# Exercise 1: add two numbers
def add(a, b):
    """a + b"""
    ### BEGIN SOLUTION
    # Hint: Python has an operator for it.
    return a + b
    ### END SOLUTION'''


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------


def test_a_solution_becomes_a_raise_with_its_hint_at_its_indentation():
    assert strip_solutions(SOLVED, 1) == (
        '# Exercise 1: add two numbers\n'
        'def add(a, b):\n'
        '    """a + b"""\n'
        '    raise NotImplementedError("Hint: Python has an operator for it.")')


def test_nested_blocks_top_level_blocks_and_the_default_hint():
    source = "\n".join([
        "# Exercise 3: two parts",
        "### BEGIN SOLUTION",
        "table = {}",
        "### END SOLUTION",
        "class Counter:",
        "    def count(self, x):",
        "        ### BEGIN SOLUTION",
        "        # not a hint: an ordinary comment",
        "        return table.get(x, 0)",
        "        ### END SOLUTION",
        "",
    ])
    assert strip_solutions(source, 3) == "\n".join([
        "# Exercise 3: two parts",
        'raise NotImplementedError("Exercise 3: write your solution here.")',
        "class Counter:",
        "    def count(self, x):",
        '        raise NotImplementedError("Exercise 3: write your solution here.")',
        "",
    ])


def test_a_long_hint_is_joined_then_wrapped_into_valid_code():
    source = "\n".join([
        "# Exercise 1: long",
        "def f(x):",
        "    ### BEGIN SOLUTION",
        "    # Hint: a first line that explains quite a lot about what to do with x,",
        '    #       and a second line with "quotes" and a backslash \\ in it,',
        "    #       and a third one to finish.",
        "    # an ordinary comment after the hint, not part of it",
        "    return x",
        "    ### END SOLUTION",
    ])
    out = strip_solutions(source, 1)
    assert all(len(line) <= 100 for line in out.splitlines())
    raised = ast.parse(out).body[0].body[0]  # the function's only statement
    assert isinstance(raised, ast.Raise)
    assert ast.literal_eval(raised.exc.args[0]) == (
        'Hint: a first line that explains quite a lot about what to do with x, and a second line '
        'with "quotes" and a backslash \\ in it, and a third one to finish.')
    assert "ordinary comment" not in out and "return x" not in out


def test_ids_outputs_and_the_other_cells():
    solution = notebook(
        new_markdown_cell("# Lesson\n### BEGIN\nprose stays", id="intro"),
        new_code_cell("import math", id="setup", execution_count=1,
                      outputs=[new_output("stream", name="stdout", text="hi\n")],
                      metadata={"tags": ["keep-me"]}),
        new_code_cell(SOLVED, id="add-solution", execution_count=2),
        new_code_cell("print(add(1, 2))", id="add-check", execution_count=3,
                      outputs=[new_output("stream", name="stdout", text="3\n")]),
    )
    before = render(solution)
    exercises = make_exercises(solution)
    assert render(solution) == before  # the solution is not modified
    assert [c.id for c in exercises.cells] == ["intro", "setup", "add-solution", "add-check"]
    assert exercises.cells[0] == solution.cells[0]  # markdown as it was
    for cell in exercises.cells[1:]:
        assert cell.outputs == [] and cell.execution_count is None
    assert exercises.cells[1].source == "import math" and exercises.cells[1].metadata == {"tags": ["keep-me"]}
    assert exercises.cells[3].source == "print(add(1, 2))"
    assert "return a + b" not in exercises.cells[2].source
    assert exercises.metadata == solution.metadata


def test_a_notebook_without_markers_keeps_its_sources():
    plain = notebook(new_markdown_cell("text", id="a"),
                     new_code_cell("x = 1\n# Exercise 1: not an exercise without markers", id="b"))
    assert find_exercises(plain) == []
    assert [c.source for c in make_exercises(plain).cells] == [c.source for c in plain.cells]


def test_the_output_is_deterministic_bytes():
    solution = notebook(new_code_cell(SOLVED, id="add-solution"))
    first, second = render(make_exercises(solution)), render(make_exercises(solution))
    assert first == second and first.endswith("}\n") and not first.endswith("\n\n")
    assert nbformat.reads(first, as_version=4).cells[0].id == "add-solution"


@pytest.mark.parametrize("cells, complaint", [
    ([new_code_cell("# Exercise 1: a\nx = 1\n### END SOLUTION", id="a")], "never began"),
    ([new_code_cell("# Exercise 1: a\n### BEGIN SOLUTION\nx = 1", id="a")], "has no '### END SOLUTION'"),
    ([new_code_cell("# Exercise 1: a\n### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", id="a")],
     "has no '### END SOLUTION'"),
    ([new_code_cell("def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION", id="a")],
     "does not start with a '# Exercise N: title' line"),
    ([new_code_cell("# Exercise 2: b\n### BEGIN SOLUTION\n### END SOLUTION", id="a")], "(expected 1)"),
    ([new_markdown_cell("### BEGIN SOLUTION\nanswer\n### END SOLUTION", id="a")], "code cells only"),
])
def test_malformed_solutions_are_refused_with_a_reason(cells, complaint):
    with pytest.raises(ExerciseError) as error:
        make_exercises(notebook(*cells))
    assert complaint in str(error.value)


def test_cells_without_ids_are_refused():
    nb = notebook(new_code_cell(SOLVED))
    del nb.cells[0]["id"]
    with pytest.raises(ExerciseError, match="has no id"):
        find_exercises(nb)


# ----------------------------------------------------------------------------------------------
# The committed notebooks
# ----------------------------------------------------------------------------------------------


def test_committed_exercises_are_what_the_generator_writes():
    assert LESSON_1 in SOLUTIONS
    for solution in SOLUTIONS:
        target = exercise_path_for(solution)
        assert target.exists(), f"{target.name} is missing: run `rlhf-kit exercises`"
        assert target.read_text(encoding="utf-8") == generate(solution), (
            f"{target.name} is stale: run `rlhf-kit exercises` and commit it")
    assert all(state == "up to date" for _, state in regenerate_all(ROOT, write=False))


def test_lesson_1_exercises_are_runnable_stubs():
    solution = nbformat.read(LESSON_1, as_version=4)
    exercises = nbformat.read(LESSON_1_EXERCISES, as_version=4)
    found = find_exercises(solution)
    assert [e.title for e in found] == ["softmax with temperature", "top-p filtering", "next-token loss",
                                        "predict, then try: false statements at a lower temperature"]
    stubs = {c.id: c.source for c in exercises.cells if c.id in {e.cell_id for e in found}}
    for source in stubs.values():
        ast.parse(source)
        assert 'raise NotImplementedError("Hint: ' in source and "SOLUTION" not in source
    # the solutions notebook holds stored outputs (nbval compares them), the exercises none
    assert any(c.get("outputs") for c in solution.cells if c.cell_type == "code")
    assert not any(c.get("outputs") for c in exercises.cells if c.cell_type == "code")


def test_exercises_check_names_a_stale_or_orphan_notebook(tmp_path, capsys):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "exercises").mkdir()
    shutil.copy(LESSON_1, tmp_path / "solutions")
    assert main(["exercises", "--root", str(tmp_path)]) == 0
    assert main(["exercises", "--check", "--root", str(tmp_path)]) == 0
    written = tmp_path / "exercises" / LESSON_1_EXERCISES.name
    written.write_text(written.read_text().replace("Hint: ", "Hint:  "))
    (tmp_path / "exercises" / "09_gone_exercises.ipynb").write_text("{}")
    capsys.readouterr()
    assert main(["exercises", "--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"exercises/{LESSON_1_EXERCISES.name} is stale" in out
    assert "exercises/09_gone_exercises.ipynb has no solutions notebook" in out
    assert written.read_text() != generate(tmp_path / "solutions" / LESSON_1.name)  # --check wrote nothing


# ----------------------------------------------------------------------------------------------
# Checking a learner's notebook
# ----------------------------------------------------------------------------------------------


def learner_notebook(replace: dict[str, str]) -> nbformat.NotebookNode:
    """The committed exercises notebook with some cells' sources replaced (by cell id)."""
    nb = nbformat.read(LESSON_1_EXERCISES, as_version=4)
    for cell in nb.cells:
        if cell.id in replace:
            cell.source = replace[cell.id]
    return nb


def solution_sources() -> dict[str, str]:
    solution = nbformat.read(LESSON_1, as_version=4)
    return {e.cell_id: next(c.source for c in solution.cells if c.id == e.cell_id)
            for e in find_exercises(solution)}


def test_merging_gives_the_solutions_outputs_to_the_course_cells_only():
    solution = nbformat.read(LESSON_1, as_version=4)
    learner = learner_notebook({})
    learner.cells.insert(2, new_code_cell("print('my own experiment')", id="mine"))
    reference = {c.id: c for c in solution.cells}
    # A setup cell that printed a trained model's figure: on another machine its last digits
    # can differ, so the checker runs it but never compares what it printed.
    reference["setup"].outputs = [nbformat.v4.new_output("stream", text="loss 0.5654\n")]
    reference["setup"].execution_count = 1
    merged = merge_for_checking(learner, solution, find_exercises(solution))
    by_id = {c.id: c for c in merged.cells}
    assert by_id["softmax-check"].outputs == reference["softmax-check"].outputs
    assert by_id["softmax-check"].execution_count == reference["softmax-check"].execution_count
    for cell_id in ("mine", "softmax-solution", "setup"):  # not compared: nbval skips unnumbered cells
        assert by_id[cell_id].outputs == [] and by_id[cell_id].execution_count is None


def test_check_passes_a_solved_notebook_from_anywhere(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "my work"
    folder.mkdir()
    path = folder / LESSON_1_EXERCISES.name
    nbformat.write(learner_notebook(solution_sources()), path)
    monkeypatch.chdir(tmp_path)  # neither the course folder nor the notebook's
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "✓ Exercise 1 (softmax with temperature) passes." in out
    assert "✓ Exercise 2 (top-p filtering) passes." in out
    assert "✓ Exercise 3 (next-token loss) passes." in out
    assert "4 of 4 exercises pass, 0 fail, 0 still to do." in out


def test_check_reports_a_wrong_answer_and_an_exercise_to_do(tmp_path, capsys):
    sources = solution_sources()
    wrong = sources["softmax-solution"].split("### BEGIN SOLUTION")[0] + "return torch.softmax(logits, dim=-1)\n"
    path = tmp_path / "attempt.ipynb"  # any name, given --solution
    nbformat.write(learner_notebook({"softmax-solution": wrong, "top-p-solution": sources["top-p-solution"]}), path)
    assert main(["check", str(path), "--solution", str(LESSON_1)]) == 1
    out = capsys.readouterr().out
    assert ("✗ Exercise 1 (softmax with temperature) fails: softmax_with_temperature ignores "
            "the temperature") in out
    assert "✓ Exercise 2 (top-p filtering) passes." in out
    assert "○ Exercise 3 (next-token loss) is still to do. Hint: position t predicts token t+1" in out
    assert "1 of 4 exercises pass, 1 fails, 2 still to do." in out


@pytest.mark.parametrize("args, complaint", [
    (["check", "no/such/notebook_exercises.ipynb"], "There is no notebook at no/such/notebook_exercises.ipynb."),
    (["check", "{tmp}/notes.ipynb"], "notes.ipynb is not named NN_topic_exercises.ipynb"),
    (["check", "{tmp}/99_nothing_exercises.ipynb"], "Cannot find 99_nothing_solutions.ipynb in"),
    (["check", "{tmp}/notes.ipynb", "--solution", "{tmp}/broken.ipynb"], "broken.ipynb is not a readable Jupyter notebook"),
    (["exercises", "--root", "{tmp}"], "There is no solutions/ folder in"),
    # another lesson's exercises, or another lesson's solutions: refused before anything runs
    (["check", str(LESSON_1_EXERCISES.parent / "03_demonstrations_sft_exercises.ipynb"), "--solution",
      str(LESSON_1)], "03_demonstrations_sft_exercises.ipynb holds none of the exercises of "
                      "01_next_token_prediction_solutions.ipynb: check that both are of the same lesson"),
    (["check", str(LESSON_1_EXERCISES), "--solution",
      str(LESSON_1.parent / "04_human_feedback_solutions.ipynb")],
     "01_next_token_prediction_exercises.ipynb holds none of the exercises of 04_human_feedback"),
])
def test_bad_paths_give_one_sentence_and_status_2(args, complaint, tmp_path, capsys):
    nbformat.write(notebook(), tmp_path / "notes.ipynb")
    nbformat.write(notebook(), tmp_path / "99_nothing_exercises.ipynb")
    (tmp_path / "broken.ipynb").write_text("{ not json")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    captured = capsys.readouterr()
    assert complaint in captured.err and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_build_prints_the_folder_and_refuses_an_unknown_stage(tmp_path, monkeypatch, capsys):
    built = []
    monkeypatch.setattr(stages, "ensure_stage", lambda stage: built.append(stage) or tmp_path / stage)
    assert main(["build"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "base")
    assert main(["build", "ppo", "big-base"]) == 0  # several stages, in the order given
    assert capsys.readouterr().out.split() == [str(tmp_path / "ppo"), str(tmp_path / "big-base")]
    assert main(["build", "sft", "no-such-stage"]) == 2  # refused before anything is built
    assert "Unknown stage 'no-such-stage'" in capsys.readouterr().err
    assert built == ["base", "ppo", "big-base"]


def test_a_subcommand_is_added_by_registering_a_function(monkeypatch, capsys):
    monkeypatch.setattr("rlhf_kit.cli.COMMANDS", dict(COMMANDS))  # restored after the test
    from rlhf_kit.cli import argument, command

    @command("greet", "Say hello.", argument("name"), argument("--times", type=int, default=1))
    def greet(args):
        print(" ".join([f"hello {args.name}"] * args.times))
        return 3

    assert main(["greet", "Ada", "--times", "2"]) == 3
    assert capsys.readouterr().out == "hello Ada hello Ada\n"


def test_how_nbval_results_become_verdicts(tmp_path):
    """Without a kernel: the junit report nbval leaves, and the verdict drawn from it."""
    from rlhf_kit.exercises import CellResult, _parse_junit, _verdict

    report = tmp_path / "results.xml"
    report.write_text("""<testsuites><testsuite>
      <testcase name="Cell 0"><properties><property name="cell_id" value="a"/></properties></testcase>
      <testcase name="Cell 1"><properties><property name="cell_id" value="b"/>
        <property name="ename" value="CheckFailed"/><property name="evalue" value="f is off."/>
        </properties><failure message="x"/></testcase>
      <testcase name="Cell 2"><properties><property name="cell_id" value="c"/></properties>
        <skipped type="pytest.xfail" message="Previous cell timed out"/></testcase>
      <testcase name="Cell 3"><skipped type="pytest.skip" message="not a cell of ours"/></testcase>
    </testsuite></testsuites>""")
    a, b, c = _parse_junit(report)
    assert a.passed and not b.passed and (b.ename, b.evalue) == ("CheckFailed", "f is off.")
    assert not c.passed and "ran out of time" in c.failure  # after a timeout nothing counts

    printed = CellResult("d", passed=False, failure="Cell outputs differ", expected="1\n2\n", got="1\n3\n")
    todo = CellResult("e", passed=False, ename="NotImplementedError", evalue="Hint: add.")
    assert _verdict(1, "t", [(a, ""), (b, "check(f)"), (todo, "")], []).status == "to do"
    assert _verdict(1, "t", [(printed, "print(x)"), (b, "check(f)")], []).detail == "f is off."
    assert _verdict(1, "t", [(printed, "print(x)")], []).detail == (
        "the cell starting `print(x)` printed something else: line 2: expected '2', got '3'.")
    missing = _verdict(1, "t", [(a, "")], ["check_f(f)"])
    assert missing.status == "fails" and "`check_f(f)` is missing from your notebook" in missing.detail
    assert _verdict(1, "t", [(a, "")], []).status == "passes"


# ----------------------------------------------------------------------------------------------
# Lesson 4 (human feedback): no model, so its notebook is checked in seconds
# ----------------------------------------------------------------------------------------------

LESSON_4 = ROOT / "solutions" / "04_human_feedback_solutions.ipynb"
LESSON_3_EXERCISES = ROOT / "exercises" / "04_human_feedback_exercises.ipynb"


def lesson_3_learner(replace: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(LESSON_3_EXERCISES, as_version=4)
    for cell in nb.cells:
        cell.source = replace.get(cell.id, cell.source)
    return nb


def test_lesson_3_exercises_are_runnable_stubs():
    solution = nbformat.read(LESSON_4, as_version=4)
    exercises = nbformat.read(LESSON_3_EXERCISES, as_version=4)
    found = find_exercises(solution)
    assert [e.title for e in found] == ["rankings to pairs", "agreement between two labelers"]
    stubs = {c.id: c.source for c in exercises.cells if c.id in {e.cell_id for e in found}}
    assert set(stubs) == {"pairs-solution", "agree-solution"}
    for source in stubs.values():
        ast.parse(source)
        assert 'raise NotImplementedError("Hint: ' in source and "SOLUTION" not in source
    checks = {c.id: c.source for c in solution.cells}
    assert checks["pairs-check"] == "check_ranking_to_pairs(ranking_to_pairs)"
    assert checks["agree-check"] == "check_agreement_rate(agreement_rate)"
    assert any(c.get("outputs") for c in solution.cells if c.cell_type == "code")
    assert not any(c.get("outputs") for c in exercises.cells if c.cell_type == "code")


def test_lesson_3_check_reports_a_forgotten_tie_and_an_exercise_to_do(tmp_path, capsys):
    solution = nbformat.read(LESSON_4, as_version=4)
    solved = {c.id: c.source for c in solution.cells}
    forgets_ties = solved["pairs-solution"].replace("if groups[chosen] == groups[rejected]:", "if False:")
    assert forgets_ties != solved["pairs-solution"]
    path = tmp_path / LESSON_3_EXERCISES.name
    nbformat.write(lesson_3_learner({"pairs-solution": forgets_ties}), path)
    assert main(["check", str(path), "--solution", str(LESSON_4)]) == 1
    out = capsys.readouterr().out
    assert ("✗ Exercise 1 (rankings to pairs) fails: ranking_to_pairs keeps the pairs marked as ties") in out
    assert "○ Exercise 2 (agreement between two labelers) is still to do. Hint: give each completion" in out
    assert "0 of 2 exercises pass, 1 fails, 1 still to do." in out

    nbformat.write(lesson_3_learner({e.cell_id: solved[e.cell_id] for e in find_exercises(solution)}), path)
    assert main(["check", str(path)]) == 0
    assert "2 of 2 exercises pass, 0 fail, 0 still to do." in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Lesson 2 (learning from rewards)
# ----------------------------------------------------------------------------------------------

LESSON_2 = ROOT / "solutions" / "02_learning_from_rewards_solutions.ipynb"
LESSON_2_EXERCISES = ROOT / "exercises" / "02_learning_from_rewards_exercises.ipynb"


def test_lesson_2_exercises_are_runnable_stubs_with_their_checks():
    solution = nbformat.read(LESSON_2, as_version=4)
    exercises = nbformat.read(LESSON_2_EXERCISES, as_version=4)
    found = find_exercises(solution)
    assert [e.title for e in found] == ["the sample-average update", "the gradient of log π",
                                        "the REINFORCE loss", "predict, then try", "the Bradley–Terry probability"]
    sources = {c.id: c.source for c in exercises.cells}
    for exercise in found:
        ast.parse(sources[exercise.cell_id])
        assert 'raise NotImplementedError("Hint: ' in sources[exercise.cell_id]
        assert "SOLUTION" not in sources[exercise.cell_id]
    checks = [c.source.split("(")[0] for c in solution.cells if c.cell_type == "code" and c.source.startswith("check_")]
    assert checks == ["check_sample_average_update", "check_log_policy_gradient", "check_reinforce_loss",
                      "check_prediction", "check_preference_probability"]
    assert exercise_path_for(LESSON_2) == LESSON_2_EXERCISES
    assert LESSON_2_EXERCISES.read_text(encoding="utf-8") == generate(LESSON_2)


def test_check_names_a_forgotten_baseline_in_lesson_2(tmp_path, capsys):
    """One kernel: every exercise solved except the REINFORCE loss, which forgets the baseline."""
    solution = nbformat.read(LESSON_2, as_version=4)
    solved = {e.cell_id: next(c.source for c in solution.cells if c.id == e.cell_id)
              for e in find_exercises(solution)}
    solved["reinforce-solution"] = solved["reinforce-solution"].split("### BEGIN SOLUTION")[0] + (
        "logprobs = torch.log_softmax(logits, dim=-1)\n"  # the split leaves the indentation
        "    return -(rewards * logprobs.gather(-1, actions[:, None]).squeeze(-1)).mean()\n")
    learner = nbformat.read(LESSON_2_EXERCISES, as_version=4)
    for cell in learner.cells:
        cell.source = solved.get(cell.id, cell.source)
    path = tmp_path / LESSON_2_EXERCISES.name
    nbformat.write(learner, path)
    assert main(["check", str(path), "--solution", str(LESSON_2)]) == 1
    out = capsys.readouterr().out
    assert "✓ Exercise 1 (the sample-average update) passes." in out
    assert "✓ Exercise 2 (the gradient of log π) passes." in out
    assert "✗ Exercise 3 (the REINFORCE loss) fails: reinforce_loss ignores the baseline" in out
    assert "✓ Exercise 4 (predict, then try) passes." in out
    assert "✓ Exercise 5 (the Bradley–Terry probability) passes." in out
    assert "4 of 5 exercises pass, 1 fails, 0 still to do." in out
