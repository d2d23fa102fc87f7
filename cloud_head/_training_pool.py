"""Which pool trains a run, and a run carried across the end of a Slurm allocation.

A pipeline's ``retrain.pool`` names the pool: ``hpc`` (the Ray nodes a Slurm allocation brings
into the cluster, ``continuum hpc up --join``: labelled ``continuum.io/tier=hpc``, their job
id and when their Ray stops), ``cloud``, or ``auto`` (the cloud pool, or an allocation when the
cloud pool lacks the GPUs asked). ``choose_pool`` decides from the alive nodes, inside the
selector the residency policy derived: an allocation outside it is refused naming the rule, one
whose Ray stops before the run's expected end is refused with the figures, and ``fallback``
sends the run to the cloud pool instead, saying why. ``PooledTraining`` wraps the controller's
``train`` function: it runs the choice, and when the allocation ends mid-run (``scancel``,
pre-emption, the time limit) it runs the same Ray Train run again elsewhere (another
allocation, or the cloud pool where allowed), which resumes from the last checkpoint the loop
reported (same run name and storage: Ray Train restores it, ``ray.train.get_checkpoint()``).
Where nothing may take it, the checkpoint is kept and the pipeline's next run resumes it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from continuum.errors import PlacementError
from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER, LabelSelector

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from cloud_head.training import TrainingResult
    from continuum.residency import ResidencyPolicy
    from continuum.spec import PipelineSpec, RetrainSpec

__all__ = [
    "ENDS_AT_LABEL",
    "SLURM_JOB_LABEL",
    "Allocation",
    "PoolChoice",
    "PooledTraining",
    "RunInterruptedError",
    "allocations_of",
    "choose_pool",
    "placement_of",
    "residency_rule",
]

log = logging.getLogger("cloud_head.controller")

#: The label that ties a Ray node to its Slurm job (deploy/slurm/continuum-ray.sbatch sets it).
SLURM_JOB_LABEL = "hpc.continuum/slurm-job"
#: When the allocation's Ray stops, unix seconds (its EndTime less the script's signal lead).
ENDS_AT_LABEL = "hpc.continuum/ends-at"
#: Labels of an allocation that say which one it is, not where it is.
_OWN_LABELS = (SLURM_JOB_LABEL, ENDS_AT_LABEL)
#: How many times one run is carried to another pool after its allocation ended.
MAX_MOVES = 3
#: How long after a failed attempt the allocation's nodes may take to be reported gone.
GONE_WAIT_S = 15.0
#: The file, beside the runs' workdirs, naming a run whose allocation ended with no pool left.
RESUME_FILE = "resume.json"

Pool = Literal["hpc", "cloud", "any"]


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """One Slurm allocation's alive Ray nodes, as the cluster reports them."""

    job_id: str
    labels: dict[str, str]
    nodes: int
    cpus: float
    gpus: float
    ends_at: float | None

    def where(self) -> str:
        """Return where it is, as its labels say (``site lux-hpc, jurisdiction LU``)."""
        return ", ".join(
            f"{k.removeprefix('continuum.io/')} {self.labels.get(k, '?')}"
            for k in (SITE, JURISDICTION)
        )


@dataclass(frozen=True, kw_only=True)
class PoolChoice:
    """Where one attempt runs: the pool, the allocation (HPC), the selector, and why."""

    pool: Pool
    selector: LabelSelector
    why: str
    allocation: str | None = None
    ends_at: float | None = None
    passed_over: tuple[str, ...] = ()


class RunInterruptedError(PlacementError):
    """The allocation running the training ended mid-run and no other pool may take it.

    The checkpoint the loop last reported is kept: the pipeline's next run resumes from it.
    ``placement_of(error)`` says what ran where, for the training log and the audit log.
    """

    def __init__(self, message: str, *, placement: dict[str, Any]) -> None:
        super().__init__(message, rule="retrain.pool")
        _tag(self, placement)


def allocations_of(nodes: list[dict[str, Any]]) -> list[Allocation]:
    """Group the alive Ray nodes labelled ``tier=hpc`` by Slurm job (in job id order); each
    allocation's size is its biggest node's."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        labels = node.get("Labels") or {}
        if node.get("Alive") and labels.get(TIER) == "hpc" and SLURM_JOB_LABEL in labels:
            grouped.setdefault(labels[SLURM_JOB_LABEL], []).append(node)
    found = []
    for job_id, members in sorted(grouped.items()):
        labels = {
            k: v for k, v in (members[0].get("Labels") or {}).items() if not k.startswith("ray.io/")
        }
        ends = labels.get(ENDS_AT_LABEL, "")
        found.append(
            Allocation(
                job_id=job_id,
                labels=labels,
                nodes=len(members),
                cpus=max(float(n.get("Resources", {}).get("CPU", 0.0)) for n in members),
                gpus=max(float(n.get("Resources", {}).get("GPU", 0.0)) for n in members),
                ends_at=float(ends) if ends.isdigit() else None,
            )
        )
    return found


def residency_rule(
    policy: ResidencyPolicy, spec: PipelineSpec
) -> Callable[[Mapping[str, str]], PlacementError | None]:
    """Return a check naming the residency rule that keeps the training data off a node.

    It asks the policy for the training selector as if ``retrain.where`` named the node's site,
    country and jurisdiction: the refusal carries the rule (e.g. ``classes.confidential``).
    """
    from continuum.residency import derive_training_selector

    retrain = spec.retrain
    assert retrain is not None

    def check(labels: Mapping[str, str]) -> PlacementError | None:
        where = LabelSelector({k: labels[k] for k in (SITE, COUNTRY, JURISDICTION) if k in labels})
        narrowed = spec.model_copy(update={"retrain": retrain.model_copy(update={"where": where})})
        try:
            derive_training_selector(policy, narrowed, [])
        except PlacementError as refused:
            return refused
        return None

    return check


def choose_pool(
    retrain: RetrainSpec,
    selector: LabelSelector,
    nodes: list[dict[str, Any]],
    *,
    estimate_s: float,
    now: float,
    rule_of: Callable[[Mapping[str, str]], PlacementError | None] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> PoolChoice:
    """Decide where the next attempt of a run goes; raise ``PlacementError`` when nowhere may.

    ``selector`` is the training selector the residency policy derived; ``nodes`` are
    ``ray.nodes()``; ``estimate_s`` how long the run is expected to take (its last run's
    length); ``exclude`` allocations that already ended under this run.

    Raises:
        PlacementError: pool ``hpc`` without fallback and no allocation may take the run; the
            rule is the residency rule, ``hpc.time_limit``, ``retrain.resources`` or
            ``retrain.pool`` (none up), as the first allocation's refusal says.
    """
    gpus, cpus = float(retrain.gpus), float(retrain.cpus)
    if retrain.pool is None:
        return PoolChoice(pool="any", selector=selector, why="no pool named: any node allowed")
    cloud = PoolChoice(pool="cloud", selector=_with(selector, {TIER: "cloud"}), why="")
    if retrain.pool == "cloud":
        return replace(cloud, why="the pipeline names the cloud pool")
    if retrain.pool == "auto":
        short = _cloud_gpu_shortage(nodes, cloud.selector, gpus)
        if short is None:
            return replace(cloud, why=f"pool auto: the cloud pool has the {gpus:g} GPU(s) asked")
    refusals: list[PlacementError] = []
    usable: list[Allocation] = []
    for allocation in allocations_of(nodes):
        if allocation.job_id in exclude:
            continue
        refusal = _refusal(allocation, selector, gpus, cpus, estimate_s, now, rule_of)
        if refusal is None:
            usable.append(allocation)
        else:
            refusals.append(refusal)
    if usable:  # the one with the most time left; an unlimited one first
        best = max(usable, key=lambda a: float("inf") if a.ends_at is None else a.ends_at)
        terms = {TIER: "hpc", SLURM_JOB_LABEL: best.job_id}
        why = f"Slurm allocation {best.job_id} ({best.where()}) is up"
        if retrain.pool == "auto":
            why = f"pool auto: {short}; {why}"
        return PoolChoice(
            pool="hpc",
            selector=_with(selector, terms),
            why=why,
            allocation=best.job_id,
            ends_at=best.ends_at,
            passed_over=tuple(str(r) for r in refusals),
        )
    if not refusals:
        refusals.append(
            PlacementError(
                "no Slurm allocation's Ray nodes are in the cluster: start one with `continuum "
                "hpc up --join <head>` (an allocation with a Ray cluster of its own cannot take "
                "the controller's runs)"
                + (f"; {len(exclude)} ended under this run" if exclude else ""),
                rule="retrain.pool",
            )
        )
    if retrain.pool == "auto" or retrain.fallback:
        reasons = "; ".join(str(r) for r in refusals)
        return replace(
            cloud,
            why=f"falls back to the cloud pool: {reasons}",
            passed_over=tuple(str(r) for r in refusals),
        )
    first = refusals[0]
    raise PlacementError(
        f"no HPC allocation may take the training run and the pipeline allows no fallback "
        f"(retrain.fallback): {'; '.join(str(r) for r in refusals)}",
        rule=first.rule,
        label=first.label,
    ) from first


def _refusal(
    allocation: Allocation,
    selector: LabelSelector,
    gpus: float,
    cpus: float,
    estimate_s: float,
    now: float,
    rule_of: Callable[[Mapping[str, str]], PlacementError | None] | None,
) -> PlacementError | None:
    """Return why ``allocation`` may not take the run (policy, size, time left), or None."""
    if not selector.matches(allocation.labels):
        named = None if rule_of is None else rule_of(allocation.labels)
        off = [k for k in selector.root if not selector.can_match(k, allocation.labels.get(k, ""))]
        label = f"{off[0]}={allocation.labels.get(off[0])}" if off else None
        if named is not None:
            return PlacementError(
                f"Slurm allocation {allocation.job_id} ({allocation.where()}) is refused by the "
                f"residency policy: {named}",
                rule=named.rule,
                label=named.label or label,
            )
        wanted = ", ".join(f"{k}={selector.root[k]}" for k in off)
        return PlacementError(
            f"Slurm allocation {allocation.job_id} ({allocation.where()}) is outside the "
            f"training selector the residency policy derived ({wanted})",
            rule="training_selector",
            label=label,
        )
    if allocation.cpus < cpus or allocation.gpus < gpus:
        return PlacementError(
            f"Slurm allocation {allocation.job_id} is too small for the training worker (needs "
            f"CPU {cpus:g}, GPU {gpus:g}; its biggest node has CPU {allocation.cpus:g}, GPU "
            f"{allocation.gpus:g})",
            rule="retrain.resources",
        )
    if allocation.ends_at is not None and allocation.ends_at - now < estimate_s:
        left = max(0.0, allocation.ends_at - now)
        return PlacementError(
            f"run needs ~{_minutes(estimate_s)} (its last run's length), Slurm allocation "
            f"{allocation.job_id} ends in {_minutes(left)}: submit a longer one (`continuum hpc "
            f"up --time ...`)",
            rule="hpc.time_limit",
            label=f"{ENDS_AT_LABEL}={int(allocation.ends_at)}",
        )
    return None


def _cloud_gpu_shortage(
    nodes: list[dict[str, Any]], cloud: LabelSelector, gpus: float
) -> str | None:
    """Return why the cloud pool cannot give ``gpus`` GPUs to one worker, or None if it can."""
    matching = [n for n in nodes if n.get("Alive") and cloud.matches(n.get("Labels") or {})]
    most = max((float(n.get("Resources", {}).get("GPU", 0.0)) for n in matching), default=0.0)
    if matching and most >= gpus:
        return None
    if not matching:
        return f"no alive cloud node matches {{{cloud}}}"
    return f"the cloud pool's biggest node has {most:g} GPU(s), the run asks {gpus:g}"


def _with(selector: LabelSelector, terms: Mapping[str, str]) -> LabelSelector:
    return LabelSelector.parse({**selector.root, **terms}, field="retrain.where")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


# -- the run ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class _Attempt:
    pool: Pool
    allocation: str | None
    why: str
    started_at: float
    outcome: str = "running"
    passed_over: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """One run across its attempts: its storage and name (an interrupted run's when resumed),
    each attempt, and the allocations that ended under it."""

    workdir: Path
    name: str
    resumed: str | None
    attempts: list[_Attempt] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)

    def placement(self) -> dict[str, Any]:
        """Return what ran where, for the training log and the audit log: the last attempt's
        pool and allocation, and every attempt (a run moved after its allocation ended has
        several)."""
        last = self.attempts[-1] if self.attempts else None
        return {
            "pool": None if last is None else last.pool,
            "allocation": None if last is None else last.allocation,
            "why": None if last is None else last.why,
            "resumed_run": self.resumed,
            "attempts": [asdict(a) for a in self.attempts],
        }


class PooledTraining:
    """The controller's ``train`` function, placed by ``retrain.pool`` and carried across ends.

    ``train`` is the function that runs one Ray Train run (``run_training``: it must take
    ``run_name``); ``estimate_s`` returns the run's expected length; ``rule_of`` names the
    residency rule that refuses an allocation (``residency_rule``); ``nodes`` lists the
    cluster's nodes (``ray.nodes``).
    """

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        train: Callable[..., TrainingResult],
        estimate_s: Callable[[], float],
        rule_of: Callable[[Mapping[str, str]], PlacementError | None] | None = None,
        nodes: Callable[[], list[dict[str, Any]]] | None = None,
        clock: Callable[[], float] = time.time,
        gone_wait_s: float = GONE_WAIT_S,
    ) -> None:
        if spec.retrain is None:
            raise ValueError(f"pipeline {spec.name!r} declares no retrain stage")
        self._retrain = spec.retrain
        self._train = train
        self._estimate_s = estimate_s
        self._rule_of = rule_of
        self._nodes = nodes or _ray_nodes
        self._clock = clock
        self._gone_wait_s = gone_wait_s

    def __call__(
        self,
        trainer: PipelineSpec | str,
        train_x: NDArray[np.generic],
        train_y: NDArray[np.integer],
        *,
        base_model: Path | None,
        workdir: Path,
        label_selector: LabelSelector | Mapping[str, str] | None = None,
        gpus: float | None = None,
        cpus: float | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> TrainingResult:
        """Run one training where ``retrain.pool`` says; move it when its allocation ends.

        Raises:
            PlacementError: no pool may take it (the rule named); ``RunInterruptedError`` when
                its allocation ended and none may take it on (the checkpoint is kept).
            Whatever ``train`` raises for a failure that is not the allocation's end.
        """
        selector = LabelSelector.parse(label_selector, field="retrain.where")
        run = _Run(*self._storage(Path(workdir)))
        while True:
            choice = self._choose(run, selector)
            attempt = _Attempt(
                pool=choice.pool,
                allocation=choice.allocation,
                why=choice.why,
                started_at=self._clock(),
                passed_over=list(choice.passed_over),
            )
            run.attempts.append(attempt)
            log.info("training run %s on the %s pool: %s", run.name, choice.pool, choice.why)
            try:
                result = self._train(
                    trainer,
                    train_x,
                    train_y,
                    base_model=base_model,
                    workdir=run.workdir,
                    label_selector=choice.selector,
                    gpus=gpus,
                    cpus=cpus,
                    config=config,
                    run_name=run.name,
                )
            except Exception as error:
                if choice.allocation is None or not self._gone(choice.allocation):
                    attempt.outcome = f"failed: {error}"
                    _tag(error, run.placement())
                    raise
                attempt.outcome = f"Slurm allocation {choice.allocation} ended mid-run"
                log.warning("training run %s: %s; moving it", run.name, attempt.outcome)
                run.ended.add(choice.allocation)
                if len(run.ended) > MAX_MOVES:
                    _tag(error, run.placement())
                    raise
                continue
            attempt.outcome = "finished"
            self._forget_resume(run.workdir)
            return replace(result, ray_info=dict(result.ray_info) | {"placement": run.placement()})

    def _choose(self, run: _Run, selector: LabelSelector) -> PoolChoice:
        """Return where the run's next attempt goes; once an allocation ended under it and
        nowhere may take it on, keep its storage for the next run and raise
        ``RunInterruptedError``."""
        try:
            return choose_pool(
                self._retrain,
                selector,
                self._nodes(),
                estimate_s=self._estimate_s(),
                now=self._clock(),
                rule_of=self._rule_of,
                exclude=frozenset(run.ended),
            )
        except PlacementError as refused:
            if not run.ended:
                _tag(refused, run.placement())
                raise
            self._keep_for_resume(run.workdir, run.name)
            raise RunInterruptedError(
                f"Slurm allocation {', '.join(sorted(run.ended))} ended mid-run; the checkpoint "
                f"is kept under {run.workdir} and the pipeline's next run resumes from it: "
                f"{refused}",
                placement=run.placement(),
            ) from refused

    def _gone(self, job_id: str) -> bool:
        """Return whether allocation ``job_id`` has no alive node left (waiting a little)."""
        deadline = time.monotonic() + self._gone_wait_s
        while True:
            if all(a.job_id != job_id for a in allocations_of(self._nodes())):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    def _storage(self, workdir: Path) -> tuple[Path, str, str | None]:
        """Return the run's storage and name: an interrupted run's, to resume it, else new."""
        resume = workdir.parent / RESUME_FILE
        try:
            kept = json.loads(resume.read_text())
            previous = Path(kept["workdir"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
            return workdir, workdir.name, None
        if not previous.is_dir():
            resume.unlink(missing_ok=True)
            return workdir, workdir.name, None
        return previous, str(kept["run_name"]), str(kept["run_name"])

    def _keep_for_resume(self, workdir: Path, run_name: str) -> None:
        path = workdir.parent / RESUME_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"workdir": str(workdir), "run_name": run_name}))

    def _forget_resume(self, workdir: Path) -> None:
        (workdir.parent / RESUME_FILE).unlink(missing_ok=True)


def placement_of(error: BaseException) -> dict[str, Any] | None:
    """Return what ran where before ``error`` ended a pooled run (None: not a pooled run)."""
    found = getattr(error, _PLACEMENT, None)
    return found if isinstance(found, dict) else None


_PLACEMENT = "continuum_placement"


def _tag(error: BaseException, placement: dict[str, Any]) -> None:
    """Make ``error`` carry ``placement`` (``placement_of`` reads it), to re-raise it as is."""
    setattr(error, _PLACEMENT, placement)


def _ray_nodes() -> list[dict[str, Any]]:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return nodes
