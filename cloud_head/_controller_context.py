"""What a pipeline controller is wired to: its tenant's stores, the broker, its signer and
settings.

``ControllerStores`` is what a ``PipelineController`` is given to read and write;
``ControllerContext`` is everything fixed for its lifetime, built once by the controller and
shared by its parts (the retrain trigger, the retraining run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from cloud_head.artifacts import RetainedPublish
    from cloud_head.audit import AuditTrail
    from cloud_head.fleet import FleetRegistry
    from cloud_head.labelling import LabelStore
    from cloud_head.registry import ModelRegistry
    from cloud_head.settings import ControllerSettings
    from cloud_head.signer import ReleaseSigner
    from cloud_head.store import SampleStore
    from cloud_head.tenants import Quotas
    from cloud_head.training import TrainingResult
    from continuum.labels import LabelSelector
    from continuum.residency import TrainingPlan
    from continuum.spec import PipelineSpec

__all__ = ["ControllerContext", "ControllerStores", "TrainFunction"]


class TrainFunction(Protocol):
    """Trains a candidate and hands back its files: ``cloud_head.training.run_training``."""

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
    ) -> TrainingResult: ...


@dataclass(frozen=True, kw_only=True)
class ControllerStores:
    """The tenant's stores a pipeline controller reads and writes.

    ``audit``: the tenant's audit trail; every training, gate, registration, signature and
    rollout step is recorded there first (None: nothing is recorded).
    """

    registry: ModelRegistry
    store: SampleStore
    labels: LabelStore
    fleet: FleetRegistry
    audit: AuditTrail | None = None


@dataclass(frozen=True, kw_only=True)
class ControllerContext:
    """Everything one pipeline's controller is wired to for its lifetime.

    ``quotas`` returns the tenant's quotas now (a registry read; None or a None result:
    unlimited); ``training_selector`` is where the Ray Train job may run; ``publish`` sends
    desired state and artifacts retained; ``train`` runs one training (Ray Train);
    ``signer`` signs artifacts and desired states (the tenant's signer: the controller never
    holds the key).
    """

    spec: PipelineSpec
    stores: ControllerStores
    publish: RetainedPublish
    train: TrainFunction
    signer: ReleaseSigner
    code_version: str
    workdir: Path
    training_selector: LabelSelector
    settings: ControllerSettings
    clock: Callable[[], float]
    quotas: Callable[[], Quotas | None] | None = None
    training_plan: TrainingPlan | None = None
