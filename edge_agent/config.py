"""The edge agent's configuration: one YAML file plus ``CONTINUUM_EDGE_*`` overrides.

``AgentSettings.load(path)`` is the only way the agent reads its settings; it
turns every problem into one ``ConfigError`` that lists one line per problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from continuum.errors import ConfigError, ProtocolError, SpecError
from continuum.residency import load_policy
from continuum.wire import mqtt, topics
from continuum.wire.identities import node_identity

ENV_PREFIX = "CONTINUUM_EDGE_"

_IMPORT_REF = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
#: Shortest field-hashing salt: below it, pseudonyms could be reversed by hashing guesses.
MIN_SALT_BYTES = 16
#: Smallest outbox partition of one pipeline (64 pipelines at the smallest outbox_max_bytes).
MIN_PARTITION_BYTES = 1024
#: Rounding allowed when outbox_share values add up to exactly 1 (0.1 + 0.2 + 0.7 > 1).
_SHARE_SLACK = 1e-9


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BrokerSettings(mqtt.BrokerSettings):
    """The shared MQTT broker settings plus the edge link's reconnect backoff."""

    reconnect_min_s: float = Field(
        default=0.5, gt=0, le=60, description="First reconnect delay; doubles on each failure."
    )
    reconnect_max_s: float = Field(
        default=60.0, gt=0, le=3600, description="Cap of the reconnect delay (before jitter)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> BrokerSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if self.password is not None and self.username is None:
            raise ValueError("password given without username")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("tls_cert needs tls_ca (setting tls_ca turns TLS on)")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {str(path)!r} is not a file")
        return self


class SourceSettings(_Section):
    """Which frame source feeds a pipeline: an import reference and its keyword arguments."""

    ref: str = Field(
        pattern=_IMPORT_REF,
        description="Import reference 'module:Class' of a Source (see continuum.sources).",
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the source constructor (JSON)."
    )


class PipelineSettings(_Section):
    """One pipeline this node serves: its spec file, its frame source, its outbox share."""

    spec: Path = Field(description="Pipeline spec: a .py declaring one Pipeline, or .yaml/.json.")
    source: SourceSettings = Field(description="The frame source of this pipeline.")
    outbox_share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Fraction of outbox_max_bytes reserved for this pipeline's records; "
        "pipelines without one split what the declared shares leave, evenly.",
    )

    @field_validator("spec")
    @classmethod
    def _spec_exists(cls, value: Path) -> Path:
        if not value.is_file():
            what = "is a directory, not a file" if value.is_dir() else "does not exist"
            raise ValueError(f"pipeline spec file {str(value)!r} {what}")
        if value.suffix not in (".py", ".yaml", ".yml", ".json"):
            raise ValueError(f"pipeline spec {str(value)!r} must be a .py, .yaml or .json file")
        return value


def _check_label_keys(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if "/" not in key:
            raise ValueError(
                f"label key {key!r} is not domain-qualified: use 'continuum.io/{key}' "
                "or your own 'example.com/{key}'"
            )
    return value


class ResidencySettings(_Section):
    """Where this node's samples may go: the tenant's policy, the store, the hashing salt.

    At pipeline start the agent computes each pipeline's uplink plan from these and applies
    it to every selected sample before it is queued: fields the store may not hold are
    dropped or hashed, or the sample stays on the node.
    """

    policy: Path = Field(
        description="The tenant's residency policy YAML (see deploy/policy/residency.example.yaml)."
    )
    store_labels: dict[str, str] = Field(
        min_length=1,
        description="Labels of the cloud store this node uplinks to, e.g. "
        "continuum.io/jurisdiction: LU; the policy's storage rules are checked against them.",
    )
    salt_file: Path = Field(
        description=f"File holding the tenant's field-hashing salt ({MIN_SALT_BYTES}+ random "
        "bytes, the same on every node of the tenant; keep it as secret as a key).",
    )

    @field_validator("policy")
    @classmethod
    def _policy_loads(cls, value: Path) -> Path:
        try:
            load_policy(value)
        except SpecError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("store_labels")
    @classmethod
    def _store_label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_label_keys(value)

    @field_validator("salt_file")
    @classmethod
    def _salt_long_enough(cls, value: Path) -> Path:
        try:
            size = len(value.read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read the salt file {str(value)!r}: {exc}") from exc
        if size < MIN_SALT_BYTES:
            raise ValueError(
                f"the salt file {str(value)!r} holds {size} bytes; write at least "
                f"{MIN_SALT_BYTES} random bytes, e.g. "
                "python -c 'import secrets,sys; sys.stdout.buffer.write(secrets.token_bytes(32))'"
            )
        return value


class AgentSettings(BaseSettings):
    """Every setting of one edge agent; see ``docs`` in each field's description."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    node_id: str = Field(description="This node's id; one MQTT topic level, unique per tenant.")
    tenant: str = Field(description="The tenant this node belongs to (its topic prefix).")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels (continuum.io/tier, /site, ...) a pipeline's 'where' must match.",
    )
    broker: BrokerSettings = Field(
        default_factory=lambda: BrokerSettings.model_validate({}),
        description="The MQTT broker and session.",
    )
    state_dir: Path = Field(
        description="Durable state: outbox database, verified models, partial downloads."
    )
    pipelines: list[PipelineSettings] = Field(
        min_length=1, max_length=64, description="The pipelines this node serves."
    )
    trusted_public_key: Path = Field(
        description="PEM Ed25519 public key of the tenant; only models it signed are run."
    )
    metrics_host: str = Field(
        default="0.0.0.0", description="Address the Prometheus endpoint listens on."
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus endpoint port; 0 turns it off."
    )
    inference_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="ONNX Runtime intra-op threads per inference: lower latency for each "
        "batch. 1 leaves the box's other cores to its other work.",
    )
    inference_replicas: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Micro-batches each pipeline runs at once, each on its own ONNX Runtime "
        "session of the model. On CPUs this turns cores into frames/s for a busy camera "
        "better than intra-op threads do; each replica holds a copy of the weights.",
    )
    telemetry_interval_s: float = Field(
        default=10.0, ge=0.05, le=3600, description="Length of one telemetry window."
    )
    heartbeat_interval_s: float = Field(
        default=30.0, ge=1.0, le=3600, description="How often the retained status is refreshed."
    )
    outbox_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=64 * 1024,
        le=1024**4,
        description="Bound of the durable outbox; beyond it outbox_full_policy applies.",
    )
    outbox_ttl_s: float = Field(
        default=7 * 86_400.0,
        ge=1.0,
        le=365 * 86_400.0,
        description="Records older than this are dropped (counted) instead of sent.",
    )
    outbox_full_policy: Literal["drop_oldest", "drop_newest", "block"] = Field(
        default="drop_oldest",
        description="When the outbox is full: drop the oldest records, refuse the new one, or "
        "block the pipeline up to outbox_block_timeout_s and then refuse it.",
    )
    outbox_block_timeout_s: float = Field(
        default=5.0, ge=0.0, le=600, description="Longest wait of the 'block' policy."
    )
    outbox_synchronous: Literal["normal", "full"] = Field(
        default="normal",
        description="SQLite synchronous mode of the outbox (WAL): 'normal' survives any process "
        "crash; 'full' also survives power loss at one fsync per commit.",
    )
    confirm_stored: bool = Field(
        default=True,
        description="Keep each sample and delayed label in the outbox after the broker's "
        "PUBACK until ingest's receipt says it is stored (ctm/{tenant}/nodes/{node}/stored), so "
        "that a broker crash loses nothing; false deletes it at the PUBACK (for a cloud that "
        "sends no receipts).",
    )
    resend_unconfirmed_s: float = Field(
        default=120.0,
        ge=1.0,
        le=86_400.0,
        description="With confirm_stored, a sample or label the broker acknowledged but no "
        "receipt confirmed within this many seconds is sent again (ingest stores it once).",
    )
    max_inflight: int = Field(
        default=32, ge=1, le=65_535, description="Most QoS 1 publishes waiting for PUBACK."
    )
    uplink_batch_max_records: int = Field(
        default=64, ge=1, le=10_000, description="Most samples in one samples message."
    )
    uplink_batch_max_bytes: int = Field(
        default=512 * 1024,
        ge=1024,
        le=4 * 1024 * 1024,
        description="Most tensor bytes in one samples message (a single bigger sample still "
        "goes alone).",
    )
    artifact_stall_s: float = Field(
        default=10.0,
        ge=0.1,
        le=3600,
        description="A model download without progress for this long asks the broker again "
        "for the missing chunks; three such periods in a row after the manifest arrived "
        "reject the transfer as truncated (time offline does not count).",
    )
    keep_versions: int = Field(
        default=3, ge=1, le=100, description="Verified model versions kept per pipeline."
    )
    shutdown_timeout_s: float = Field(
        default=10.0, ge=0.0, le=300, description="Bound on draining and flushing at SIGTERM."
    )
    residency: ResidencySettings | None = Field(
        default=None,
        description="Residency policy applied to samples before they are queued; required "
        "when a pipeline declares input fields above its own data class.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it field by
        # field (nested values are deep-merged), so an operator can change one setting
        # of a packaged config without editing it.
        return env_settings, init_settings, file_secret_settings

    @field_validator("node_id", "tenant")
    @classmethod
    def _topic_level_name(cls, value: str, info: Any) -> str:
        try:
            return topics.check_name(value, "node" if info.field_name == "node_id" else "tenant")
        except ProtocolError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _broker_user_is_this_node(self) -> AgentSettings:
        # One identity per node (DESIGN.md §6): the broker's ACL lets edge.NODE@TENANT act
        # only as NODE, so a config naming another user cannot serve this node.
        expected = node_identity(self.tenant, self.node_id)
        if self.broker.username is not None and self.broker.username != expected:
            raise ValueError(
                f"broker.username is {self.broker.username!r}, but node {self.node_id!r} of "
                f"tenant {self.tenant!r} connects as its own identity {expected!r}; "
                f"`continuum node enroll {self.tenant} {self.node_id}` gives the node its "
                "credential (username and password)"
            )
        return self

    def client_id(self) -> str:
        """Return the MQTT client id: the node's identity where it authenticates (the broker
        binds the two), else a stable id naming tenant and node (an anonymous dev broker)."""
        if self.broker.username is not None or self.broker.tls_cert is not None:
            return node_identity(self.tenant, self.node_id)
        return f"ctm-edge-{self.tenant}-{self.node_id}"

    @field_validator("labels")
    @classmethod
    def _qualified_label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_label_keys(value)

    @field_validator("trusted_public_key")
    @classmethod
    def _key_exists(cls, value: Path) -> Path:
        if not value.is_file():
            what = "is a directory, not a file" if value.is_dir() else "does not exist"
            raise ValueError(f"trusted public key {str(value)!r} {what}")
        return value

    @field_validator("pipelines")
    @classmethod
    def _outbox_shares_fit(cls, value: list[PipelineSettings]) -> list[PipelineSettings]:
        declared = {i: p.outbox_share for i, p in enumerate(value) if p.outbox_share is not None}
        total = sum(declared.values())
        if total > 1 + _SHARE_SLACK:
            listed = ", ".join(f"pipelines.{i}: {share:g}" for i, share in declared.items())
            raise ValueError(
                f"the outbox_share values sum to {total:g} ({listed}); they are fractions of "
                "outbox_max_bytes and must not sum above 1"
            )
        undeclared = [f"pipelines.{i}" for i, p in enumerate(value) if p.outbox_share is None]
        if undeclared and total >= 1 - _SHARE_SLACK:
            raise ValueError(
                f"the outbox_share values sum to 1, leaving no outbox room for "
                f"{', '.join(undeclared)}; give them a share or lower the others"
            )
        return value

    @field_validator("outbox_max_bytes")
    @classmethod
    def _outbox_partitions_hold_something(cls, value: int, info: ValidationInfo) -> int:
        pipelines = info.data.get("pipelines")  # absent when they did not validate
        if not pipelines:
            return value
        sizes = _partition_bytes(value, [p.outbox_share for p in pipelines])
        small = [
            f"pipelines.{i}: {size}" for i, size in enumerate(sizes) if size < MIN_PARTITION_BYTES
        ]
        if small:
            raise ValueError(
                f"outbox partitions below {MIN_PARTITION_BYTES} bytes ({', '.join(small)}): "
                "raise outbox_max_bytes or those pipelines' outbox_share"
            )
        return value

    def outbox_partition_bytes(self) -> list[int]:
        """Return each pipeline's byte bound in the outbox, in the order of ``pipelines``.

        A pipeline with an ``outbox_share`` gets that fraction of ``outbox_max_bytes``; the
        others split the rest evenly.  Every pipeline owns its partition, so one pipeline's
        backlog never evicts or blocks another's records.
        """
        return _partition_bytes(self.outbox_max_bytes, [p.outbox_share for p in self.pipelines])

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> AgentSettings:
        """Read the YAML file at ``path``, apply ``CONTINUUM_EDGE_*`` overrides and validate.

        Relative paths inside the file are taken relative to the file's folder.
        ``overrides`` (used by tests and tools) win over the file but not over the
        environment.

        Raises:
            ConfigError: one line per problem, naming the setting.
        """
        data: dict[str, Any] = {}
        where = "environment"
        if path is not None:
            file = Path(path)
            where = str(file)
            try:
                text = file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read edge agent config {where}: {exc}") from exc
            try:
                loaded = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"edge agent config {where} is not valid YAML: {exc}") from exc
            if loaded is None:
                loaded = {}
            if not isinstance(loaded, dict):
                raise ConfigError(
                    f"edge agent config {where} must be a mapping of settings, "
                    f"got {type(loaded).__name__}"
                )
            data = _resolve_paths(loaded, file.resolve().parent)
        data.update(overrides)
        unknown = _unknown_variables(os.environ, cls.model_fields)
        if unknown:
            raise ConfigError(
                f"invalid edge agent config ({where}): unknown variable(s) "
                f"{', '.join(unknown)}; {ENV_PREFIX}* variables set settings "
                f"({ENV_PREFIX}NODE_ID, {ENV_PREFIX}BROKER__HOST, ...): fix the name or unset it"
            )
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, where)) from exc
        except SettingsError as exc:
            field = re.search(r'field "([^"]+)"', str(exc))
            name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else f"a {ENV_PREFIX}* variable"
            raise ConfigError(
                f"invalid edge agent config ({where}): {name} cannot be parsed: a setting that "
                "holds a mapping or a list takes JSON, e.g. "
                f'{ENV_PREFIX}LABELS=\'{{"continuum.io/site": "lux-1"}}\''
            ) from exc


def _unknown_variables(environ: Mapping[str, str], fields: Mapping[str, Any]) -> list[str]:
    """Return the ``CONTINUUM_EDGE_*`` variables that name no setting (a misspelt one would
    otherwise be ignored, where a misspelt key in the file is refused)."""
    known = {name.upper() for name in fields}
    return sorted(
        key
        for key in environ
        if key.upper().startswith(ENV_PREFIX)
        and key.upper()[len(ENV_PREFIX) :].split("__", 1)[0] not in known
    )


def _partition_bytes(total: int, shares: list[float | None]) -> list[int]:
    """Split ``total`` bytes: declared shares first, the rest evenly among the others."""
    declared = [None if share is None else int(total * share) for share in shares]
    excess = sum(size for size in declared if size is not None) - total
    if excess > 0:  # shares summing to 1 within _SHARE_SLACK: trim the largest to fit
        largest = max(range(len(declared)), key=lambda i: declared[i] or 0)
        declared[largest] = (declared[largest] or 0) - excess
    undeclared = declared.count(None)
    rest = max(0, total - sum(size for size in declared if size is not None))
    even = rest // undeclared if undeclared else 0
    return [even if size is None else size for size in declared]


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Return ``data`` with its relative file paths made absolute against ``base``."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(base / value)
        return value

    out = dict(data)
    for key in ("state_dir", "trusted_public_key"):
        if key in out:
            out[key] = fix(out[key])
    broker = out.get("broker")
    if isinstance(broker, dict):
        out["broker"] = {
            key: fix(value) if key in ("tls_ca", "tls_cert", "tls_key") else value
            for key, value in broker.items()
        }
    residency = out.get("residency")
    if isinstance(residency, dict):
        out["residency"] = {
            key: fix(value) if key in ("policy", "salt_file") else value
            for key, value in residency.items()
        }
    pipelines = out.get("pipelines")
    if isinstance(pipelines, list):
        out["pipelines"] = [
            {**item, "spec": fix(item["spec"])}
            if isinstance(item, dict) and "spec" in item
            else item
            for item in pipelines
        ]
    return out


def _describe(exc: ValidationError, where: str) -> str:
    lines = [f"invalid edge agent config ({where}), {exc.error_count()} problem(s):"]
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if error["type"] == "missing":
            env = ENV_PREFIX + "__".join(str(p) for p in error["loc"]).upper()
            message = f"required setting is missing (set it in the file or as {env})"
        elif error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling)"
        elif "input" in error and not isinstance(error["input"], dict | list):
            shown = repr(error["input"])
            if "password" in loc:
                shown = "'***'"
            if len(shown) > 60:
                shown = shown[:57] + "..."
            message = f"{message} (got {shown})"
        lines.append(f"  {loc}: {message}")
    return "\n".join(lines)
