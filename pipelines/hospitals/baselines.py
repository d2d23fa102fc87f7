"""The hospitals example's yardsticks, computed offline on the reserved per-site test rows.

The demo's report and ``benchmarks/federated.py`` hold the federated model against two
baselines, measured in the same run:

* the **oracle**: one model trained centrally on every site's training rows pooled, which
  the residency policy forbids (restricted data may not leave its site) and which only this
  offline computation may build, on the example's own copy of the data;
* **each site alone**: a model per site trained on that site's rows only, what a hospital
  could do without anyone else.

``federated_rounds`` replays federated averaging in this process with the rounds' own
update check and Flower aggregation (``cloud_head.federated.aggregate``), for the benchmark;
the demo's federated model comes from the real rounds on the sites' Ray nodes.  Training
rows are each site's reference rows less its holdout (what ``site_split`` trains on), plus,
after the drift, the drift site's recalibrated stream rows where given.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipelines.hospitals.data import DRIFT_SITE, SITES, holdout_mask, load_splits, recalibrated

__all__ = [
    "RoundFigures",
    "federated_rounds",
    "oracle",
    "reserved_scores",
    "shipped_bytes",
    "site_alone",
    "training_rows",
]

Rows = tuple[NDArray[np.float32], NDArray[np.int64]]


def training_rows(site: str, *, drifted_stream: bool = False, seed: int = 0) -> Rows:
    """Return ``site``'s training rows: its reference less the holdout; with
    ``drifted_stream`` (the drift site only) also its stream rows as the recalibrated device
    reads them, labelled (what its agents uplink after the drift, in the limit)."""
    splits = load_splits(seed)
    ref = splits.reference[site]
    keep = ~holdout_mask(len(ref.y))
    xs, ys = [ref.x[keep]], [ref.y[keep]]
    if drifted_stream and site == DRIFT_SITE:
        stream = splits.stream[site]
        xs.append(recalibrated(stream.x))
        ys.append(stream.y)
    return np.concatenate(xs), np.concatenate(ys)


def reserved_scores(
    predict: Callable[[NDArray[np.float32]], NDArray[np.float32]],
    *,
    drifted: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Return accuracy at 0.5 per site and pooled on the reserved tests (the drift site's
    read by its recalibrated device when ``drifted``)."""
    splits = load_splits(seed)
    out: dict[str, float] = {}
    right = total = 0
    for site in SITES:
        test = splits.test[site]
        x = recalibrated(test.x) if drifted and site == DRIFT_SITE else test.x
        hits = int(((predict(x) >= 0.5).astype(np.int64) == test.y).sum())
        out[site] = hits / len(test.y)
        right, total = right + hits, total + len(test.y)
    out["pooled"] = right / total
    return out


def _predictor(model: Any) -> Callable[[NDArray[np.float32]], NDArray[np.float32]]:
    from pipelines.hospitals.train import predict

    return lambda x: predict(model, x)


def oracle(*, drifted: bool = False, seed: int = 0) -> dict[str, Any]:
    """Train on every site's rows pooled (forbidden by the policy); return its scores, the
    rows it needed shipped and its training time."""
    from pipelines.hospitals.train import fit

    parts = [training_rows(s, drifted_stream=drifted, seed=seed) for s in SITES]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    started = time.perf_counter()
    model = fit(x, y, seed=seed)
    seconds = time.perf_counter() - started
    return {
        "scores": reserved_scores(_predictor(model), drifted=drifted, seed=seed),
        "rows": len(y),
        "train_s": seconds,
        "model": model,
    }


def site_alone(site: str, *, drifted: bool = False, seed: int = 0) -> dict[str, Any]:
    """Train on ``site``'s rows only; return its scores on every site's reserved test."""
    from pipelines.hospitals.train import fit

    model = fit(*training_rows(site, drifted_stream=drifted, seed=seed), seed=seed)
    return {"scores": reserved_scores(_predictor(model), drifted=drifted, seed=seed)}


@dataclass
class RoundFigures:
    """One replayed federated round: the pooled reserved accuracy after it, the bytes that
    crossed (model down and up, counts and metrics, as pickled for Ray), the slowest site's
    local training time and the time of all of them."""

    round: int
    accuracy: float
    bytes_crossed: int
    slowest_site_s: float
    all_sites_s: float
    scores: dict[str, float] = field(default_factory=dict)


def federated_rounds(
    rounds: int,
    *,
    drifted: bool = False,
    seed: int = 0,
    start: Mapping[str, NDArray[Any]] | None = None,
) -> tuple[list[RoundFigures], dict[str, NDArray[Any]]]:
    """Replay ``rounds`` federated rounds in this process; return each round's figures and
    the final weights.

    Each site fits from the round's global weights (from scratch in round 1 without
    ``start``) on its own rows; the updates pass the rounds' norm check and are averaged by
    Flower's FedAvg (``cloud_head.federated.aggregate``), exactly as on the sites' nodes.
    """
    import torch

    from cloud_head.federated.aggregate import SiteUpdate, aggregate, check_updates
    from continuum.spec import FederatedSpec
    from pipelines.hospitals.model import ScreeningMLP
    from pipelines.hospitals.train import FINE_TUNE, SCRATCH, fit

    options = FederatedSpec()
    state = None if start is None else {k: np.asarray(v) for k, v in start.items()}
    rows = {s: training_rows(s, drifted_stream=drifted, seed=seed) for s in SITES}
    figures: list[RoundFigures] = []
    for number in range(1, rounds + 1):
        updates, times, crossed = [], [], 0
        for site, (x, y) in rows.items():
            base = None if state is None else {k: torch.from_numpy(v) for k, v in state.items()}
            crossed += 0 if state is None else len(pickle.dumps(state))
            began = time.perf_counter()
            model = fit(
                x,
                y,
                base_state=base,
                recipe=SCRATCH if base is None else FINE_TUNE,
                seed=seed + number,
            )
            times.append(time.perf_counter() - began)
            local = {k: v.numpy() for k, v in model.state_dict().items()}
            reply = {
                "state": local,
                "num_examples": len(y),
                "metrics": {"train_accuracy": 1.0},
                "counts": {"reference_train": len(y)},
            }
            crossed += len(pickle.dumps(reply))
            updates.append(SiteUpdate(site=site, state=local, num_examples=len(y)))
        check = check_updates(updates, state, options)
        state = aggregate(check.kept, options, number)
        model = ScreeningMLP()
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        scores = reserved_scores(_predictor(model), drifted=drifted, seed=seed)
        figures.append(
            RoundFigures(number, scores["pooled"], crossed, max(times), sum(times), scores)
        )
    assert state is not None
    return figures, state


def shipped_bytes(*, drifted: bool = False, seed: int = 0) -> int:
    """Return what shipping every site's training rows and labels to a central store costs on
    the wire (the agents' own sample and feedback encoding)."""
    from continuum.spec import DataClass
    from continuum.wire import codec

    total = 0
    for site in SITES:
        x, y = training_rows(site, drifted_stream=drifted, seed=seed)
        records = tuple(
            codec.SampleRecord(seq=i + 1, captured_at_ns=i, tensor=row) for i, row in enumerate(x)
        )
        total += len(
            codec.encode_samples(
                codec.SampleBatch("hospital-screening", site, "v1", DataClass.RESTRICTED, records)
            )
        )
        total += len(
            codec.encode_feedback(
                codec.FeedbackBatch(
                    "hospital-screening", site, tuple((i + 1, int(v)) for i, v in enumerate(y))
                )
            )
        )
    return total
