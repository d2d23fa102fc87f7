"""A round's aggregation: each site's update checked, then averaged by Flower's strategy.

``check_updates`` measures each site's update (its weights minus the round's starting point)
by its L2 norm; an update above ``clip_factor`` times the round's lower median norm is out of
bounds (a broken or poisoned site) and is clipped to the bound or excluded.  ``aggregate``
hands the kept updates to Flower's ``FedAvg``/``FedProx`` (``flwr.serverapp.strategy``) as
Messages and returns the weighted average; Flower is imported here only, so the edge install
never needs it.  ``write_weights`` puts the aggregate into an ONNX graph a site exported.
"""

from __future__ import annotations

import contextlib
import hashlib
import statistics
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from continuum._federated_spec import FederatedSpec
from continuum.errors import ConfigError, InputMismatchError

__all__ = [
    "SiteUpdate",
    "UpdateCheck",
    "aggregate",
    "check_updates",
    "state_digest",
    "write_weights",
]

State = Mapping[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class SiteUpdate:
    """One site's answer in a round: its weights and how many rows they were trained on."""

    site: str
    state: State
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class UpdateCheck:
    """The norm check of one round: each site's update norm, the bound, and what was done.

    ``norms`` are before clipping; ``clipped`` and ``excluded`` name the sites out of bounds;
    ``kept`` are the updates to aggregate (clipped ones scaled to the bound).
    """

    norms: dict[str, float]
    bound: float | None
    clipped: tuple[str, ...]
    excluded: tuple[str, ...]
    kept: tuple[SiteUpdate, ...]

    def to_record(self) -> dict[str, Any]:
        """Return the check for the audit log: norms, bound, clipped and excluded sites."""
        return {
            "update_norms": {s: round(n, 6) for s, n in sorted(self.norms.items())},
            "norm_bound": None if self.bound is None else round(self.bound, 6),
            "clipped": list(self.clipped),
            "excluded": list(self.excluded),
        }


def _floating(state: State) -> list[str]:
    return [k for k, v in state.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]


def _reference(updates: Sequence[SiteUpdate], start: State | None) -> dict[str, np.ndarray]:
    """Return the round's starting point, or (first round from scratch) the sites' median."""
    if start is not None:
        return {k: np.asarray(v, dtype=np.float64) for k, v in start.items()}
    keys = updates[0].state.keys()
    return {
        k: np.median(np.stack([np.asarray(u.state[k], dtype=np.float64) for u in updates]), axis=0)
        for k in keys
    }


def check_updates(
    updates: Sequence[SiteUpdate], start: State | None, options: FederatedSpec
) -> UpdateCheck:
    """Measure each update against the round's start; clip or exclude those out of bounds.

    The bound is ``options.clip_factor`` times the lower median of the round's norms (with
    two sites, the smaller: one wild site cannot raise the bound it is judged by).  With one
    site, or all norms zero, nothing is out of bounds.

    Raises:
        InputMismatchError: the sites' weights differ in names or shapes from each other or
            from the start.
    """
    if not updates:
        return UpdateCheck(norms={}, bound=None, clipped=(), excluded=(), kept=())
    _check_shapes(updates, start)
    reference = _reference(updates, start)
    floating = _floating(updates[0].state)
    norms = {
        u.site: float(
            np.sqrt(
                sum(
                    float(np.sum((np.asarray(u.state[k], dtype=np.float64) - reference[k]) ** 2))
                    for k in floating
                )
            )
        )
        for u in updates
    }
    low = statistics.median_low(norms.values())
    if len(updates) < 2 or low <= 0.0:
        return UpdateCheck(norms=norms, bound=None, clipped=(), excluded=(), kept=tuple(updates))
    bound = options.clip_factor * low
    kept: list[SiteUpdate] = []
    clipped: list[str] = []
    excluded: list[str] = []
    for u in updates:
        norm = norms[u.site]
        if norm <= bound:
            kept.append(u)
        elif options.outliers == "exclude":
            excluded.append(u.site)
        else:
            scale = bound / norm
            state = dict(u.state)
            for k in floating:
                start_k = reference[k]
                value = start_k + scale * (np.asarray(u.state[k], dtype=np.float64) - start_k)
                state[k] = value.astype(np.asarray(u.state[k]).dtype)
            kept.append(
                SiteUpdate(site=u.site, state=state, num_examples=u.num_examples, metrics=u.metrics)
            )
            clipped.append(u.site)
    return UpdateCheck(
        norms=norms, bound=bound, clipped=tuple(clipped), excluded=tuple(excluded), kept=tuple(kept)
    )


def _check_shapes(updates: Sequence[SiteUpdate], start: State | None) -> None:
    first = updates[0]
    shapes = {k: np.asarray(v).shape for k, v in (start or first.state).items()}
    for u in updates:
        got = {k: np.asarray(v).shape for k, v in u.state.items()}
        if got != shapes:
            raise InputMismatchError(
                f"site {u.site}'s weights do not match the model's: every site must train the "
                "same model",
                expected=str(sorted(shapes.items()))[:300],
                got=str(sorted(got.items()))[:300],
            )


def dp_applies(options: FederatedSpec, start: State | None) -> bool:
    """Return whether central DP applies to a round: asked for, and the round has a start.

    A first model's first round has no common start to clip updates against; it is
    aggregated without noise, and its record says so.
    """
    return options.dp_noise_multiplier > 0 and start is not None


def aggregate(
    updates: Sequence[SiteUpdate],
    options: FederatedSpec,
    server_round: int,
    *,
    start: State | None = None,
) -> dict[str, np.ndarray]:
    """Average the kept updates with Flower's strategy, weighted by their sample counts.

    Integer entries (counters such as batch norm's) are rounded back to their type.  With
    ``options.dp_noise_multiplier`` and a round ``start``, Flower's server-side fixed
    clipping wrapper clips each update to ``dp_clipping_norm`` around the start and adds
    Gaussian noise to the floating weights' average (``dp_applies``); integer entries,
    which carry no gradient, are averaged without it.

    Raises:
        ConfigError: Flower is not installed (``pip install 'continuum[federated]'``).
        InputMismatchError: no update to aggregate, or all with zero samples.
    """
    if not updates or sum(u.num_examples for u in updates) <= 0:
        raise InputMismatchError(
            "nothing to aggregate: no site's update was kept, or none trained on a sample",
            expected="at least one kept update with samples",
            got=str(len(updates)),
        )
    private = dp_applies(options, start)
    floating = set(_floating(updates[0].state))
    strategy = _strategy(options)
    if private:
        assert start is not None
        strategy = _private(strategy, options, len(updates), start, floating)
    with _flower_import():
        from flwr.app import (
            DEFAULT_TTL,
            Array,
            ArrayRecord,
            Message,
            MessageType,
            Metadata,
            MetricRecord,
            RecordDict,
        )

    # Replies are built with their metadata, as the SuperLink would deliver them: the
    # public constructors make instructions or replies to an instruction we never sent.
    reply = cast(Any, Message)
    replies = [
        reply(
            content=RecordDict(
                {
                    "arrays": ArrayRecord(
                        {
                            k: Array(np.ascontiguousarray(v))
                            for k, v in u.state.items()
                            if not private or k in floating
                        }
                    ),
                    "metrics": MetricRecord({"num-examples": int(u.num_examples)}),
                }
            ),
            # A reply's metadata, as a site's answer would carry; our Ray actors are the
            # transport, so no SuperLink numbers the messages.
            metadata=Metadata(
                run_id=0,
                message_id=f"{server_round}-{u.site}",
                src_node_id=index + 1,
                dst_node_id=0,
                reply_to_message_id="",
                group_id=str(server_round),
                created_at=0.0,
                ttl=DEFAULT_TTL,
                message_type=MessageType.TRAIN,
            ),
        )
        for index, u in enumerate(updates)
    ]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    if arrays is None:
        raise InputMismatchError(
            "Flower's strategy returned no aggregate", expected="weights", got="None"
        )
    if private:  # the counters, averaged without noise
        arrays = dict(arrays.items()) | {
            k: Array(np.asarray(v)) for k, v in _weighted_mean(updates, floating).items()
        }
    kinds = {k: np.asarray(v).dtype for k, v in updates[0].state.items()}
    shapes = {k: np.asarray(v).shape for k, v in updates[0].state.items()}
    out: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        value = np.asarray(array.numpy()).reshape(shapes[key])
        dtype = kinds[key]
        out[key] = (
            np.rint(value).astype(dtype)
            if not np.issubdtype(dtype, np.floating)
            else value.astype(dtype)
        )
    return out


@contextlib.contextmanager
def _flower_import() -> Iterator[None]:
    """Import Flower quietly: its CLI dependency (typer) uses two click helpers click 8.3
    deprecates, which pytest's ``filterwarnings = error`` would turn into a failure."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"'click\.utils\.get_(binary|text)_stream' is deprecated",
            category=DeprecationWarning,
        )
        yield


def _weighted_mean(updates: Sequence[SiteUpdate], skip: set[str]) -> dict[str, np.ndarray]:
    total = sum(u.num_examples for u in updates)
    keys = [k for k in updates[0].state if k not in skip]
    return {
        k: np.asarray(
            sum(np.asarray(u.state[k], dtype=np.float64) * u.num_examples for u in updates) / total
        )
        for k in keys
    }


def _private(
    strategy: Any, options: FederatedSpec, sampled: int, start: State, floating: set[str]
) -> Any:
    """Wrap ``strategy`` in Flower's central DP with server-side fixed clipping."""
    with _flower_import():
        from flwr.app import Array, ArrayRecord
        from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    assert options.dp_clipping_norm is not None
    private = DifferentialPrivacyServerSideFixedClipping(
        strategy,
        noise_multiplier=options.dp_noise_multiplier,
        clipping_norm=options.dp_clipping_norm,
        num_sampled_clients=sampled,
    )
    # What configure_train would have set: the weights the round started from.
    private.current_arrays = ArrayRecord(
        {k: Array(np.ascontiguousarray(v)) for k, v in start.items() if k in floating}
    )
    return private


def _strategy(options: FederatedSpec) -> Any:
    try:
        with _flower_import():
            from flwr.serverapp.strategy import FedAvg, FedProx
    except ImportError as error:
        raise ConfigError(
            "federated retraining needs Flower: pip install 'continuum[federated]'"
        ) from error
    if options.strategy == "fedprox":
        return FedProx(proximal_mu=options.proximal_mu, min_train_nodes=1, min_available_nodes=1)
    return FedAvg(min_train_nodes=1, min_available_nodes=1)


def state_digest(state: State) -> str:
    """Return the sha256 of the weights, names and shapes included, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = np.ascontiguousarray(state[key])
        digest.update(f"{key}|{value.dtype.str}|{value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def write_weights(graph: bytes, state: State, path: Path) -> Path:
    """Write ``graph`` (an ONNX model a site exported) with ``state``'s weights to ``path``.

    Each weight is found among the graph's initializers by its name, or by the name with
    the export wrapper's prefix (``model.linear.weight`` for ``linear.weight``), and must
    have its shape.

    Raises:
        InputMismatchError: a floating weight is not in the graph under its name (the
            exporter folded or renamed it), or its shape differs.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string(graph)
    initializers = {init.name: init for init in model.graph.initializer}
    for key, value in state.items():
        matches = [n for n in initializers if n == key or n.endswith("." + key)]
        if len(matches) != 1:
            if not np.issubdtype(np.asarray(value).dtype, np.floating):
                continue  # a counter the graph does not use
            raise InputMismatchError(
                f"cannot write the aggregate into the ONNX graph: weight {key!r} is "
                f"{'not' if not matches else 'ambiguously'} among its initializers; export "
                "the model with its parameters as named initializers (the TorchScript "
                "exporter's default)",
                expected=key,
                got=", ".join(sorted(initializers))[:300],
            )
        init = initializers[matches[0]]
        old = numpy_helper.to_array(init)
        new = np.asarray(value)
        if old.shape != new.shape:
            raise InputMismatchError(
                f"weight {key!r} has another shape in the ONNX graph",
                expected=str(old.shape),
                got=str(new.shape),
            )
        init.CopyFrom(numpy_helper.from_array(new.astype(old.dtype), init.name))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
