"""The ``continuum`` command line: the core's own commands, and those each side installs.

The core's commands (``validate``, ``show``, ``policy``) need only the core and are built in
(``SUBCOMMANDS``). Every other command comes from an entry point of the group
``continuum.commands``: its name is the command's name and it points at a
``register(subparsers)`` function (or a module that has one) which adds the command's parser
and sets ``run`` (``argparse.Namespace -> int``, the exit status) as a default. The cloud
head's commands live in ``cloud_head/cli/``, the demo in ``pipelines/demo/``, so an install
of one side lists only what it can run, and a plugin adds a verb by declaring an entry point.

A command whose side is not installed here is left out and named in ``--help``; one that
fails to load is reported by name, and the others still work. Import heavy dependencies
(Ray, torch, the edge agent) inside ``run`` so every command starts fast.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

from continuum.cli import policy, show, validate
from continuum.cli._exit import (
    EPILOG,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REFUSED,
    exit_status,
)
from continuum.errors import ContinuumError

__all__ = [
    "COMMANDS_GROUP",
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_REFUSED",
    "SUBCOMMANDS",
    "LeftOut",
    "Subcommand",
    "build_parser",
    "main",
    "require_modules",
]

Subparsers = argparse._SubParsersAction  # the type argparse gives add_subparsers() no public name

#: The entry-point group every side's commands are declared in.
COMMANDS_GROUP = "continuum.commands"


class Subcommand(Protocol):
    """A subcommand module."""

    def register(self, subparsers: Subparsers[argparse.ArgumentParser]) -> None:
        """Add the subcommand's parser and ``set_defaults(run=...)``."""


#: The core's own commands, listed first in ``--help``; the sides' come from entry points.
SUBCOMMANDS: tuple[Subcommand, ...] = (validate, show, policy)


@dataclass(frozen=True, kw_only=True)
class LeftOut:
    """A declared command that this process could not offer, and why.

    ``broken`` is False where its side is not installed here (a module it needs is missing):
    expected on a one-side install. True where it failed to load or to register otherwise: a
    defect of that plugin, reported on every run.
    """

    name: str
    target: str
    reason: str
    broken: bool

    def describe(self) -> str:
        """Say, in one line, which command is left out and why."""
        if self.broken:
            return f"command {self.name!r} ({self.target}) failed to load, left out: {self.reason}"
        return f"command {self.name!r} is not available in this install: {self.reason}"


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with the core's commands and every loadable side's registered."""
    return _assemble()[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default ``sys.argv[1:]``) and return its exit status.

    A ``ContinuumError`` is printed as one line, without a traceback, with the status
    ``continuum --help`` lists: 2 for invalid input, 3 for a refusal, 1 for anything else.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, left_out = _assemble()
    for missing in left_out:
        if missing.broken:
            print(f"continuum: {missing.describe()}", file=sys.stderr)
    asked = next((arg for arg in argv if not arg.startswith("-")), None)
    for missing in left_out:
        if missing.name == asked:
            if not missing.broken:
                print(f"continuum: {missing.describe()}", file=sys.stderr)
            return EXIT_FAILED if missing.broken else EXIT_INVALID
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help, --version and bad usage
        return exit_.code if isinstance(exit_.code, int) else EXIT_INVALID
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_INVALID
    try:
        return int(run(args))
    except ContinuumError as error:
        status = exit_status(error)
        shown = str(error) if status == EXIT_INVALID else f"{type(error).__name__}: {error}"
        print(f"error: {shown}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        return 130


def require_modules(modules: Sequence[str], *, needed_by: str, install: str) -> None:
    """Raise ``ModuleNotFoundError`` naming what ``needed_by`` lacks here, importing nothing.

    A side's command package calls it when imported, so that ``continuum`` leaves its
    commands out of an install that cannot run them and says ``install`` to get them.
    """
    missing = [name for name in modules if not _installed(name)]
    if missing:
        raise ModuleNotFoundError(
            f"{needed_by} need {', '.join(missing)}, which this install lacks: {install}",
            name=missing[0],
        )


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None, or a finder that refuses it
        return False


def _assemble() -> tuple[argparse.ArgumentParser, list[LeftOut]]:
    """Build the parser: the core's commands, then each entry point's; return what was left out."""
    parser = argparse.ArgumentParser(
        prog="continuum",
        description="Edge-to-cloud AI continuum: declare, check and run pipelines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.register(subparsers)
    left_out = [
        missing
        for entry in _entry_points()
        if (missing := _register_entry_point(entry, subparsers)) is not None
    ]
    parser.epilog = EPILOG + _left_out_text(left_out)
    return parser, left_out


def _entry_points() -> list[metadata.EntryPoint]:
    """Return the declared commands, each name once (a package seen twice declares it twice)."""
    seen: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=COMMANDS_GROUP):
        seen.setdefault(entry.name, entry)
    return list(seen.values())


def _register_entry_point(
    entry: metadata.EntryPoint, subparsers: Subparsers[argparse.ArgumentParser]
) -> LeftOut | None:
    """Load one declared command and register it; return why not when it cannot be."""

    def left_out(reason: str, *, broken: bool = True) -> LeftOut:
        return LeftOut(name=entry.name, target=entry.value, reason=reason, broken=broken)

    if entry.name in subparsers.choices:
        return left_out("a command of that name exists already")
    try:
        loaded = entry.load()
    except ModuleNotFoundError as error:  # its side (or a dependency of it) is not installed
        return left_out(str(error), broken=False)
    except Exception as error:  # a plugin's defect must not take the other commands down
        return left_out(f"{type(error).__name__}: {error}")
    register: Callable[[Any], object] | None = getattr(loaded, "register", loaded)
    if not callable(register):
        return left_out("it names neither a register(subparsers) function nor a module with one")
    before = set(subparsers.choices)
    try:
        register(subparsers)
    except Exception as error:
        _forget(subparsers, before)
        return left_out(f"{type(error).__name__}: {error}")
    return None


def _forget(subparsers: Subparsers[argparse.ArgumentParser], keep: set[str]) -> None:
    """Remove what a failed registration added half-way, so ``--help`` shows no stub."""
    for name in set(subparsers.choices) - keep:
        del subparsers.choices[name]
    subparsers._choices_actions[:] = [
        action for action in subparsers._choices_actions if action.dest in keep
    ]


def _left_out_text(left_out: list[LeftOut]) -> str:
    if not left_out:
        return ""
    lines = "\n".join(f"  {missing.describe()}" for missing in left_out)
    return f"\n\nleft out here:\n{lines}"


def _version() -> str:
    try:
        return metadata.version("continuum")
    except metadata.PackageNotFoundError:
        return "unknown"
