"""The federated rounds driver: each site trains where its data is, the head aggregates.

``FederatedTrainer.train`` runs ``retrain.federated.rounds`` rounds of the deployed plan:
in each, one Ray task per site, placed by the site's label selector, trains the pipeline's
own loop on the site's data (``_site_tasks.train_at_site``) from the round's global weights;
the answers are checked (update norms: clipped or excluded) and averaged by Flower's strategy.
A site that fails or times out is skipped when the quorum answered, and asked again the next
round; a round short of quorum keeps asking the missing sites, saying so, for
``quorum_wait_s``.  Every completed round is stored (``RoundsState``) and recorded before
the next starts, so a restarted head resumes after the last one.  ``evaluate`` is the
federated gate's measurement: both models scored at each site on the site's own holdout.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud_head.federated._rounds_state import RoundsState
from cloud_head.federated.aggregate import (
    SiteUpdate,
    aggregate,
    check_updates,
    dp_applies,
    state_digest,
    write_weights,
)
from continuum.errors import ContinuumError, PlacementError
from continuum.residency import TrainingPlan
from continuum.spec import PipelineSpec

__all__ = ["FederatedResult", "FederatedTrainer", "QuorumError", "SiteScores"]

log = logging.getLogger("cloud_head.federated")

#: Pause between asking missing sites again while a round waits for quorum.
QUORUM_RETRY_S = 2.0

Record = Callable[[dict[str, Any]], None]


class QuorumError(ContinuumError, RuntimeError):
    """Too few sites answered a federated round (or gate) within the wait; nothing trained."""


@dataclass(frozen=True, kw_only=True)
class FederatedResult:
    """A finished federated training: the candidate's files and its lineage."""

    onnx_path: Path
    pt_path: Path
    metrics: dict[str, float]
    lineage: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class SiteScores:
    """The federated gate's measurements: each site's scores and holdout size, combined."""

    per_site: dict[str, dict[str, Any]]
    candidate: float
    current: float | None
    size: int
    skipped: dict[str, str] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)


@dataclass
class _Counters:
    rounds: int = 0
    clipped: int = 0
    excluded: int = 0
    skipped: int = 0
    quorum_waits: int = 0


class FederatedTrainer:
    """Run federated rounds of one pipeline under its deployed plan; keep them durable."""

    def __init__(
        self,
        spec: PipelineSpec,
        plan: TrainingPlan,
        state_path: Path,
        *,
        record: Record | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Drive ``spec``'s federated training by ``plan``; store rounds at ``state_path``.

        ``record`` appends one audit record (the rounds, the gate's site scores); an error
        it raises stops the run before the step it records takes effect.
        """
        if spec.retrain is None or plan.mode != "federated":
            raise ValueError("FederatedTrainer needs a retrain stage and a federated plan")
        self.spec = spec
        self.plan = plan
        self.options = spec.retrain.federated
        self.state = RoundsState(state_path, spec.tenant, spec.name)
        self._record = record or (lambda _: None)
        self._clock = clock
        self.status: str | None = None
        self.counters = _Counters()
        self._last_bytes: dict[str, dict[str, int]] = {}

    def close(self) -> None:
        """Close the rounds database."""
        self.state.close()

    @property
    def sites(self) -> list[str]:
        """The sites that train, in order."""
        return sorted(self.plan.site_selectors)

    def quorum(self) -> int:
        """Return how many sites must answer a round."""
        return self.options.quorum_of(len(self.sites))

    def labelled_counts(self) -> dict[str, int]:
        """Return each answering site's count of labelled samples (a site that does not
        answer within the round timeout is left out: its samples count when it is back).

        The sample-count retrain trigger reads it: the central store holds none of a
        federated pipeline's samples.
        """
        from cloud_head.federated._site_tasks import count_at_site

        answers = _Answers()
        self._ask("count", count_at_site, lambda site: (self.spec, site), {}, self.sites, answers)
        return {site: int(reply["labelled"]) for site, reply in answers.replies.items()}

    # -- training ------------------------------------------------------------------------

    def train(
        self,
        run: str,
        *,
        parent: str | None,
        base_model: Path | None,
        base_graph: Path | None,
        workdir: Path,
    ) -> FederatedResult:
        """Run the rounds (resuming an interrupted session of ``parent``); return the candidate.

        Args:
            run: the retraining run's name, recorded with the session.
            parent: the current version (None: the first model), which the rounds start from.
            base_model: the parent's ``model.pt``; None: the sites train from scratch.
            base_graph: the parent's ONNX, which the aggregate is written into; None: a
                site's exported graph is asked for.
            workdir: the run's folder; the candidate lands in ``candidate/``.

        Raises:
            QuorumError: a round did not reach quorum within ``quorum_wait_s``.
            PlacementError: this process runs outside the plan's aggregator selector.
        """
        aggregator = self._check_aggregator()
        session, done = self.state.open_session(parent, run, self._clock())
        try:
            result = self._rounds(session, done, run, parent, base_model, base_graph, workdir)
            result.lineage["aggregated_on"] = aggregator
        except Exception as error:
            self.state.finish(session, f"failed: {type(error).__name__}: {error}", self._clock())
            raise
        finally:
            self.status = None
        self.state.finish(session, "trained", self._clock())
        return result

    def _check_aggregator(self) -> dict[str, str]:
        """Refuse to aggregate on a node outside the plan's aggregator selector; return its
        labels (the updates meet in this process)."""
        import ray

        found: Mapping[str, Any] = ray.get_runtime_context().get_node_labels()
        labels = {str(k): str(v) for k, v in found.items() if "/" in k}
        if not self.plan.aggregator.matches(labels):
            raise PlacementError(
                f"the federated updates would meet on a node labelled {labels}, outside the "
                f"plan's aggregator {{{self.plan.aggregator}}} (retrain.where); run the "
                "controller on a node it matches",
                rule="retrain.where",
            )
        return labels

    def _rounds(
        self,
        session: int,
        done: int,
        run: str,
        parent: str | None,
        base_model: Path | None,
        base_graph: Path | None,
        workdir: Path,
    ) -> FederatedResult:
        state = _load_pt(base_model) if base_model is not None else None
        graph_path = self.state.session_dir(session) / "graph.onnx"
        if base_graph is not None and not graph_path.exists():
            graph_path.write_bytes(Path(base_graph).read_bytes())
        previous = self.state.rounds(session)
        if done:
            state = self.state.load_weights(previous[-1])
            log.info("%s: resuming federated session %d after round %d", run, session, done)
            self._record(
                {
                    "event": "federated_resumed",
                    "run": run,
                    "session": session,
                    "completed_rounds": done,
                    "sha256": previous[-1].sha256,
                }
            )
        metrics: dict[str, float] = {}
        for number in range(done + 1, self.options.rounds + 1):
            updates, skipped, graph = self._collect(
                number, state, want_graph=not graph_path.exists()
            )
            if graph is not None and not graph_path.exists():
                graph_path.write_bytes(graph)
            check = check_updates(updates, state, self.options)
            private = dp_applies(self.options, state)
            state = aggregate(check.kept, self.options, number, start=state)
            metrics = _weighted_metrics(check.kept)
            self.counters.rounds += 1
            self.counters.clipped += len(check.clipped)
            self.counters.excluded += len(check.excluded)
            self.counters.skipped += len(skipped)
            record = {
                "event": "federated_round",
                "run": run,
                "session": session,
                "round": number,
                "of": self.options.rounds,
                "strategy": self.options.strategy,
                "participants": sorted(u.site for u in updates),
                "skipped": skipped,
                "sample_counts": {u.site: u.num_examples for u in updates},
                "aggregated": sorted(u.site for u in check.kept),
                "sha256": state_digest(state),
                **self._last_bytes,
                "differential_privacy": {
                    "noise_multiplier": self.options.dp_noise_multiplier,
                    "clipping_norm": self.options.dp_clipping_norm,
                }
                if private
                else ("not applied: no common start" if self.options.dp_noise_multiplier else None),
                **check.to_record(),
            }
            for site in check.clipped:
                log.warning(
                    "%s round %d: site %s's update clipped (norm %.4g > %.4g)",
                    run,
                    number,
                    site,
                    check.norms[site],
                    check.bound or 0.0,
                )
            for site in check.excluded:
                log.warning(
                    "%s round %d: site %s's update excluded (norm %.4g > %.4g)",
                    run,
                    number,
                    site,
                    check.norms[site],
                    check.bound or 0.0,
                )
            self._record(record)  # first: a round not recorded is not stored
            self.state.save_round(session, number, state, record, self._clock())
        rounds = self.state.rounds(session)
        if state is None or not rounds:
            raise QuorumError("no federated round completed")
        return self._candidate(state, graph_path, workdir, rounds, metrics, session, done)

    def _candidate(
        self,
        state: dict[str, np.ndarray],
        graph_path: Path,
        workdir: Path,
        rounds: list[Any],
        metrics: dict[str, float],
        session: int,
        resumed_from: int,
    ) -> FederatedResult:
        import torch

        from cloud_head.training import _check_onnx

        out = Path(workdir) / "candidate"
        out.mkdir(parents=True, exist_ok=True)
        onnx_path = write_weights(graph_path.read_bytes(), state, out / "model.onnx")
        _check_onnx(onnx_path)
        pt_path = out / "model.pt"
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, pt_path)
        lineage = {
            "mode": "federated",
            "strategy": self.options.strategy,
            "rounds": len(rounds),
            "session": session,
            "resumed_from_round": resumed_from,
            "sites": self.sites,
            "quorum": self.quorum(),
            "sample_counts": {str(r.round): r.record.get("sample_counts", {}) for r in rounds},
            "participants": {str(r.round): r.record.get("participants", []) for r in rounds},
            "skipped": {str(r.round): r.record.get("skipped", {}) for r in rounds},
            "clipped": {str(r.round): r.record.get("clipped", []) for r in rounds},
            "excluded": {str(r.round): r.record.get("excluded", []) for r in rounds},
            "sha256": rounds[-1].sha256,
            "crosses": list(self.plan.crosses),
            "rule": self.plan.rule,
        }
        return FederatedResult(
            onnx_path=onnx_path, pt_path=pt_path, metrics=metrics, lineage=lineage
        )

    def _collect(
        self, number: int, state: dict[str, np.ndarray] | None, *, want_graph: bool
    ) -> tuple[list[SiteUpdate], dict[str, str], bytes | None]:
        """Ask every site to train; wait for quorum; return the answers and who was skipped."""
        from cloud_head.federated._site_tasks import train_at_site

        config = self._loop_config()
        answers = self._gather(
            "train",
            train_at_site,
            lambda site: (self.spec, site, state, config),
            {"want_graph": want_graph},
            f"round {number}",
        )
        updates = [
            SiteUpdate(
                site=site,
                state=reply["state"],
                num_examples=int(reply["num_examples"]),
                metrics=reply.get("metrics", {}),
            )
            for site, reply in sorted(answers.replies.items())
        ]
        graph = next((r["graph"] for r in answers.replies.values() if "graph" in r), None)
        self._last_bytes = {"bytes_down": answers.bytes_down, "bytes_up": answers.bytes_up}
        return updates, answers.skipped, graph

    def _loop_config(self) -> dict[str, Any]:
        assert self.spec.retrain is not None
        config: dict[str, Any] = {
            "epochs": self.options.local_epochs,
            "seed": 0,
            "threads": max(1, int(self.spec.retrain.cpus)),
            "shape": list(self.spec.edge.input.shape),
            "base_model": None,
            **dict(self.spec.retrain.options),
        }
        if self.options.strategy == "fedprox":
            config["proximal_mu"] = self.options.proximal_mu
        return config

    # -- the gate ------------------------------------------------------------------------

    def evaluate(self, candidate: Path, current: Path | None) -> SiteScores:
        """Score both models at each site on its holdout; combine the scores by holdout size.

        Raises:
            QuorumError: fewer sites than the quorum could score the candidate.
        """
        from cloud_head.federated._site_tasks import evaluate_at_site

        candidate_bytes = Path(candidate).read_bytes()
        current_bytes = None if current is None else Path(current).read_bytes()
        answers = self._gather(
            "gate",
            evaluate_at_site,
            lambda site: (self.spec, site, candidate_bytes, current_bytes),
            {},
            "the gate",
        )
        per_site = {
            site: {k: r[k] for k in ("size", "candidate", "current", "node_id")}
            for site, r in sorted(answers.replies.items())
        }
        scored = [
            r
            for r in per_site.values()
            if r["size"]
            and r["candidate"] is not None
            and (current is None or r["current"] is not None)
        ]
        if len(scored) < min(self.quorum(), len(per_site)) or not scored:
            raise QuorumError(
                f"the federated gate needs {self.quorum()} site(s) with a scorable holdout; "
                f"{len(scored)} of {len(self.sites)} had one"
            )
        size = sum(int(r["size"]) for r in scored)
        candidate_score = sum(r["size"] * r["candidate"] for r in scored) / size
        current_score = (
            None if current is None else sum(r["size"] * r["current"] for r in scored) / size
        )
        return SiteScores(
            per_site=per_site,
            candidate=float(candidate_score),
            current=None if current_score is None else float(current_score),
            size=size,
            skipped=answers.skipped,
            bytes_down=answers.bytes_down,
            bytes_up=answers.bytes_up,
        )

    # -- asking the sites ----------------------------------------------------------------

    def _gather(
        self,
        kind: str,
        function: Callable[..., dict[str, Any]],
        args: Callable[[str], tuple[Any, ...]],
        kwargs: Mapping[str, Any],
        what: str,
    ) -> _Answers:
        """Run ``function`` at every site; return the answers once the quorum answered."""
        quorum = self.quorum()
        answers = _Answers()
        missing = list(self.sites)
        deadline = time.monotonic() + self.options.round_timeout_s + self.options.quorum_wait_s
        while True:
            self._ask(kind, function, args, kwargs, missing, answers)
            if len(answers.replies) >= quorum:
                for site in answers.replies:
                    answers.skipped.pop(site, None)
                return answers
            self.counters.quorum_waits += 1
            self.status = (
                f"waiting for quorum: {len(answers.replies)} of {len(self.sites)} sites answered "
                f"{what} (needs {quorum}; "
                + ", ".join(f"{s}: {why}" for s, why in sorted(answers.skipped.items()))
                + ")"
            )
            log.warning("%s: %s", self.spec.name, self.status)
            if time.monotonic() >= deadline:
                raise QuorumError(
                    f"{self.status}; gave up after {self.options.quorum_wait_s:g} s of waiting "
                    "(bring the sites' Ray nodes back, or lower retrain.federated.quorum)"
                )
            time.sleep(min(QUORUM_RETRY_S, max(0.0, deadline - time.monotonic())))
            missing = [s for s in self.sites if s not in answers.replies]

    def _ask(
        self,
        kind: str,
        function: Callable[..., dict[str, Any]],
        args: Callable[[str], tuple[Any, ...]],
        kwargs: Mapping[str, Any],
        sites: list[str],
        answers: _Answers,
    ) -> None:
        """Start one task per site in ``sites``; wait up to the round timeout for them."""
        import ray

        assert self.spec.retrain is not None
        remote = ray.remote(function)
        refs: dict[Any, str] = {}
        for site in sites:
            sent = args(site)
            # What crosses to the site, as pickled: the weights, the config, the spec.
            answers.bytes_down[site] = answers.bytes_down.get(site, 0) + len(
                pickle.dumps((sent, dict(kwargs)))
            )
            options: dict[str, Any] = {
                "name": f"federated-{kind}:{site}",
                "label_selector": dict(self.plan.site_selectors[site].to_ray()),
                "num_cpus": self.spec.retrain.cpus if kind == "train" else 0.5,
                "max_retries": 0,  # a site that died is skipped this round, not retried
            }
            if kind == "train" and self.spec.retrain.gpus:
                options["num_gpus"] = self.spec.retrain.gpus
            refs[remote.options(**options).remote(*sent, **kwargs)] = site
        ready, pending = ray.wait(
            list(refs), num_returns=len(refs), timeout=self.options.round_timeout_s
        )
        for ref in ready:
            site = refs[ref]
            try:
                reply = ray.get(ref)
            except Exception as error:  # the site's task failed or its node died
                answers.skipped[site] = _first_line(error)
                log.warning(
                    "%s: site %s did not answer: %s", self.spec.name, site, answers.skipped[site]
                )
                continue
            _check_node(reply, self.plan.site_selectors[site], site)
            answers.replies[site] = reply
            answers.bytes_up[site] = answers.bytes_up.get(site, 0) + len(pickle.dumps(reply))
        for ref in pending:
            site = refs[ref]
            ray.cancel(ref, force=True)
            answers.skipped[site] = f"no answer within {self.options.round_timeout_s:g} s"


@dataclass
class _Answers:
    """The sites' replies, who was skipped and why, and the bytes each way (pickled)."""

    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)


def _check_node(reply: Mapping[str, Any], selector: Any, site: str) -> None:
    """Refuse an answer from a node outside the site's selector (it cannot happen with Ray's
    label scheduling; a change there must not go unnoticed)."""
    labels = reply.get("node_labels") or {}
    if not selector.matches(labels):
        raise ContinuumError(
            f"site {site}'s task ran on a node labelled {labels}, outside its selector {selector}"
        )


def _load_pt(path: Path) -> dict[str, np.ndarray]:
    import torch

    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _weighted_metrics(updates: Any) -> dict[str, float]:
    """Average the sites' loop metrics weighted by their sample counts (for the run record)."""
    total = sum(u.num_examples for u in updates) or 1
    keys = set().union(*(u.metrics.keys() for u in updates)) if updates else set()
    return {
        k: float(sum(u.num_examples * u.metrics.get(k, 0.0) for u in updates) / total)
        for k in sorted(keys)
    } | {"federated_samples": float(sum(u.num_examples for u in updates))}


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:300]
