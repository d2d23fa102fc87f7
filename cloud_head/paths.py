"""Where one tenant's cloud state lives: the directories, and the registry's database URL.

``HeadPaths`` is the one answer to "where is the state?" for the Ray actors (it crosses Ray
pickled, so it stays a small frozen dataclass) and for the operator commands, which is why
it lives apart from the actors: a command reading the registry need not import Ray.

Everything under the root is a tenant's data or a secret, so it is owner-only: folders 0700
(``create_private``, at deploy), files 0600 (each store makes its own with
``continuum._fs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_head._database import parse_url
from cloud_head.settings import REGISTRY_URL_ENV as REGISTRY_URL_ENV  # its home is settings
from cloud_head.settings import registry_url_from_env
from continuum._fs import private_dir

if TYPE_CHECKING:
    from cloud_head.registry import ModelRegistry


@dataclass(frozen=True)
class HeadPaths:
    """Where one tenant's cloud state lives (local paths; S3/PostgreSQL in production).

    ``registry_url`` is the model registry's database (``cloud_head.registry.ModelRegistry``
    says which URLs). ``CloudSettings.paths()`` gives it from the settings; left out, it is
    the settings' environment's (``registry_url_from_env``) when the paths are made, so the
    actors they are handed to use the database the driver was configured with, whatever
    their own environment. ``registry_url=None`` given explicitly means SQLite under the
    root. It is left out of ``repr`` since it may hold a password.

    Raises:
        ConfigError: ``registry_url`` is not a URL the registry accepts (checked here, so a
            deployment fails before any actor starts).
    """

    root: Path
    registry_url: str | None = field(default_factory=registry_url_from_env, repr=False)

    def __post_init__(self) -> None:
        if self.registry_url is not None:
            parse_url(self.registry_url)

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def seen_db(self) -> Path:
        return self.state / "ingest-seen.sqlite3"

    @property
    def labels_db(self) -> Path:
        return self.state / "labels.sqlite3"

    def fleet_db(self, tenant: str) -> Path:
        """The fleet registry of ``tenant``: a file each, so no tenant lists another's nodes."""
        return self.state / f"fleet-{tenant}.sqlite3"

    @property
    def registry(self) -> Path:
        """The model registry's directory: its artifacts, and its SQLite file by default."""
        return self.root / "registry"

    def open_registry(self) -> ModelRegistry:
        """Open the model registry: artifacts under ``registry``, metadata at ``registry_url``.

        Every process that opens the registry goes through here, so the controller, the
        teacher and the operator commands all read and write the same database.
        """
        from cloud_head.registry import ModelRegistry

        return ModelRegistry(self.registry, url=self.registry_url)

    @property
    def audit(self) -> Path:
        """The per-tenant audit logs (``continuum audit --root ROOT`` reads them here)."""
        return self.root / "audit"

    @property
    def tenants(self) -> Path:
        """The tenant registry (``continuum tenant --root ROOT``); its quotas apply if present."""
        return self.root / "tenants"

    def controller(self, tenant: str, pipeline: str) -> Path:
        """A pipeline controller's own state (two tenants may name pipelines alike)."""
        return self.root / "controllers" / tenant / pipeline

    def create_private(self) -> None:
        """Create the root and its state folders owner-only (0700) where they are missing.

        A deploy calls this before any service writes, so a store, log or database made
        below later sits in a folder no other user can enter, whatever mode its own code
        gives it. Folders that exist keep their mode (``continuum._fs.private_dir``).
        """
        for folder in (
            self.state,
            self.store,
            self.audit,
            self.registry,
            self.root / "controllers",
        ):
            private_dir(folder)
