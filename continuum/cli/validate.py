"""``continuum validate FILE``: load a pipeline, check it and print what it declares."""

from __future__ import annotations

import argparse
from pathlib import Path

from continuum.spec import load_pipeline


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``validate`` subcommand."""
    parser = subparsers.add_parser(
        "validate",
        help="check a pipeline file and summarise it",
        description="Load a pipeline (.py declaring one Pipeline, or .yaml/.json), validate "
        "it and print a summary. Exit status 0 if valid, 2 with the error otherwise.",
    )
    parser.add_argument("file", type=Path, help="pipeline file: .py, .yaml, .yml or .json")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate ``args.file`` and print its summary."""
    spec = load_pipeline(args.file)
    print(f"valid: {args.file}")
    print(spec.summary())
    return 0
