"""continuum's cloud head: one tenant's central services on Ray, configured by ``CloudSettings``.

The public surface is what ``__all__`` names: the settings, ``CloudHead`` (deploy and stop
the services), and the stores and services the operator commands and tools read: ingest,
fleet, sample store, labels, model registry, audit log, tenants, the pipeline's controller
and rollout. Everything else is internal. The names load on first use, so that
``import cloud_head`` (or reading its settings) does not import Ray, torch or pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud_head.artifacts import publish_artifact, retained_publisher
    from cloud_head.audit import (
        AuditAction,
        AuditLog,
        AuditRecord,
        AuditTrail,
        AuditWriteError,
        default_actor,
    )
    from cloud_head.controller import ControllerStores, PipelineController
    from cloud_head.desired_state import DesiredStateBook
    from cloud_head.fleet import FleetRegistry, FleetWorker, NodeInfo
    from cloud_head.ingest import IngestService, IngestWorker
    from cloud_head.labelling import LabelStore, review_queue
    from cloud_head.model_card import export_model
    from cloud_head.paths import REGISTRY_URL_ENV, HeadPaths
    from cloud_head.registry import ModelRegistry, ModelVersion
    from cloud_head.rollout import RolloutController, RolloutState
    from cloud_head.services import CloudHead
    from cloud_head.settings import CloudSettings, ControllerSettings, TeacherSettings
    from cloud_head.store import Compactor, SampleStore, to_numpy
    from cloud_head.teacher import Teacher
    from cloud_head.tenants import (
        QuotaExceededError,
        Quotas,
        TenantCredentials,
        TenantRegistry,
        registry_exists,
    )
    from cloud_head.training import TrainingError, TrainingResult, run_training

#: Each public name and the module it lives in (imported when the name is first used).
_HOMES: dict[str, str] = {
    "CloudSettings": "cloud_head.settings",
    "ControllerSettings": "cloud_head.settings",
    "TeacherSettings": "cloud_head.settings",
    "HeadPaths": "cloud_head.paths",
    "REGISTRY_URL_ENV": "cloud_head.paths",
    "CloudHead": "cloud_head.services",
    "IngestService": "cloud_head.ingest",
    "IngestWorker": "cloud_head.ingest",
    "FleetRegistry": "cloud_head.fleet",
    "FleetWorker": "cloud_head.fleet",
    "NodeInfo": "cloud_head.fleet",
    "SampleStore": "cloud_head.store",
    "Compactor": "cloud_head.store",
    "to_numpy": "cloud_head.store",
    "LabelStore": "cloud_head.labelling",
    "review_queue": "cloud_head.labelling",
    "ModelRegistry": "cloud_head.registry",
    "ModelVersion": "cloud_head.registry",
    "AuditAction": "cloud_head.audit",
    "AuditLog": "cloud_head.audit",
    "AuditRecord": "cloud_head.audit",
    "AuditTrail": "cloud_head.audit",
    "AuditWriteError": "cloud_head.audit",
    "default_actor": "cloud_head.audit",
    "TenantRegistry": "cloud_head.tenants",
    "TenantCredentials": "cloud_head.tenants",
    "Quotas": "cloud_head.tenants",
    "QuotaExceededError": "cloud_head.tenants",
    "registry_exists": "cloud_head.tenants",
    "export_model": "cloud_head.model_card",
    "PipelineController": "cloud_head.controller",
    "ControllerStores": "cloud_head.controller",
    "RolloutController": "cloud_head.rollout",
    "RolloutState": "cloud_head.rollout",
    "DesiredStateBook": "cloud_head.desired_state",
    "publish_artifact": "cloud_head.artifacts",
    "retained_publisher": "cloud_head.artifacts",
    "run_training": "cloud_head.training",
    "TrainingResult": "cloud_head.training",
    "TrainingError": "cloud_head.training",
    "Teacher": "cloud_head.teacher",
}

__all__ = [
    "REGISTRY_URL_ENV",
    "AuditAction",
    "AuditLog",
    "AuditRecord",
    "AuditTrail",
    "AuditWriteError",
    "CloudHead",
    "CloudSettings",
    "Compactor",
    "ControllerSettings",
    "ControllerStores",
    "DesiredStateBook",
    "FleetRegistry",
    "FleetWorker",
    "HeadPaths",
    "IngestService",
    "IngestWorker",
    "LabelStore",
    "ModelRegistry",
    "ModelVersion",
    "NodeInfo",
    "PipelineController",
    "QuotaExceededError",
    "Quotas",
    "RolloutController",
    "RolloutState",
    "SampleStore",
    "Teacher",
    "TeacherSettings",
    "TenantCredentials",
    "TenantRegistry",
    "TrainingError",
    "TrainingResult",
    "default_actor",
    "export_model",
    "publish_artifact",
    "registry_exists",
    "retained_publisher",
    "review_queue",
    "run_training",
    "to_numpy",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used; cache the name here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'cloud_head' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
