"""The package's structure: no import cycles, and the notebooks import only names that exist.

The import graph is walked by bench/bench_structure.py (loaded here from its path), statically,
over every import statement, including those inside functions. The notebooks' imports are
checked by importing the kit's modules named in their code cells, and looking each imported name,
and each attribute taken of an imported module, up on them. Both checkers are also run on small
packages and notebooks written here, to show that they find what they look for. No model is
trained; the notebook tests take the seconds that importing torch and transformers takes.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "rlhf_kit"
NOTEBOOKS = sorted(path for folder in ("course", "solutions", "exercises")
                   for path in (ROOT / folder).glob("*.ipynb"))


@pytest.fixture(scope="module")
def structure() -> ModuleType:
    """bench/bench_structure.py, loaded from its path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_structure", ROOT / "bench" / "bench_structure.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def write_package(folder: Path, files: dict[str, str]) -> Path:
    """A package made of ``files`` (relative path -> source) in ``folder``; returns its root."""
    for relative, source in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return folder / next(iter(files)).split("/")[0]


# ----------------------------------------------------------------------------------------------
# Import cycles
# ----------------------------------------------------------------------------------------------


def test_no_import_cycles(structure):
    cycles = structure.import_cycles(ROOT / PACKAGE)
    assert not cycles, (
        f"{PACKAGE} has {len(cycles)} import cycle(s) (imports inside functions count): "
        + "; ".join("{" + ", ".join(members) + "}" for members in cycles)
        + ". `python bench/bench_structure.py` lists the imports inside each.")


def test_cycle_walker_finds_a_cycle_through_an_import_inside_a_function(structure, tmp_path):
    root = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import helper\n",
        "pkg/b.py": "def helper():\n    from . import a  # lazy, to dodge the cycle at import time\n"
                    "    return a\n",
        "pkg/c.py": "from .a import helper\n",
    })
    assert structure.import_graph(root) == {
        "pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert structure.import_cycles(root) == [["pkg.a", "pkg.b"]]


def test_cycle_walker_resolves_every_spelling_of_an_import(structure, tmp_path):
    root = write_package(tmp_path, {
        "pkg/__init__.py": "__version__ = '1'\n",
        "pkg/a.py": "import pkg.sub.d\nfrom pkg import b, __version__\n",
        "pkg/b.py": "class Thing:\n    def method(self):\n        from .sub.d import g\n",
        "pkg/self.py": "from pkg import self\n",
        "pkg/sub/__init__.py": "from .d import g  # a package re-exporting its module: no cycle\n",
        "pkg/sub/d.py": "def g():\n    from .. import a\n",
        "pkg/sub/e.py": "from ..sub import d\nfrom ...beyond import nothing  # above the top: no edge\n",
    })
    graph = structure.import_graph(root)
    assert graph["pkg.a"] == {"pkg", "pkg.b", "pkg.sub.d"}
    assert graph["pkg.b"] == {"pkg.sub.d"}
    assert graph["pkg.sub"] == {"pkg.sub.d"}
    assert graph["pkg.sub.d"] == {"pkg.a"}
    assert graph["pkg.sub.e"] == {"pkg.sub.d"}
    # a -> b -> sub.d -> a (the method's import and the function's import both count), and a self-loop
    assert structure.import_cycles(root) == [["pkg.a", "pkg.b", "pkg.sub.d"], ["pkg.self"]]
    assert structure.shortest_cycle(["pkg.a", "pkg.b", "pkg.sub.d"], graph) == [
        "pkg.a", "pkg.sub.d", "pkg.a"]


def test_cycle_walker_finds_none_in_a_layered_package(structure, tmp_path):
    root = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:  # never runs\n"
                      "    from .high import Report\n\n\ndef total(report: 'Report') -> int:\n"
                      "    return 0\n",
        "pkg/high.py": "from . import low\n\n\nclass Report:\n    def build(self):\n"
                       "        from .low import total\n        return total(self)\n",
    })
    assert structure.import_graph(root) == {"pkg": set(), "pkg.high": {"pkg.low"}, "pkg.low": set()}
    assert structure.import_cycles(root) == []
    assert structure.module_lines(root) == {"pkg.low": 8, "pkg.high": 7, "pkg": 0}
    assert [(f.qualname, f.lines) for f in structure.functions(root)] == [
        ("Report.build", 3), ("total", 2)]


# ----------------------------------------------------------------------------------------------
# Names the notebooks import from the kit
# ----------------------------------------------------------------------------------------------


MISSING = object()


@functools.cache
def _import(name: str) -> tuple[ModuleType | None, str]:
    """The module ``name``, or None and why not."""
    try:
        return importlib.import_module(name), ""
    except ModuleNotFoundError as error:
        if error.name and (name == error.name or name.startswith(error.name + ".")):
            return None, "does not exist"
        return None, f"cannot be imported ({type(error).__name__}: {error})"
    except Exception as error:  # noqa: BLE001 (whatever the module raises, report it)
        return None, f"cannot be imported ({type(error).__name__}: {error})"


def _lookup(module_name: str, attribute: str) -> object:
    """``module.attribute``, or the submodule of that name, or MISSING."""
    module, _ = _import(module_name)
    if module is not None and hasattr(module, attribute):
        return getattr(module, attribute)
    submodule, _ = _import(f"{module_name}.{attribute}")
    return MISSING if submodule is None else submodule


def _ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def cell_tree(source: str) -> ast.Module:
    """A code cell, parsed; IPython's ``%magic`` and ``!shell`` lines become ``pass``."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        lines.append(line[:len(line) - len(stripped)] + "pass" if stripped.startswith(("%", "!")) else line)
    return ast.parse("\n".join(lines))


@dataclass
class NotebookNames(ast.NodeVisitor):
    """Checks, cell after cell in order, the kit's names one notebook imports and uses.

    ``bound`` maps the notebook's names bound to a module of the kit (``sft`` after
    ``from rlhf_kit import sft``) to that module; an assignment, a loop variable or a parameter of
    the same name unbinds it, within its scope, so ``def f(reward): reward.mean()`` is not read as
    ``rlhf_kit.reward.mean``.
    """

    where: str
    bound: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # every name looked up, to see the checker ran
    cell: int = 0

    def check_cell(self, index: int, source: str) -> None:
        self.cell = index
        try:
            tree = cell_tree(source)
        except SyntaxError as error:
            self.problems.append(f"{self.where}: cell {index}: does not parse "
                                 f"({error.msg}, line {error.lineno})")
            return
        self.visit(tree)

    def _report(self, name: str, why: str = "does not exist") -> None:
        problem = f"{self.where}: cell {self.cell}: {name} {why}"
        if problem not in self.problems:
            self.problems.append(problem)

    def _module(self, name: str) -> ModuleType | None:
        """The module ``name`` of the kit, imported; reported if it cannot be."""
        self.checked.append(name)
        module, why = _import(name)
        if module is None:
            self._report(name, why)
        return module

    def _attribute(self, module_name: str, attribute: str) -> object:
        """``module.attribute`` (or the submodule); reported if there is none."""
        self.checked.append(f"{module_name}.{attribute}")
        value = _lookup(module_name, attribute)
        if value is MISSING:
            self._report(f"{module_name}.{attribute}")
        return value

    def _bind(self, name: str, value: object) -> None:
        """``name`` now holds ``value``: remembered if it is a module of the kit, else forgotten."""
        if isinstance(value, ModuleType) and _ours(value.__name__):
            self.bound[name] = value.__name__
        else:
            self.bound.pop(name, None)

    # imports

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            module = self._module(alias.name) if _ours(alias.name) else None
            if alias.asname:  # ``import rlhf_kit.sft as sft`` binds the module itself
                self._bind(alias.asname, module)
            else:  # ``import rlhf_kit.sft`` binds ``rlhf_kit``
                top = alias.name.partition(".")[0]
                self._bind(top, _import(top)[0] if module is not None else None)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        ours = not node.level and node.module is not None and _ours(node.module)
        module = self._module(node.module) if ours else None
        for alias in node.names:
            if alias.name == "*":
                continue
            value = self._attribute(node.module, alias.name) if module is not None else None
            self._bind(alias.asname or alias.name, value)

    # uses: only the first attribute of a chain, ``sft.build_sft`` of ``sft.build_sft.__doc__``

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = node.value.id if isinstance(node.value, ast.Name) else None
        if name in self.bound and isinstance(node.ctx, ast.Load):
            self._attribute(self.bound[name], node.attr)
        self.generic_visit(node)

    # rebinding, in the order Python evaluates: the value first, then the name it is stored in

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self.bound.pop(node.id, None)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        for child in (node.annotation, node.value, node.target):
            if child is not None:
                self.visit(child)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for statement in node.body + node.orelse:
            self.visit(statement)

    visit_AsyncFor = visit_For

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.bound.pop(node.name, None)
        for statement in node.body:
            self.visit(statement)

    # scopes: what a function, a class or a comprehension binds stays inside it

    def _in_scope(self, shadowed: set[str], children: list[ast.AST]) -> None:
        outer = dict(self.bound)
        for name in shadowed:
            self.bound.pop(name, None)
        for child in children:
            self.visit(child)
        self.bound = outer

    def _parameters(self, arguments: ast.arguments) -> set[str]:
        every = arguments.posonlyargs + arguments.args + arguments.kwonlyargs
        every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
        return {a.arg for a in every}

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for child in node.decorator_list + node.args.defaults + node.args.kw_defaults:
            if child is not None:
                self.visit(child)
        self._in_scope(self._parameters(node.args), node.body)
        self.bound.pop(node.name, None)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for child in node.args.defaults + node.args.kw_defaults:
            if child is not None:
                self.visit(child)
        self._in_scope(self._parameters(node.args), [node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for child in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            self.visit(child)
        self._in_scope(set(), node.body)
        self.bound.pop(node.name, None)

    def _visit_comprehension(self, node, results: list[ast.expr]) -> None:
        outer = dict(self.bound)
        for generator in node.generators:
            self.visit(generator.iter)
            self.visit(generator.target)
            for condition in generator.ifs:
                self.visit(condition)
        for result in results:
            self.visit(result)
        self.bound = outer

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._visit_comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._visit_comprehension(node, [node.key, node.value])


def check_notebook(path: Path) -> NotebookNames:
    """The kit's names ``path`` imports or uses, checked; ``.problems`` lists those missing."""
    where = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    names = NotebookNames(where)
    for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] == "code":
            source = cell["source"]
            names.check_cell(index, "".join(source) if isinstance(source, list) else source)
    return names


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: str(path.relative_to(ROOT)))
def test_notebooks_import_names_that_exist(notebook):
    names = check_notebook(notebook)
    assert not names.problems, "\n".join(names.problems)
    if PACKAGE in notebook.read_text(encoding="utf-8"):
        assert names.checked, f"{notebook.name} mentions {PACKAGE}, but no name of it was checked"


def test_notebook_checker_reports_names_that_do_not_exist(tmp_path):
    def code(source: str) -> dict:
        return {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                "source": source.splitlines(keepends=True)}

    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# A notebook with mistakes"]},
        code("%matplotlib inline\nfrom rlhf_kit import runtime, world\n"
             "from rlhf_kit.world import World, NoSuchClass\n!echo done"),
        code("import rlhf_kit.world as w\nimport rlhf_kit.world\nw.World, w.no_such_function()\n"
             "world.QUESTIONS.count, world.gone.deeper\nrlhf_kit.world, rlhf_kit.nothing"),
        code("def f(world):\n    return world.anything  # a parameter, not the module\n"
             "[runtime.x for runtime in range(3)]  # a loop variable\n"
             "runtime.nope\nworld = 3\nworld.real"),
        code("from rlhf_kit.nowhere import thing\nimport rlhf_kit.missing_module"),
        code("print('unclosed'"),
    ]
    path = tmp_path / "mistakes.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    where = str(path)
    assert check_notebook(path).problems == [
        f"{where}: cell 1: rlhf_kit.world.NoSuchClass does not exist",
        f"{where}: cell 2: rlhf_kit.world.no_such_function does not exist",
        f"{where}: cell 2: rlhf_kit.world.gone does not exist",
        f"{where}: cell 2: rlhf_kit.nothing does not exist",
        f"{where}: cell 3: rlhf_kit.runtime.nope does not exist",
        f"{where}: cell 4: rlhf_kit.nowhere does not exist",
        f"{where}: cell 4: rlhf_kit.missing_module does not exist",
        f"{where}: cell 5: does not parse ('(' was never closed, line 1)",
    ]


SCRIPTS = sorted((ROOT / "bench").rglob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_benchmarks_import_names_that_exist(script):
    """The benchmarks are run by hand, not by the suite: a renamed function must fail here instead."""
    names, text = NotebookNames(str(script.relative_to(ROOT))), script.read_text(encoding="utf-8")
    names.check_cell(0, text)
    assert not names.problems, "\n".join(names.problems)
    imports = [node for node in ast.walk(ast.parse(text)) if isinstance(node, ast.ImportFrom)
               and (node.module or "").split(".")[0] == PACKAGE]
    if imports:
        assert names.checked, f"{script.name} imports from {PACKAGE}, but no name of it was checked"
