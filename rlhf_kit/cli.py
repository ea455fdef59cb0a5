"""The ``rlhf-kit`` command: the course's chores from a terminal.

::

    rlhf-kit build [STAGE...] [--from-scratch]
                                            build stages of the embedded model (default: base);
                                            base and big-base are installed from the shipped
                                            weights unless --from-scratch pretrains them here
    rlhf-kit exercises [--check] [--root DIR]
                                            regenerate exercises/ from solutions/; with --check,
                                            only say which committed notebooks are stale
    rlhf-kit run [--model NAME] [--out DIR]  every stage, the scoreboard and a report folder
                                            (see rlhf_kit.pipeline)
    rlhf-kit check NOTEBOOK [--solution PATH]
                                            run your exercises notebook and compare it with the
                                            solutions, exercise by exercise

Each subcommand is one function registered with ``@command``: its name, a one-line help, its
arguments (written as for ``argparse.add_argument``), and a body that returns the exit status.
Adding one is adding a function. A mistake the user can fix (a wrong path, an unknown stage)
is printed as one sentence, without a traceback, with exit status 2; a check that finds work
to do exits with 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .exercises import ExerciseError

Handler = Callable[[argparse.Namespace], int]


@dataclass
class Command:
    """One subcommand: its name, its help line, its arguments and the function that runs it."""

    name: str
    help: str
    run: Handler
    arguments: list[tuple[tuple, dict]] = field(default_factory=list)


COMMANDS: dict[str, Command] = {}
"""Every subcommand by name, in the order ``rlhf-kit --help`` lists them."""


def argument(*names: str, **options) -> tuple[tuple, dict]:
    """One argument of a subcommand, spelled as for ``ArgumentParser.add_argument``."""
    return names, options


def command(name: str, help: str, *arguments: tuple[tuple, dict]) -> Callable[[Handler], Handler]:
    """Register the decorated function as the subcommand ``name``."""

    def register(run: Handler) -> Handler:
        COMMANDS[name] = Command(name, help, run, list(arguments))
        return run

    return register


class UsageError(Exception):
    """A mistake in how a command was called; its message is shown as is, in one sentence."""


# ----------------------------------------------------------------------------------------------
# The subcommands
# ----------------------------------------------------------------------------------------------


@command("build", "Build stages of the embedded model (once each) and print their folders.",
         argument("stages", nargs="*", default=["base"], metavar="STAGE",
                  help="the stages to build, in order (default: base)"),
         argument("--from-scratch", action="store_true",
                  help="base or big-base: pretrain it here with the kit's recipe instead of "
                       "installing the shipped weights (about 3 and 6.5 minutes on 2 cores); the "
                       "stages built from the old base are removed, to be rebuilt from the new one"))
def build(args: argparse.Namespace) -> int:
    from .stages import STAGES, ensure_stage, pretrain_from_scratch, unknown_stage

    unknown = [stage for stage in args.stages if stage not in STAGES]
    if unknown:  # refused before anything is built
        raise UsageError(unknown_stage(unknown[0]))
    try:
        for stage in args.stages:
            if args.from_scratch:
                folder, removed = pretrain_from_scratch(stage)
                if removed:
                    print(f"Removed the stages built from the old base model: {', '.join(removed)} "
                          "(rebuilt from the new one when next asked for).")
            else:
                folder = ensure_stage(stage)
            print(folder, flush=True)
    except KeyError as error:  # a stage that cannot be pretrained from scratch
        raise UsageError(error.args[0]) from None
    return 0


@command("exercises", "Regenerate exercises/ from solutions/ (with --check: only compare).",
         argument("--check", action="store_true",
                  help="write nothing; exit with 1 and name the notebooks that differ"),
         argument("--root", type=Path, default=None, metavar="DIR",
                  help="the course folder holding solutions/ and exercises/ "
                       "(default: the checkout rlhf_kit is installed from)"))
def exercises(args: argparse.Namespace) -> int:
    from .exercises import course_root, regenerate_all

    root = args.root or course_root()
    states = regenerate_all(root, write=not args.check)
    for path, state in states:
        shown = _relative(path, root)
        if state == "stale":
            print(f"{shown} is stale: run `rlhf-kit exercises` and commit the result.")
        elif state == "orphan":
            print(f"{shown} has no solutions notebook to be generated from.")
        else:
            print(f"{shown}: {state}")
    if not states:
        print(f"No solutions notebooks in {root / 'solutions'}.")
    return 1 if any(state in ("stale", "orphan") for _, state in states) else 0


@command("check", "Run your exercises notebook and compare it with the solutions.",
         argument("notebook", type=Path,
                  help="your notebook, e.g. exercises/01_next_token_prediction_exercises.ipynb"),
         argument("--solution", type=Path, default=None, metavar="PATH",
                  help="the solutions notebook to compare with (default: found from the name)"),
         argument("--cell-timeout", type=int, default=300, metavar="SECONDS",
                  help="fail a cell that runs longer than this (default: 300)"))
def check(args: argparse.Namespace) -> int:
    from .exercises import all_pass, check_notebook, format_report, read_notebook, solution_path_for

    read_notebook(args.notebook)  # a missing or broken notebook is named before anything runs
    solution = args.solution or solution_path_for(args.notebook)
    print(f"Running {args.notebook.name} in a fresh kernel and comparing it with {solution.name} "
          "(this takes a minute)...", flush=True)
    results = check_notebook(args.notebook, solution, cell_timeout=args.cell_timeout)
    print(format_report(results))
    return 0 if all_pass(results) else 1


@command("run", "Run every stage (resuming a stopped run) and write a report folder.",
         argument("--model", default=None, metavar="NAME",
                  help="'embedded' (default, or $RLHF_KIT_MODEL), a hub id such as gpt2, or a "
                       "folder written by save_pretrained: the base the later stages start from"),
         argument("--out", type=Path, default=Path("rlhf-kit-report"), metavar="DIR",
                  help="the report folder (default: rlhf-kit-report)"),
         argument("--samples", type=int, default=4, metavar="N",
                  help="answers per held-out question on the scoreboard (default: 4)"))
def run(args: argparse.Namespace) -> int:
    from .models import ModelNotFound, resolve
    from .pipeline import run as run_pipeline
    from .runtime import model_choice

    model = args.model or model_choice()
    if args.samples < 1:
        raise UsageError(f"--samples must be at least 1, not {args.samples}.")
    if model != "embedded":
        try:
            resolve(model)
        except ModelNotFound as error:
            raise UsageError(str(error)) from None
    result = run_pipeline(args.out, model, samples_per_question=args.samples)
    print(f"Done in {result['seconds']:.0f} s; open {result['report']} in a browser.")
    return 0


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------
# The parser and the entry point
# ----------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-kit", description="The rlhf-kit course: build models, make and check exercises.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for names, options in cmd.arguments:
            sub.add_argument(*names, **options)
        sub.set_defaults(run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns (and, as a script, exits with) its status."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, ExerciseError) as error:
        print(f"rlhf-kit {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhf-kit {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
