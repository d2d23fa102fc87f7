"""The residency policy as declared: each data class's processing and storage rule, per tenant.

``ResidencyPolicy`` validates the YAML (short label keys, the processing/storage shorthand,
every class named) and answers which rule applies; the decisions made with it live in the
sibling modules of ``continuum.residency``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from continuum._loading import located, model_from_mapping, model_from_yaml
from continuum._validation import join_path, raw_message
from continuum.errors import SpecError
from continuum.labels import KNOWN_KEYS, PREFIX, LabelSelector
from continuum.spec import API_VERSION, DataClass
from continuum.wire.topics import check_name

Purpose = Literal["processing", "storage"]
FieldAction = Literal["drop", "hash", "keep_at_edge"]

#: Short names a policy may use for the continuum.io/ label keys: ``jurisdiction: [LU]``.
_SHORT_KEYS: Final = {key.removeprefix(PREFIX): key for key in KNOWN_KEYS}
_RULE_KEYS: Final = ("same_site",)
_SPLIT_KEYS: Final = ("processing", "storage")

_EXAMPLE = "deploy/policy/residency.example.yaml"
_KIND = "a residency policy"


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlacementRule(_Spec):
    """Where data may be: every ``labels`` key must carry one of its values on the node.

    ``same_site``: only nodes whose ``continuum.io/site`` is the site the data was captured
    at.  An empty rule allows any node.
    """

    same_site: bool = Field(default=False, description="Never leave the capture site.")
    labels: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="Label key -> allowed values; the node needs one."
    )

    def is_empty(self) -> bool:
        """Return whether the rule allows any node."""
        return not self.same_site and not self.labels


class ClassPolicy(_Spec):
    """The rule for one data class: where it may be processed and where stored.

    YAML shorthand: ``{jurisdiction: [LU]}`` (or ``{same_site: true}``) applies to both;
    ``{processing: {...}, storage: {...}}`` splits them (a missing one copies the other).
    ``field_action``: what uplink does to a field of this class the store may not hold.
    """

    processing: PlacementRule
    storage: PlacementRule
    field_action: FieldAction | None = Field(
        default=None, description="drop, hash or keep_at_edge; null: the default action."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if value is None:
            value = {}
        if isinstance(value, ClassPolicy):
            return value
        if not isinstance(value, Mapping):
            raise SpecError(
                f"a class rule is a mapping, got {type(value).__name__}",
                fix="write e.g. {jurisdiction: [LU]}, {same_site: true} or {} for anywhere",
            )
        data = dict(value)
        result: dict[str, Any] = {}
        if "field_action" in data:
            result["field_action"] = data.pop("field_action")
        split = {k: data.pop(k) for k in _SPLIT_KEYS if k in data}
        if split and data:
            raise SpecError(
                f"mixes processing/storage with {', '.join(map(str, data))}",
                field=str(next(iter(data))),
                fix="put every constraint under processing: and storage:, or use neither",
            )
        if split:
            processing = split.get("processing", split.get("storage"))
            storage = split.get("storage", processing)
            result["processing"] = _rule_data(processing, "processing")
            result["storage"] = _rule_data(storage, "storage")
        else:
            rule = _rule_data(data, "")
            result["processing"] = result["storage"] = rule
        return result

    def rule(self, purpose: Purpose) -> PlacementRule:
        """Return the processing or storage rule."""
        return self.processing if purpose == "processing" else self.storage


def _rule_data(value: Any, path: str) -> dict[str, Any]:
    """Turn ``{same_site: true, jurisdiction: [LU]}`` into ``PlacementRule`` fields."""
    if value is None:
        value = {}
    if isinstance(value, PlacementRule):
        return value.model_dump()
    if not isinstance(value, Mapping):
        raise SpecError(
            f"a rule is a mapping, got {type(value).__name__}",
            field=path or None,
            fix="write e.g. {jurisdiction: [LU]} or {same_site: true}",
        )
    if isinstance(value.get("labels"), Mapping):
        # The canonical form, as model_dump writes it: {same_site: ..., labels: {...}}.
        value = {**{k: v for k, v in value.items() if k != "labels"}, **value["labels"]}
    result: dict[str, Any] = {"labels": {}}
    for raw_key, raw_values in value.items():
        where = join_path(path, str(raw_key))
        if raw_key == "same_site":
            if not isinstance(raw_values, bool):
                raise SpecError(
                    f"must be true or false, got {raw_values!r}", field=where, fix="same_site: true"
                )
            result["same_site"] = raw_values
            continue
        key = _label_key(raw_key, where)
        result["labels"][key] = _label_values(key, raw_values, where)
    return result


def _label_key(raw: object, where: str) -> str:
    if not isinstance(raw, str):
        raise SpecError(f"{raw!r} is not a label key", field=where, fix="quote it")
    if raw in _SHORT_KEYS:
        return _SHORT_KEYS[raw]
    if "/" in raw:
        _check_label(raw, "x", where)
        return raw
    choices = [*_SHORT_KEYS, *_RULE_KEYS, *_SPLIT_KEYS, "field_action"]
    close = difflib.get_close_matches(raw, choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise SpecError(
        f"{raw!r} is neither a label key nor a rule option",
        field=where,
        fix=f"{hint}use same_site, field_action, one of {', '.join(sorted(_SHORT_KEYS))} "
        "or a custom key with a domain, e.g. example.com/region",
    )


def _check_label(key: str, value: str, where: str) -> None:
    """Check ``key`` and ``value`` with the selector's rules; report them at ``where``."""
    try:
        LabelSelector.parse({key: value})
    except SpecError as error:
        raise SpecError(raw_message(error), field=where, fix=error.fix) from error


def _label_values(key: str, raw: object, where: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not items:
        raise SpecError(
            f"must list the allowed values, got {raw!r}",
            field=where,
            fix=f"write e.g. {key.removeprefix(PREFIX)}: [LU]",
        )
    values: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise SpecError(
                f"{item!r} is not a string",
                field=where,
                fix="quote label values in YAML: a bare NO is false and 7 a number, "
                'write "NO", "7"',
            )
        _check_label(key, item, where)
        values.append(item)
    return tuple(dict.fromkeys(values))


class TenantOverride(_Spec):
    """A tenant's own rules; a class not named here follows the policy's ``classes``."""

    public: ClassPolicy | None = None
    internal: ClassPolicy | None = None
    confidential: ClassPolicy | None = None
    restricted: ClassPolicy | None = None
    default_field_action: FieldAction | None = None


class _ClassTable(_Spec):
    """Every class must be named: a forgotten class must not silently mean anywhere."""

    public: ClassPolicy
    internal: ClassPolicy
    confidential: ClassPolicy
    restricted: ClassPolicy

    @model_validator(mode="before")
    @classmethod
    def _every_class(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise SpecError(
                f"classes is a mapping of data class to rule, got {type(value).__name__}",
                fix="write e.g. {public: {}, internal: {country: [LU]}, confidential: "
                "{jurisdiction: [LU]}, restricted: {same_site: true}}",
            )
        for data_class in DataClass:
            if data_class.value not in value:
                raise SpecError(
                    "has no rule; every class needs one, so that a forgotten class cannot "
                    "mean anywhere",
                    field=data_class.value,
                    fix=f"add e.g. `{data_class.value}: {{same_site: true}}`, or "
                    f"`{data_class.value}: {{}}` to allow any node",
                )
        return value


class ResidencyPolicy(_Spec):
    """Where each data class may be processed and stored, per tenant where overridden."""

    api_version: Literal["continuum.io/v1"] = API_VERSION
    kind: Literal["ResidencyPolicy"] = "ResidencyPolicy"
    default_field_action: FieldAction = Field(
        default="drop",
        description="Uplink action for a field whose class the store may not hold.",
    )
    classes: _ClassTable
    tenants: dict[str, TenantOverride] = Field(default_factory=dict)

    @field_validator("tenants")
    @classmethod
    def _check_tenants(cls, value: dict[str, TenantOverride]) -> dict[str, TenantOverride]:
        for tenant in value:
            try:
                check_name(tenant, "tenant")
            except ValueError as error:
                raise SpecError(
                    f"{tenant!r} is not a tenant name", field=f'["{tenant}"]', fix="use e.g. acme"
                ) from error
        return value

    @classmethod
    def from_dict(cls, data: Any) -> ResidencyPolicy:
        """Validate a mapping; raise ``SpecError`` naming the field path and the fix."""
        return model_from_mapping(cls, data, kind=_KIND, fix=f"start from {_EXAMPLE}")

    @classmethod
    def from_yaml(cls, text: str) -> ResidencyPolicy:
        """Parse and validate YAML; raise ``SpecError`` on bad YAML or a bad policy."""
        return model_from_yaml(cls, text, kind=_KIND, fix=f"start from {_EXAMPLE}")

    def class_policy(
        self, data_class: DataClass, tenant: str | None = None
    ) -> tuple[str, ClassPolicy]:
        """Return the rule path (``confidential``, ``tenants.acme.confidential``) and the rule."""
        name = DataClass.parse(data_class).value
        override = self.tenants.get(tenant) if tenant is not None else None
        if override is not None:
            chosen: ClassPolicy | None = getattr(override, name)
            if chosen is not None:
                return f"tenants.{tenant}.{name}", chosen
        policy: ClassPolicy = getattr(self.classes, name)
        return name, policy

    def rule(
        self, data_class: DataClass, purpose: Purpose, tenant: str | None = None
    ) -> tuple[str, PlacementRule]:
        """Return the rule path and the rule for ``data_class`` and ``purpose``.

        The path names the purpose only where processing and storage differ:
        ``confidential`` or ``confidential.storage``.
        """
        path, policy = self.class_policy(data_class, tenant)
        if policy.processing != policy.storage:
            path = f"{path}.{purpose}"
        return path, policy.rule(purpose)

    def field_action(self, data_class: DataClass, tenant: str | None = None) -> FieldAction:
        """Return what uplink does to a field of ``data_class`` the store may not hold."""
        _, policy = self.class_policy(data_class, tenant)
        if policy.field_action is not None:
            return policy.field_action
        override = self.tenants.get(tenant) if tenant is not None else None
        if override is not None and override.default_field_action is not None:
            return override.default_field_action
        return self.default_field_action


def load_policy(path: str | Path) -> ResidencyPolicy:
    """Load a residency policy from a YAML file.

    Raises:
        SpecError: the file is missing or the policy is invalid; the message starts with it.
    """
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"no such policy file: {file}", fix=f"check the path, e.g. {_EXAMPLE}")
    try:
        return ResidencyPolicy.from_yaml(file.read_text(encoding="utf-8"))
    except SpecError as error:
        raise located(error, file) from error
