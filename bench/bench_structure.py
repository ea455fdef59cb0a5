"""Benchmark: the shape of the package: module sizes, the longest functions, and import cycles.

Reads ``rlhf_kit/**/*.py`` with ``ast`` (nothing of rlhf_kit is imported, so it takes well under a
second) and prints, as markdown tables for bench/RESULTS.md:

* the lines of each module, longest first, and the total;
* the longest functions and methods (from the ``def`` line to the last line of the body);
* the import graph among the package's own modules, and its cycles.

The import graph is read from every import statement in a file: at module level and inside
functions, since an import put inside a function to dodge a circular import still ties the two
modules together in the design. Imports under ``if TYPE_CHECKING:`` are left out (they never run).
``from rlhf_kit import sft`` and ``from . import sft`` are edges to the module ``rlhf_kit.sft``;
``from .evaluate import CHAT`` is an edge to ``rlhf_kit.evaluate``; ``from . import __version__``
an edge to the package's ``__init__``. Importing a submodule runs its package's ``__init__`` too,
but that is not counted as an edge, or every package whose ``__init__`` imports its submodules
would be a cycle. A cycle is a strongly connected component of the graph with more than one
module, or a module that imports itself.

Run: ``python bench/bench_structure.py [PACKAGE_DIR]`` (default: the repository's rlhf_kit/).
tests/test_structure.py loads this file to assert that the package has no import cycles.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "rlhf_kit"


@dataclass(frozen=True)
class Module:
    """One ``.py`` file of the package, parsed."""

    name: str  # dotted: "rlhf_kit.sft", or "rlhf_kit.checks" for rlhf_kit/checks/__init__.py
    path: Path
    is_package: bool  # an __init__.py: its relative imports start from the package itself
    source: str
    tree: ast.Module


@dataclass(frozen=True)
class Function:
    """One function or method: ``qualname`` is ``Class.method`` or ``outer.inner``."""

    module: str
    qualname: str
    line: int
    lines: int


@dataclass(frozen=True)
class Import:
    """One module of the package named by an import statement of another (or of itself)."""

    source: str
    target: str  # a dotted name; may name no module of the package (see ``unresolved_imports``)
    line: int
    function: str | None  # the function the import is in, None at module level (or in a class body)


Parsed = Sequence[Module]
"""Every function below takes the package folder, or the modules ``parse_package`` returned."""


def parse_package(root: Path | str | Parsed = PACKAGE) -> list[Module]:
    """Every ``.py`` file under ``root``, parsed, sorted by module name.

    The package's name is the folder's name. A file that does not parse raises SyntaxError,
    naming the file.
    """
    if not isinstance(root, (str, Path)):
        return list(root)  # already parsed
    root = Path(root)
    modules = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if any(part.startswith(".") for part in parts):
            continue  # .ipynb_checkpoints and the like
        is_package = parts[-1] == "__init__"
        name = ".".join((root.name, *parts[:-1])) if is_package else ".".join((root.name, *parts))
        source = path.read_text(encoding="utf-8")
        modules.append(Module(name, path, is_package, source, ast.parse(source, filename=str(path))))
    return sorted(modules, key=lambda m: m.name)


# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------


def module_lines(root: Path | str | Parsed = PACKAGE) -> dict[str, int]:
    """Module name -> its number of lines, longest first."""
    lines = {m.name: len(m.source.splitlines()) for m in parse_package(root)}
    return dict(sorted(lines.items(), key=lambda item: (-item[1], item[0])))


def functions(root: Path | str | Parsed = PACKAGE) -> list[Function]:
    """Every function and method of the package (nested ones too), longest first."""
    found = []

    def visit(node: ast.AST, module: str, prefix: str) -> None:
        for child in _statements(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = prefix + child.name
                found.append(Function(module, qualname, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, module, qualname + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, module, prefix + child.name + ".")
            else:
                visit(child, module, prefix)  # a def inside an if, a with, a try...

    for module in parse_package(root):
        visit(module.tree, module.name, "")
    return sorted(found, key=lambda f: (-f.lines, f.module, f.line))


# ----------------------------------------------------------------------------------------------
# Imports
# ----------------------------------------------------------------------------------------------


def _statements(node: ast.AST) -> Iterable[ast.AST]:
    """The statements directly inside ``node`` (and its ``except`` and ``case`` clauses).

    A ``def`` or an import is a statement, so the walks below skip expressions, which are most of the tree.
    """
    return (child for child in ast.iter_child_nodes(node)
            if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)))


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _ImportCollector(ast.NodeVisitor):
    """The imports of one module that name the package or one of its modules, with the enclosing
    function of each."""

    def __init__(self, module: Module, package: str, known: set[str]):
        self.module, self.package, self.known = module, package, known
        self.imports: list[Import] = []
        self.scope: list[str] = []  # the enclosing classes and functions, for the report
        self.in_function = 0

    def _add(self, target: str, node: ast.stmt) -> None:
        function = ".".join(self.scope) if self.in_function else None
        self.imports.append(Import(self.module.name, target, node.lineno, function))

    def _ours(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def generic_visit(self, node: ast.AST) -> None:
        for child in _statements(node):
            self.visit(child)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for statement in node.orelse:  # the ``else:`` of TYPE_CHECKING does run
                self.visit(statement)
        else:
            self.generic_visit(node)

    def _visit_scope(self, node, is_function: bool) -> None:
        self.scope.append(node.name)
        self.in_function += is_function
        for statement in node.body:
            self.visit(statement)
        self.in_function -= is_function
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_scope(node, is_function=True)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._visit_scope(node, is_function=False)  # a class body runs at import time

    def visit_Import(self, node: ast.Import) -> None:
        # ``import rlhf_kit.sft`` (as anything): the module named, whole
        for alias in node.names:
            if self._ours(alias.name):
                self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: ``from . import x``, ``from .x import y``, ``from .. import z``
            base = self._relative_base(node.level, node.module)
            if base is None:
                return  # beyond the top of the package: Python raises ImportError
        elif node.module and self._ours(node.module):
            base = node.module
        else:
            return
        for alias in node.names:
            # ``from base import name``: the submodule base.name if there is one, else base itself
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.known else base, node)

    def _relative_base(self, level: int, name: str | None) -> str | None:
        """The module ``level`` dots (and then ``name``) refer to from this module."""
        package = self.module.name if self.module.is_package else self.module.name.rpartition(".")[0]
        parts = package.split(".")
        if level - 1 >= len(parts):
            return None
        parts = parts[:len(parts) - (level - 1)]
        return ".".join(parts + [name] if name else parts)


def imports(root: Path | str | Parsed = PACKAGE) -> list[Import]:
    """Every import of a module of the package by a module of the package, in file order."""
    modules = parse_package(root)
    if not modules:
        return []
    package = modules[0].name.partition(".")[0]
    known = {m.name for m in modules}
    found = []
    for module in modules:
        collector = _ImportCollector(module, package, known)
        collector.visit(module.tree)
        found.extend(collector.imports)
    return list(dict.fromkeys(found))  # ``from .x import a, b`` is one edge, not two


def unresolved_imports(root: Path | str | Parsed = PACKAGE) -> list[Import]:
    """Imports that name no module of the package (a module moved or removed, say)."""
    modules = parse_package(root)
    known = {m.name for m in modules}
    return [i for i in imports(modules) if i.target not in known]


def import_graph(root: Path | str | Parsed = PACKAGE) -> dict[str, set[str]]:
    """Module name -> the modules of the package it imports (every module is a key)."""
    modules = parse_package(root)
    graph: dict[str, set[str]] = {m.name: set() for m in modules}
    for i in imports(modules):
        if i.target in graph:
            graph[i.source].add(i.target)
    return graph


def import_cycles(root: Path | str | Parsed = PACKAGE,
                  graph: dict[str, set[str]] | None = None) -> list[list[str]]:
    """The import cycles: each strongly connected component of more than one module, or a module
    that imports itself, as its sorted members; largest first."""
    graph = import_graph(root) if graph is None else graph
    cycles = [sorted(component) for component in _strongly_connected(graph)
              if len(component) > 1 or next(iter(component)) in graph[next(iter(component))]]
    return sorted(cycles, key=lambda members: (-len(members), members))


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, without recursion: each component once."""
    index: dict[str, int] = {}  # the order in which the depth-first search reached each module
    low: dict[str, int] = {}  # the earliest module reachable from it that is still on the stack
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()  # every child of node done
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:  # node is the root of a component: pop it off the stack
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def shortest_cycle(members: Iterable[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest chain of imports from the first member back to itself, inside the component."""
    members = sorted(members)
    start, inside = members[0], set(members)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & inside):
            if child == start:  # closed the loop: walk back to the start
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    return []


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def _short(name: str, package: str) -> str:
    """``rlhf_kit.sft`` -> ``sft``; the package's own ``__init__`` keeps its name."""
    return name[len(package) + 1:] if name.startswith(package + ".") else name


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[int] = ()) -> str:
    """A markdown table; the columns numbered in ``right`` are aligned right (numbers)."""
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _provenance(root: Path) -> str:
    """The commit of the folder's checkout, and whether its files differ from it."""
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "."], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "outside a git checkout"
    return f"commit {commit}" + (" with uncommitted changes in the package" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(PACKAGE),
                        help="the package folder (default: the repository's rlhf_kit/)")
    parser.add_argument("--top", type=int, default=5, help="how many of the longest functions to list")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    if not root.is_dir():
        parser.error(f"{root} is not a folder")

    started = time.perf_counter()
    modules = parse_package(root)
    if not modules:
        parser.error(f"{root} holds no .py file")
    lines = module_lines(modules)
    funcs = functions(modules)
    edges = imports(modules)
    graph = import_graph(modules)
    cycles = import_cycles(graph=graph)
    elapsed = time.perf_counter() - started

    package = root.name
    short = lambda name: _short(name, package)  # noqa: E731 (a local abbreviation)
    count = {m.name: 0 for m in modules}
    for f in funcs:
        count[f.module] += 1
    imported_by = {m.name: sum(m.name in targets for source, targets in graph.items() if source != m.name)
                   for m in modules}
    # a module imported only inside functions (lazily) is marked with a star in the graph
    eager = {(i.source, i.target) for i in edges if i.function is None}

    rel = root.relative_to(REPO) if root.is_relative_to(REPO) else root
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print("## Package structure (`bench/bench_structure.py`)\n")
    print(f"`python bench/bench_structure.py`, {_provenance(root)}; {when}. {len(modules)} modules of "
          f"`{rel}/`, read with `ast` in {elapsed * 1000:.0f} ms (Python {sys.version.split()[0]}).\n")

    print("### Lines per module\n")
    rows = [(f"`{short(name)}`", f"{n:,}", count[name], len(graph[name] - {name}), imported_by[name])
            for name, n in lines.items()]
    rows.append(("**total**", f"**{sum(lines.values()):,}**", f"**{len(funcs)}**", "", ""))
    print(_table(["module", "lines", "functions", "imports (kit modules)", "imported by"], rows,
                 right=(1, 2, 3, 4)))

    print("\n### Longest functions\n")
    if funcs:
        longest = funcs[0]
        print(f"The longest is `{short(longest.module)}.{longest.qualname}`: {longest.lines} lines "
              f"(from the `def` line to the end of the body).\n")
        rows = [(rank, f"`{short(f.module)}`", f"`{f.qualname}`", f.line, f.lines)
                for rank, f in enumerate(funcs[:args.top], 1)]
        print(_table(["#", "module", "function", "line", "lines"], rows, right=(0, 3, 4)))

    print("\n### Import graph\n")
    print("The kit's modules each module imports; `*` marks a module imported only inside functions.\n")
    rows = [(f"`{short(name)}`", ", ".join(short(t) + ("" if (name, t) in eager else "*")
                                           for t in sorted(targets)) or "none")
            for name, targets in graph.items()]
    print(_table(["module", "imports"], rows))
    missing = [i for i in edges if i.target not in graph]
    if missing:
        print("\nImports of modules that do not exist:\n")
        print(_table(["module", "line", "imports"],
                     [(f"`{short(i.source)}`", i.line, f"`{i.target}`") for i in missing], right=(1,)))

    print("\n### Import cycles\n")
    print(f"{len(cycles)} strongly connected component{'s' * (len(cycles) != 1)} of the import graph "
          f"with more than one module (or a module that imports itself).\n")
    if cycles:
        rows = [(n, len(members), ", ".join(f"`{short(m)}`" for m in members),
                 " → ".join(short(m) for m in shortest_cycle(members, graph)))
                for n, members in enumerate(cycles, 1)]
        print(_table(["#", "modules", "members", "a shortest cycle"], rows, right=(0, 1)))
        print("\nThe imports inside the cycles (each cycle is broken by removing some of them):\n")
        component = {m: n for n, members in enumerate(cycles, 1) for m in members}
        rows = [(component[i.source], f"`{short(i.source)}`", i.line, f"`{short(i.target)}`",
                 f"in `{i.function}`" if i.function else "module level")
                for i in edges
                if i.source in component and component[i.source] == component.get(i.target)]
        print(_table(["cycle", "module", "line", "imports", "where"], rows, right=(0, 2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
