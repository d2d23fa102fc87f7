"""Where a site's data lives, as the site's own node knows it, and the site's split of it.

The central head never knows where a site keeps its samples: a Ray node at a site is started
with ``CONTINUUM_SITE_DATA=<dir or s3 URI>`` and ``site_stores`` resolves the stores from it
*on that node*, inside the site's training or evaluation task.  The layout under the root:

- ``samples/``: a ``SampleStore`` (the central store's Parquet layout), which the site's
  ingest writes;
- ``labels.sqlite3``: a ``LabelStore`` (on an object-store root, a local file named by
  ``CONTINUUM_SITE_LABELS``);
- ``reference/<tenant>/<pipeline>.npz``: optional arrays ``x``, ``y``, the site's own seed
  data (a deterministic fifth of it is the site's reference holdout).

``site_split`` cuts the site's labelled samples by the central rule (``is_holdout``: per node,
by capture time blocks), so the site's holdout is never trained on, at any round or run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from continuum.errors import ConfigError, InputMismatchError

if TYPE_CHECKING:
    from cloud_head.labelling import LabelStore
    from cloud_head.store import SampleStore
    from continuum.spec import PipelineSpec

__all__ = [
    "REFERENCE_HOLDOUT_EVERY",
    "SITE_DATA_ENV",
    "SITE_LABELS_ENV",
    "SiteSplit",
    "SiteStores",
    "site_split",
    "site_stores",
]

#: The environment variable a site's Ray node is started with: the root of its data.
SITE_DATA_ENV = "CONTINUUM_SITE_DATA"
#: On an object-store root: the local path of the site's label database.
SITE_LABELS_ENV = "CONTINUUM_SITE_LABELS"
#: One reference row in this many (by position) is held out for the site's gate.
REFERENCE_HOLDOUT_EVERY = 5


@dataclass(frozen=True, kw_only=True)
class SiteStores:
    """A site's stores, opened on the site's node: samples, labels, the reference file."""

    root: str
    samples: SampleStore
    labels: LabelStore
    reference_path: str

    def reference(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the site's reference arrays ``(x, y)``, or None when it has none."""
        fs = self.samples.filesystem
        from pyarrow import fs as pafs

        if fs.get_file_info(self.reference_path).type != pafs.FileType.File:
            return None
        with fs.open_input_file(self.reference_path) as handle, np.load(handle) as data:
            if "x" not in data or "y" not in data:
                raise InputMismatchError(
                    f"the site's reference file {self.reference_path} lacks arrays x and y",
                    expected="arrays x and y",
                    got=", ".join(sorted(data.files)),
                )
            return np.asarray(data["x"]), np.asarray(data["y"])

    def close(self) -> None:
        """Close the label database."""
        self.labels.close()


def site_stores(tenant: str, pipeline: str) -> SiteStores:
    """Open this node's site stores for ``tenant``'s ``pipeline`` (from ``CONTINUUM_SITE_DATA``).

    Raises:
        ConfigError: this node was started without ``CONTINUUM_SITE_DATA`` (or, on an
            object-store root, without ``CONTINUUM_SITE_LABELS``).
    """
    from cloud_head.labelling import LabelStore
    from cloud_head.store import SampleStore

    root = os.environ.get(SITE_DATA_ENV, "").strip()
    if not root:
        raise ConfigError(
            f"this node has no site data: {SITE_DATA_ENV} is not set in its environment; "
            f"start the site's Ray node with {SITE_DATA_ENV}=<the site's data folder or "
            "s3:// URI> (federated training reads the site's samples there)"
        )
    remote = "://" in root
    if remote:
        labels_path = os.environ.get(SITE_LABELS_ENV, "").strip()
        if not labels_path:
            raise ConfigError(
                f"{SITE_DATA_ENV} is an object-store URI ({root}); the site's label database "
                f"is a local SQLite file: set {SITE_LABELS_ENV}=<path> on the site's node"
            )
    else:
        labels_path = str(Path(root) / "labels.sqlite3")
    samples = SampleStore(f"{root.rstrip('/')}/samples")
    reference = f"{samples.root.rsplit('/', 1)[0]}/reference/{tenant}/{pipeline}.npz"
    return SiteStores(
        root=root, samples=samples, labels=LabelStore(labels_path), reference_path=reference
    )


@dataclass(frozen=True, kw_only=True)
class SiteSplit:
    """A site's training and holdout arrays; ``counts`` says how many of each kind, for audit."""

    train_x: np.ndarray
    train_y: np.ndarray
    holdout_x: np.ndarray
    holdout_y: np.ndarray
    counts: dict[str, int]


def site_split(spec: PipelineSpec, stores: SiteStores) -> SiteSplit:
    """Return the site's labelled samples and reference split into training and holdout."""
    from cloud_head._training_data import holdout_mask
    from cloud_head.labelling import labelled, to_xy

    shape = tuple(spec.edge.input.shape)
    dtype = np.dtype(spec.edge.input.dtype)
    label_dtype = np.int64 if spec.edge.task.integer_labels else np.float64
    xs_train: list[np.ndarray] = []
    ys_train: list[np.ndarray] = []
    xs_hold: list[np.ndarray] = []
    ys_hold: list[np.ndarray] = []
    counts = {"samples_train": 0, "samples_holdout": 0, "reference_train": 0}
    counts["reference_holdout"] = 0
    if stores.samples.dates(spec.tenant, spec.name):
        table = labelled(stores.samples, stores.labels, spec.tenant, spec.name)
        if table.num_rows:
            x, y, _ = to_xy(table, shape=shape, dtype=spec.edge.input.dtype)
            nodes = [str(n) for n in table.column("node").to_pylist()]
            captured = np.asarray(table.column("captured_at_ns").to_pylist(), dtype=np.int64)
            held = holdout_mask(nodes, captured)
            xs_train.append(x[~held])
            ys_train.append(y[~held])
            xs_hold.append(x[held])
            ys_hold.append(y[held])
            counts["samples_train"] = int((~held).sum())
            counts["samples_holdout"] = int(held.sum())
    reference = stores.reference()
    if reference is not None:
        ref_x = np.asarray(reference[0], dtype=dtype).reshape(-1, *shape)
        ref_y = np.asarray(reference[1], dtype=label_dtype).reshape(-1)
        if len(ref_x) != len(ref_y):
            raise InputMismatchError(
                "the site's reference x and y differ in length",
                expected=str(len(ref_x)),
                got=str(len(ref_y)),
            )
        held = np.arange(len(ref_y)) % REFERENCE_HOLDOUT_EVERY == 0
        xs_train.append(ref_x[~held])
        ys_train.append(ref_y[~held])
        xs_hold.append(ref_x[held])
        ys_hold.append(ref_y[held])
        counts["reference_train"] = int((~held).sum())
        counts["reference_holdout"] = int(held.sum())
    empty_x = np.zeros((0, *shape), dtype=dtype)
    empty_y = np.zeros((0,), dtype=label_dtype)
    return SiteSplit(
        train_x=np.concatenate([empty_x, *[a.astype(dtype) for a in xs_train]]),
        train_y=np.concatenate([empty_y, *[a.astype(label_dtype) for a in ys_train]]),
        holdout_x=np.concatenate([empty_x, *[a.astype(dtype) for a in xs_hold]]),
        holdout_y=np.concatenate([empty_y, *[a.astype(label_dtype) for a in ys_hold]]),
        counts=counts,
    )
