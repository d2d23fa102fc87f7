"""``continuum show FILE``: print a pipeline's full spec as YAML (or JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

from continuum.spec import load_pipeline


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``show`` subcommand."""
    parser = subparsers.add_parser(
        "show",
        help="print a pipeline's spec as YAML",
        description="Load a pipeline (.py declaring one Pipeline, or .yaml/.json) and print "
        "its validated spec, every default filled in. The output loads back unchanged.",
    )
    parser.add_argument("file", type=Path, help="pipeline file: .py, .yaml, .yml or .json")
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml", help="yaml")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the spec of ``args.file``."""
    spec = load_pipeline(args.file)
    text = spec.to_yaml() if args.format == "yaml" else spec.to_json() + "\n"
    print(text, end="")
    return 0
