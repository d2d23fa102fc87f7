"""``continuum policy explain|check``: a pipeline against a residency policy, stage by stage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from continuum._validation import spec_error
from continuum.cli._exit import EXIT_INVALID, EXIT_REFUSED
from continuum.errors import PlacementError, SpecError
from continuum.labels import LabelSelector
from continuum.residency import check_pipeline, explain, load_policy
from continuum.spec import load_pipeline

_NODES_FORM = (
    "nodes: {cloud-lu-1: {continuum.io/tier: cloud, continuum.io/jurisdiction: LU}, ...}; "
    "optional store: {continuum.io/jurisdiction: LU, ...}; optional compute: [cloud-lu-1, ...] "
    "(the nodes that can run training work, Ray nodes; default: every node)"
)


class _Inventory(BaseModel):
    """The ``--nodes`` file: the cluster's nodes by name, and the sample store's labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: dict[str, dict[str, str]] = Field(default_factory=dict)
    store: dict[str, str] | None = None
    compute: list[str] | None = None

    @field_validator("compute")
    @classmethod
    def _check_compute(cls, value: list[str] | None, info: Any) -> list[str] | None:
        unknown = sorted(set(value or ()) - set(info.data.get("nodes") or {}))
        if unknown:
            raise ValueError(f"names nodes not under nodes: {', '.join(unknown)}")
        return value

    @field_validator("nodes")
    @classmethod
    def _check_nodes(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for name, labels in value.items():
            LabelSelector.parse(labels, field=f'["{name}"]')
        return value

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            LabelSelector.parse(value, field="")
        return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``policy`` subcommand with ``explain`` and ``check``."""
    parser = subparsers.add_parser(
        "policy",
        help="check a pipeline against a residency policy",
        description="Show, stage by stage, where a pipeline's data may go under a residency "
        f"policy (explain), or refuse it with the rule it breaks (check, exit status "
        f"{EXIT_REFUSED}).",
    )
    parser.set_defaults(run=lambda args: _usage(parser))
    commands = parser.add_subparsers(title="policy commands", metavar="COMMAND")
    for name, run, help_ in (
        ("explain", run_explain, "print where the pipeline's data may go and why"),
        (
            "check",
            run_check,
            f"exit {EXIT_REFUSED} with the refusal if the pipeline breaks the policy",
        ),
    ):
        command = commands.add_parser(name, help=help_, description=help_ + ".")
        command.add_argument("file", type=Path, help="pipeline file: .py, .yaml, .yml or .json")
        command.add_argument(
            "--policy", type=Path, required=True, help="residency policy YAML file"
        )
        command.add_argument(
            "--nodes",
            type=Path,
            default=None,
            help=f"YAML of the known nodes and the store's labels: {_NODES_FORM}",
        )
        command.set_defaults(run=run)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_INVALID


def load_inventory(path: Path | None) -> _Inventory | None:
    """Return the known nodes, the store's labels and the compute nodes from ``path`` (None
    without a file).

    Raises:
        SpecError: the file is missing or malformed; the message names the field.
    """
    if path is None:
        return None
    if not path.is_file():
        raise SpecError(f"no such nodes file: {path}", fix="check the path")
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}", fix="fix the YAML syntax") from error
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping", fix=f"write {_NODES_FORM}")
    try:
        return _Inventory.model_validate(data)
    except ValidationError as error:
        inner = spec_error(error, model=_Inventory)
        raise SpecError(f"{path}: {inner}") from error


def _known(
    path: Path | None,
) -> tuple[dict[str, dict[str, str]] | None, Mapping[str, str] | None, list[str] | None]:
    inventory = load_inventory(path)
    if inventory is None:
        return None, None, None
    return inventory.nodes, inventory.store, inventory.compute


def run_explain(args: argparse.Namespace) -> int:
    """Print, stage by stage, where the pipeline's data may go under the policy."""
    policy = load_policy(args.policy)
    spec = load_pipeline(args.file)
    nodes, store, compute = _known(args.nodes)
    for line in explain(policy, spec, nodes, store_labels=store, compute_nodes=compute):
        print(line)
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Exit 0 when the pipeline keeps to the policy, else print the refusal and exit 3."""
    policy = load_policy(args.policy)
    spec = load_pipeline(args.file)
    nodes, store, compute = _known(args.nodes)
    try:
        decisions = check_pipeline(policy, spec, nodes, store_labels=store, compute_nodes=compute)
    except PlacementError as error:
        print(f"refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"allowed: {spec.name} keeps to {args.policy} ({len(decisions)} decisions)")
    return 0
