"""The ``continuum`` command line: argparse with one module per subcommand.

To add a subcommand, write ``continuum/cli/<name>.py`` with ``register(subparsers)`` that
adds its parser and sets ``run`` (``argparse.Namespace -> int``, the exit status) as a
default, then list the module in ``SUBCOMMANDS``.  Import heavy dependencies (Ray, torch,
the edge agent) inside ``run`` so every command starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Protocol

from continuum.cli import (
    audit,
    certs,
    demo,
    fleet,
    label,
    models,
    policy,
    rollout,
    show,
    tenant,
    validate,
)
from continuum.errors import ConfigError, ContinuumError, SpecError

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "main"]

Subparsers = argparse._SubParsersAction  # the type argparse gives add_subparsers() no public name

#: Exit status for a bad pipeline, config or command line: fix the input, do not retry.
EXIT_INVALID = 2
#: Exit status for any other continuum error (a dependency down, a timeout...).
EXIT_FAILED = 1


class Subcommand(Protocol):
    """A subcommand module."""

    def register(self, subparsers: Subparsers[argparse.ArgumentParser]) -> None:
        """Add the subcommand's parser and ``set_defaults(run=...)``."""


#: The registration point: every subcommand module, in the order ``--help`` lists them.
SUBCOMMANDS: tuple[Subcommand, ...] = (
    validate,
    show,
    demo,
    fleet,
    models,
    rollout,
    label,
    audit,
    policy,
    tenant,
    certs,
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every subcommand of ``SUBCOMMANDS`` registered."""
    parser = argparse.ArgumentParser(
        prog="continuum",
        description="Edge-to-cloud AI continuum: declare, check and run pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default ``sys.argv[1:]``) and return its exit status.

    A ``ContinuumError`` is printed as one line, without a traceback: status 2 for a bad
    spec or config, 1 for anything else.
    """
    parser = build_parser()
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
    except (SpecError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except ContinuumError as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _version() -> str:
    try:
        return metadata.version("continuum")
    except metadata.PackageNotFoundError:
        return "unknown"
