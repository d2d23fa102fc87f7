"""The cloud head's configuration: one ``CloudSettings``, read from ``CONTINUUM_CLOUD_*``.

``CloudSettings`` is to the cloud what ``edge_agent.config.AgentSettings`` is to the edge: the
one place the cloud head's services, their actors and the operator commands read their
settings from, and the only place of ``cloud_head`` that reads the environment. Values given
as keywords win over the environment; nested sections take ``__`` in their variables
(``CONTINUUM_CLOUD_BROKER__HOST``, ``CONTINUUM_CLOUD_CONTROLLER__TICK_INTERVAL_S``).

The model registry's database keeps its older variable too: ``CONTINUUM_REGISTRY_URL`` is
read when ``CONTINUUM_CLOUD_REGISTRY_URL`` is not set.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from cloud_head._database import parse_url
from continuum.errors import ConfigError
from continuum.wire.identities import MAX_INGEST_REPLICAS, control_identity, ingest_identity
from continuum.wire.messages import TenantName
from continuum.wire.mqtt import BrokerSettings

if TYPE_CHECKING:
    from cloud_head.paths import HeadPaths

__all__ = [
    "ENV_PREFIX",
    "REGISTRY_URL_ENV",
    "CloudSettings",
    "ControllerSettings",
    "TeacherSettings",
    "registry_url_from_env",
]

ENV_PREFIX = "CONTINUUM_CLOUD_"
#: The model registry's database URL, the variable older deployments set (still read).
REGISTRY_URL_ENV = "CONTINUUM_REGISTRY_URL"
#: 64 KiB chunks keep every message far below broker limits and lose little on a drop.
DEFAULT_CHUNK_BYTES = 64 * 1024
#: Largest artifact chunk: one MQTT message (``continuum.wire.messages.MAX_CHUNK_BYTES``).
_MAX_CHUNK_BYTES = 16 * 1024**2

_REGISTRY_URL_ALIASES = AliasChoices(f"{ENV_PREFIX}REGISTRY_URL", REGISTRY_URL_ENV)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ControllerSettings(_Section):
    """How each pipeline's controller paces its loop (trigger, retrain, gate, rollout)."""

    tick_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="How often the controller advances its rollout and checks the retrain trigger.",
    )
    quota_retry_s: float = Field(
        default=300.0,
        ge=0,
        le=7 * 86_400.0,
        description="After a retrain is refused for the tenant's GPU-hours quota, the trigger "
        "is not tried again for this long (an operator's `continuum retrain` still is).",
    )
    serve_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=86_400.0,
        description="A rollout step whose new nodes serve none of the candidate within this "
        "long is rolled back.",
    )
    artifact_chunk_bytes: int = Field(
        default=DEFAULT_CHUNK_BYTES,
        ge=1024,
        le=_MAX_CHUNK_BYTES,
        description="Size of one retained MQTT message of a model artifact (larger chunks are "
        "used where an artifact would otherwise need more than 65,536).",
    )
    stop_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How long stopping a controller waits for a training run in progress.",
    )


class TeacherSettings(_Section):
    """How a pipeline's cloud teacher (label source ``teacher``) labels new samples."""

    interval_s: float = Field(
        default=10.0, gt=0, le=86_400.0, description="Time between two labelling passes."
    )
    accept_confidence: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="A teacher label at or above this confidence is accepted at once; the "
        "others go to the review queue as proposals.",
    )


class CloudSettings(BaseSettings):
    """Every setting of one tenant's cloud head; each field's description says what it does.

    ``tenant`` and ``root`` have no default: a production head names them, and a command that
    needs one says so (``require_tenant``, ``require_root``).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
        populate_by_name=True,
    )

    tenant: TenantName | None = Field(
        default=None,
        description="The tenant this head serves: its Ray namespace, topic prefix, store "
        "partition and audit log.",
    )
    root: Path | None = Field(
        default=None,
        description="The cloud head's state directory: sample store, registry artifacts, "
        "fleet and label databases, audit logs, tenant registry.",
    )
    registry_url: str | None = Field(
        default=None,
        validation_alias=_REGISTRY_URL_ALIASES,
        repr=False,  # may hold a password
        description="The model registry's database: postgresql://USER:PASSWORD@HOST:PORT/DB "
        "or sqlite:///PATH; unset: SQLite under root/registry. Also read from "
        f"{REGISTRY_URL_ENV}.",
    )
    broker: BrokerSettings = Field(
        default_factory=lambda: BrokerSettings.model_validate({}),
        description="The MQTT broker the services connect to (host, port, TLS). With a tenant "
        "registry each service connects as its own identity (service_broker); without one, "
        "with the username and password given here.",
    )
    code_version: str = Field(
        default="unknown",
        min_length=1,
        max_length=200,
        description="Which code deploys (a git describe, a package version): recorded with "
        "every deploy and every registered model.",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="The tenant's Ed25519 private key (PEM), held by the tenant's signer "
        "alone: signs models and desired state and seals the audit log.",
    )
    policy_file: Path | None = Field(
        default=None,
        description="The residency policy YAML every pipeline is checked against at deploy; "
        "unset: no residency check (recorded as such).",
    )
    store_labels: dict[str, str] | None = Field(
        default=None,
        description="Labels of where the sample store lives (e.g. continuum.io/jurisdiction: "
        "LU), for the store, uplink and training decisions; unset: decided per node at ingest.",
    )
    tenants_root: Path | None = Field(
        default=None,
        description="The tenant registry whose quotas apply (edge nodes, samples per day, "
        "training GPU-hours); unset: root/tenants when it holds one, else unlimited.",
    )
    ingest_replicas: int = Field(
        default=1,
        ge=1,
        le=MAX_INGEST_REPLICAS,
        description="Ingest actors sharing the samples subscription; each connects to the "
        "broker as its own identity, made in advance for up to "
        f"{MAX_INGEST_REPLICAS} (continuum.wire.identities).",
    )
    ready_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How long a deploy waits for every service to answer before it fails.",
    )
    seal_interval_s: float = Field(
        default=1.0,
        ge=0.05,
        le=3600,
        description="How often the tenant's signer seals its audit log (checks the chain and "
        "signs the head): records younger than this can be removed undetected by whoever can "
        "write the file.",
    )
    controller: ControllerSettings = Field(
        default_factory=ControllerSettings, description="Each pipeline controller's pacing."
    )
    teacher: TeacherSettings = Field(
        default_factory=TeacherSettings, description="Each cloud teacher's labelling."
    )

    @field_validator("registry_url", mode="before")
    @classmethod
    def _registry_url(cls, value: Any) -> Any:
        if value == "":  # an exported but empty variable: SQLite under the root, as unset
            return None
        if isinstance(value, str):
            parse_url(value)  # ConfigError is a ValueError: reported naming the setting
        return value

    @classmethod
    def load(cls, **values: Any) -> CloudSettings:
        """Read ``CONTINUUM_CLOUD_*`` with ``values`` winning over it, and validate.

        Raises:
            ConfigError: one line per problem, naming the setting and its variable.
        """
        try:
            return cls(**values)
        except ValidationError as error:
            raise ConfigError(_describe(error)) from error
        except SettingsError as error:
            raise ConfigError(
                f"invalid cloud head settings: {error}; a setting that holds a mapping takes "
                f'JSON, e.g. {ENV_PREFIX}STORE_LABELS=\'{{"continuum.io/jurisdiction": "LU"}}\''
            ) from error

    def require_tenant(self) -> str:
        """Return the tenant, or raise ``ConfigError`` saying how to name one."""
        if self.tenant is None:
            raise ConfigError(
                f"no tenant given: pass --tenant NAME or set {ENV_PREFIX}TENANT (the tenant "
                "whose services, data and audit log the command acts on)"
            )
        return self.tenant

    def require_root(self) -> Path:
        """Return the state directory, or raise ``ConfigError`` saying how to name one."""
        if self.root is None:
            raise ConfigError(
                f"no cloud head state directory given: pass --root DIR or set {ENV_PREFIX}ROOT "
                "(for a demo run: <workdir>/cloud)"
            )
        return self.root

    def paths(self) -> HeadPaths:
        """Return where this head's state lives: ``root``, and the registry's database URL.

        Raises:
            ConfigError: ``root`` is not set.
        """
        from cloud_head.paths import HeadPaths

        return HeadPaths(self.require_root(), registry_url=self.registry_url)

    def quota_root(self) -> Path | None:
        """Return the tenant registry whose quotas apply, or None (unlimited) without one."""
        if self.tenants_root is not None:
            return self.tenants_root
        from cloud_head.tenants import registry_exists

        default = self.paths().tenants
        return default if registry_exists(default) else None

    def service_broker(
        self, role: Literal["ingest", "control"], replica: int = 0
    ) -> tuple[BrokerSettings, str]:
        """Return the broker settings and client id a cloud service connects with.

        The unit of trust is the connection (DESIGN.md §6): ingest replica ``replica``
        connects as ``ingest.{replica}@TENANT`` and the fleet (which also publishes for the
        controllers) as ``control@TENANT``, with what the tenant registry keeps in
        ``service_credentials_dir``: the identity's client certificate and key where
        ``continuum certs service`` issued them (the production broker takes only
        certificates; host, port and ``tls_ca`` stay those of ``broker``), else the role's
        password.  Without a registry (``tenants_root`` unset, or a registry from before
        service identities, with no credentials folder for the tenant: an anonymous
        development broker) ``broker`` is returned unchanged.  The client id is the identity
        either way: the broker binds one to the other, so one identity is one connection.

        With a certificate an ingest replica still carries the ingest password: the broker
        takes the certificate's CN as the username and discards what the client sends
        (``use_identity_as_username``), and the worker names its share group by that secret
        (``cloud_head.tenants.ingest_share_group``), which no node can guess.

        Raises:
            ConfigError: no tenant set; a certificate without its key or the reverse; a
                certificate without ``broker.tls_ca``; or the role's password file is
                missing or unreadable where it is needed.
        """
        tenant = self.require_tenant()
        identity = (
            ingest_identity(tenant, replica) if role == "ingest" else control_identity(tenant)
        )
        folder = self._service_credentials_dir(tenant)
        if folder is None:
            return self.broker, identity
        from cloud_head._tenant_identities import read_service_password

        certificate = self._service_certificate(folder, identity)
        if certificate is None:
            password = read_service_password(folder, role)
            update: dict[str, Any] = {"username": identity, "password": password}
        else:
            cert, key = certificate
            secret = read_service_password(folder, "ingest") if role == "ingest" else None
            update = {"username": identity, "password": secret, "tls_cert": cert, "tls_key": key}
        return self.broker.model_copy(update=update), identity

    def _service_certificate(self, folder: Path, identity: str) -> tuple[Path, Path] | None:
        """Return (certificate, key) of ``identity`` in ``folder``, or None where it has none.

        Raises:
            ConfigError: only one of the two files is there, or ``broker.tls_ca`` is unset.
        """
        from cloud_head._tenant_identities import service_certificate_files

        cert, key = service_certificate_files(folder, identity)
        if not cert.exists() and not key.exists():
            return None
        if not (cert.exists() and key.exists()):
            present, absent = (cert, key) if cert.exists() else (key, cert)
            raise ConfigError(
                f"{present} is there but {absent} is not: a client certificate needs its key; "
                f"issue both again with `continuum certs service --tenant {self.tenant}`"
            )
        if self.broker.tls_ca is None:
            raise ConfigError(
                f"{identity} has a client certificate ({cert}) but the broker has no TLS: set "
                f"{ENV_PREFIX}BROKER__TLS_CA to the CA bundle of the broker's server "
                "certificate (mutual TLS), or remove the certificate for a password broker"
            )
        return cert, key

    def _service_credentials_dir(self, tenant: str) -> Path | None:
        """Return the folder of ``tenant``'s service credentials, or None without one."""
        if self.tenants_root is None:
            return None
        from cloud_head import tenants

        folder: Path = tenants.service_credentials_dir(self.tenants_root, tenant)
        return folder if folder.is_dir() else None

    def signing_key(self) -> bytes:
        """Return the tenant's private key PEM from ``signing_key_file``.

        Raises:
            ConfigError: no ``signing_key_file`` set, or it cannot be read.
        """
        if self.signing_key_file is None:
            raise ConfigError(
                f"no signing key given: set {ENV_PREFIX}SIGNING_KEY_FILE to the tenant's "
                "Ed25519 private key (PEM), e.g. the one `continuum tenant create` wrote"
            )
        try:
            return self.signing_key_file.read_bytes()
        except OSError as error:
            raise ConfigError(
                f"signing key {self.signing_key_file}: {error.strerror}; point "
                f"{ENV_PREFIX}SIGNING_KEY_FILE at the tenant's private key"
            ) from error


class _RegistryEnvironment(BaseSettings):
    """Only the registry URL's variables: reading them must not fail on another setting."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    registry_url: str | None = Field(default=None, validation_alias=_REGISTRY_URL_ALIASES)


def registry_url_from_env() -> str | None:
    """Return the registry URL the environment sets, or None (SQLite under the root).

    ``CONTINUUM_CLOUD_REGISTRY_URL`` wins over ``CONTINUUM_REGISTRY_URL``; an empty one
    counts as unset.
    """
    return _RegistryEnvironment().registry_url or None


def _describe(error: ValidationError) -> str:
    lines = [f"invalid cloud head settings, {error.error_count()} problem(s):"]
    for problem in error.errors(include_url=False):
        parts = [str(part) for part in problem["loc"]]
        if parts and parts[0].startswith(ENV_PREFIX):  # read through an alias: its variable
            parts[0] = parts[0].removeprefix(ENV_PREFIX).lower()
        loc = ".".join(parts) or "(top level)"
        message = re.sub(r"^Value error, ", "", problem["msg"])
        if problem["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling)"
        variable = ENV_PREFIX + "__".join(parts).upper()
        if parts == ["registry_url"]:
            variable += f" or {REGISTRY_URL_ENV}"
        lines.append(f"  {loc} ({variable}): {message}")
    return "\n".join(lines)
