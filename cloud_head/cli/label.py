"""``continuum label list|show|accept|fix``: the human review queue of uplinked samples.

Samples that came up from the edge with no label, and that neither edge feedback nor a
confident teacher answer labelled, wait here, least certain first: for a binary or anomaly
pipeline (a fraud scorer) the scores closest to the task's threshold, for a classifier the
lowest top probability. A reviewer accepts the teacher's (or the edge model's) guess or fixes
it; the answer is recorded as a ``human`` label, the most trusted source (it replaces a
chargeback's), which the next retraining uses. A label that does not fit the task (anything
but 0 or 1 for a binary one) is refused, naming the ones that do. The task is the one the
pipeline's registered model versions recorded; before the first, the queue orders as a
classifier's.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import TYPE_CHECKING, Any

from cloud_head.cli._common import (
    add_json,
    add_root,
    add_tenant,
    authorize,
    head_paths,
    operator_command,
    print_json,
    state_dir,
    wants_json,
)
from continuum.errors import NotFoundError

if TYPE_CHECKING:
    from cloud_head.labelling import ReviewItem
    from cloud_head.registry import ModelVersion
    from continuum.task import Task

_SHADES = " .:-=+*#%@"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``label`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "label",
        help="review uplinked samples that have no label yet",
        description="The human review queue: list pending samples (least certain first), "
        "show one, accept the proposed label or fix it. Answers are recorded as human labels, "
        "which outrank edge feedback and the teacher.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="list pending samples, least certain first",
        description="List the samples that await review, least certain first in the terms "
        "of the pipeline's task (as its model versions recorded it): a binary or anomaly "
        "score closest to the threshold, a classifier's lowest top probability. --json prints "
        'one document: {"tenant", "pipeline", "task" (e.g. "binary(threshold=0.5)", or '
        'null), "samples": [{"sample_id", "node", "captured_at_ns", "model_version", '
        '"prediction", "confidence" (the edge\'s score), "doubt" (the order\'s key, lowest '
        'first), "proposal": {"label", "confidence", "model"} or null}]}.',
    )
    _common(listing)
    listing.add_argument(
        "--limit", type=_count, default=20, help="how many to list (default 20; 0 for all)"
    )
    add_json(listing)
    listing.set_defaults(run=run_list)
    show = actions.add_parser("show", help="show one sample, its tensor and the guesses")
    _common(show)
    show.add_argument("sample_id", help="sample id as `label list` prints it")
    show.set_defaults(run=run_show)
    accept = actions.add_parser(
        "accept", help="accept the proposed label of samples (the teacher's, else the edge's)"
    )
    _common(accept)
    accept.add_argument("sample_ids", nargs="+", metavar="SAMPLE_ID")
    accept.set_defaults(run=run_accept)
    fix = actions.add_parser("fix", help="give a sample its correct label")
    _common(fix)
    fix.add_argument("sample_id")
    fix.add_argument(
        "label",
        type=_label,
        help="the correct label, as the pipeline's task takes it: 0 or 1 for a binary or "
        "anomaly task (1: the positive, e.g. fraud), a class index (0, 1, ...), or a "
        "regression's value (e.g. 412.5)",
    )
    fix.set_defaults(run=run_fix)


def _common(parser: argparse.ArgumentParser) -> None:
    add_tenant(parser)
    add_root(parser, registry=True)


def _label(text: str) -> int | float:
    """A class index or 0/1 (a whole number >= 0, as an int) or, written with a decimal point
    or an exponent, a regression's value (a finite float); ``run_fix`` checks it against the
    pipeline's task."""
    expected = (
        "expected a label: 0 or 1 for a binary or anomaly task (1: the positive, e.g. fraud), "
        "a class index (0 or more), or a regression's value with a decimal point (e.g. 412.5 "
        f"or -1.0); got {text!r}"
    )
    if not any(mark in text for mark in ".eE"):
        try:
            return _count(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(expected) from None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(expected) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


class _Stores:
    """The sample store and label database of one cloud head state directory."""

    def __init__(self, args: argparse.Namespace) -> None:
        from cloud_head.labelling import LabelStore
        from cloud_head.store import SampleStore

        authorize(args)
        self.samples = SampleStore(str(state_dir(args.root, "store")))
        self.labels = LabelStore(state_dir(args.root, "state") / "labels.sqlite3")

    def __enter__(self) -> _Stores:
        return self

    def __exit__(self, *exc: object) -> None:
        self.labels.close()


@operator_command
def run_list(args: argparse.Namespace) -> int:
    """Print the pending samples of a pipeline (``--json``: one document)."""
    from cloud_head.labelling import review_queue

    with _Stores(args) as stores:
        task = _task(_versions(args))
        items = review_queue(
            stores.samples,
            stores.labels,
            args.tenant,
            args.pipeline,
            limit=args.limit or None,
            task=task,
        )
    if wants_json(args):
        print_json(
            {
                "tenant": args.tenant,
                "pipeline": args.pipeline,
                "task": None if task is None else task.describe(),
                "samples": [_item_document(item) for item in items],
            }
        )
        return 0
    if not items:
        print(f"no samples of pipeline {args.pipeline!r} (tenant {args.tenant!r}) await review")
        return 0
    # What the order means rides on the header line: a script skips that one line.
    width = max(28, *(len(item.sample_id) for item in items))
    print(
        f"{'sample id':{width}} {'node':14} {'captured':20} {'edge':>10} {'proposal':>16}  "
        f"[{_order(task)}]"
    )
    for item in items:
        captured = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(item.captured_at_ns / 1e9))
        proposal = (
            f"{item.proposal.label} ({item.proposal.confidence:.2f})" if item.proposal else "-"
        )
        print(
            f"{item.sample_id:{width}} {item.node:14} {captured:20} "
            f"{item.prediction:>3} ({item.confidence:.2f}) {proposal:>16}"
        )
    return 0


def _item_document(item: ReviewItem) -> dict[str, Any]:
    """Return one pending sample as ``label list --json`` prints it."""
    proposal = item.proposal
    return {
        "sample_id": item.sample_id,
        "node": item.node,
        "captured_at_ns": item.captured_at_ns,
        "model_version": item.model_version,
        "prediction": item.prediction,
        "confidence": item.confidence,
        "doubt": item.doubt,
        "proposal": None
        if proposal is None
        else {"label": proposal.label, "confidence": proposal.confidence, "model": proposal.model},
    }


def _pending(stores: _Stores, args: argparse.Namespace) -> dict[str, Any]:
    from cloud_head.labelling import review_queue

    return {
        item.sample_id: item
        for item in review_queue(
            stores.samples, stores.labels, args.tenant, args.pipeline, limit=None
        )
    }


def _stored_ids(stores: _Stores, args: argparse.Namespace) -> set[str]:
    table = stores.samples.read(args.tenant, args.pipeline, columns=["sample_id"])
    return set(table.column("sample_id").to_pylist())


@operator_command
def run_show(args: argparse.Namespace) -> int:
    """Print one sample: where it came from, the guesses, and its tensor when it is small."""
    import numpy as np
    import pyarrow.compute as pc

    from cloud_head.store import to_numpy

    with _Stores(args) as stores:
        table = stores.samples.read(args.tenant, args.pipeline)
        row = table.filter(pc.equal(table.column("sample_id"), args.sample_id))
        if row.num_rows == 0:
            raise NotFoundError(
                f"no stored sample {args.sample_id!r} in pipeline {args.pipeline!r}; "
                "`continuum label list` prints the pending ids"
            )
        record = row.to_pylist()[0]
        label = stores.labels.get(args.tenant, args.pipeline, args.sample_id)
        proposal = stores.labels.proposals(args.tenant, args.pipeline).get(args.sample_id)
        x, _ = to_numpy(row)
    print(f"sample {record['sample_id']} from {record['node']} (model {record['model_version']})")
    print(f"  edge prediction {record['prediction']} at confidence {record['confidence']:.3f}")
    if proposal is not None:
        print(
            f"  {proposal.model} proposes {proposal.label} at confidence {proposal.confidence:.3f}"
        )
    if label is not None:
        print(f"  label {label.label} from {label.source}")
    elif record["label"] is not None:
        print(f"  label {record['label']} from the edge")
    else:
        print("  no label yet")
    image = np.squeeze(x[0])
    if image.ndim == 2 and image.shape[0] <= 32 and image.shape[1] <= 64:
        low, high = float(image.min()), float(image.max())
        scale = (image - low) / (high - low) if high > low else np.zeros_like(image)
        for line in scale:
            print("  " + "".join(_SHADES[int(v * (len(_SHADES) - 1))] * 2 for v in line))
    return 0


@operator_command
def run_accept(args: argparse.Namespace) -> int:
    """Record the proposed label of each sample (the teacher's, else the edge's) as human."""
    with _Stores(args) as stores:
        pending = _pending(stores, args)
        missing = [sid for sid in args.sample_ids if sid not in pending]
        if missing:
            raise NotFoundError(
                f"not pending review: {', '.join(missing)}; `continuum label list --limit 0` "
                "prints every pending id (a labelled sample is changed with `label fix`)"
            )
        # A regression's guess is its value, which the edge sends as the sample's score
        # (``confidence``); its ``prediction`` field carries no value.
        regression = (task := _task(_versions(args))) is not None and task.kind == "regression"
        items: list[tuple[str, int | float]] = []
        for sid in args.sample_ids:
            item = pending[sid]
            guess: int | float = item.confidence if regression else item.prediction
            items.append((sid, item.proposal.label if item.proposal else guess))
        written = stores.labels.put_many(args.tenant, args.pipeline, items, source="human")
    for sid, label in items:
        print(f"{sid}: labelled {label} (human)")
    return 0 if written == len(items) else 1


@operator_command
def run_fix(args: argparse.Namespace) -> int:
    """Record the reviewer's label for one stored sample, if it fits the pipeline's task."""
    from cloud_head.labelling import fit_label

    with _Stores(args) as stores:
        if args.sample_id not in _stored_ids(stores, args):
            raise NotFoundError(
                f"no stored sample {args.sample_id!r} in pipeline {args.pipeline!r} of tenant "
                f"{args.tenant!r}; `continuum label list` prints the pending ids"
            )
        versions = _versions(args)
        task = _task(versions)
        # A classifier's classes are its model's output width; a binary or regression model
        # has one output whatever its labels, so only a class is bounded by it.
        current = versions[0] if versions else None
        classes = (
            current.classes()
            if current is not None and (task is None or task.kind == "classification")
            else None
        )
        label = fit_label(task, args.label, classes=classes)
        stores.labels.put(args.tenant, args.pipeline, args.sample_id, label, source="human")
    print(f"{args.sample_id}: labelled {label} (human)")
    return 0


def _versions(args: argparse.Namespace) -> list[ModelVersion]:
    """Return the pipeline's registered versions, the current one first, then newest first.

    Empty where the head has no registry yet (nothing was trained).
    """
    paths = head_paths(args)
    if paths.registry_url is None and not paths.registry.exists():
        return []
    registry = paths.open_registry()
    try:
        current = registry.current(args.tenant, args.pipeline)
        listed = registry.list(args.tenant, args.pipeline)
    finally:
        registry.close()
    newest = sorted(listed, key=lambda version: version.number, reverse=True)
    return ([] if current is None else [current]) + [
        version for version in newest if current is None or version.version != current.version
    ]


def _task(versions: list[ModelVersion]) -> Task | None:
    """Return the pipeline's task as its model versions recorded it, None when none did.

    The cloud head keeps no copy of the pipeline's spec that a command could read, but every
    version the controller registers records the task its gate scored (``gate["task_spec"]``,
    the declaration itself); the current version's first.
    """
    from pydantic import ValidationError

    from continuum.task import TASK_DATA

    for version in versions:
        recorded = version.gate.get("task_spec")
        if recorded is None:
            continue
        try:
            return TASK_DATA.validate_python(recorded)
        except ValidationError:
            print(
                f"warning: model version {version.version} records a task this release cannot "
                f"read ({recorded!r}); the queue is ordered as for a classifier",
                file=sys.stderr,
            )
            return None
    return None


def _order(task: Task | None) -> str:
    """Say what "least certain first" means for the pipeline's task, beside the header."""
    from continuum.task import Anomaly, Binary

    if task is None:
        return "lowest confidence first (task not known: no registered model version records it)"
    if isinstance(task, Binary | Anomaly):
        return f"{task.describe()}: scores closest to {task.threshold:g} first"
    if task.kind == "regression":
        return f"{task.describe()}: oldest first (no spread is recorded)"
    return f"{task.describe()}: lowest top probability first"
