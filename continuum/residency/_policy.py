"""The residency policy: where data of each class may be processed and stored, and its checks.

A ``ResidencyPolicy`` (YAML, validated) maps each data class, optionally per tenant, to
constraints on node labels.  The functions here turn it into decisions at every point where
data or work moves (DESIGN.md §6): deploy (``check_pipeline``, ``check_placement``), uplink
(``uplink_plan``), ingest (``ingest_allows``) and training (``derive_training_selector``).
Every ``Decision`` carries the rule and the reason, for the audit log.  No Ray, no MQTT.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from continuum._loading import model_from_mapping, model_from_yaml
from continuum._validation import join_path, raw_message
from continuum.errors import ConfigError, PlacementError, SpecError
from continuum.labels import KNOWN_KEYS, PREFIX, SITE, LabelSelector
from continuum.spec import API_VERSION, DataClass, PipelineSpec
from continuum.wire.topics import check_name

__all__ = [
    "ClassPolicy",
    "Decision",
    "FieldAction",
    "KnownNodes",
    "PlacementRule",
    "Purpose",
    "ResidencyPolicy",
    "TenantOverride",
    "UplinkPlan",
    "check_pipeline",
    "check_placement",
    "derive_training_selector",
    "explain",
    "hash_field",
    "ingest_allows",
    "load_policy",
    "node_may_process",
    "pipeline_decisions",
    "route",
    "uplink_plan",
]

Purpose = Literal["processing", "storage"]
FieldAction = Literal["drop", "hash", "keep_at_edge"]
#: Nodes the cluster knows: name -> labels (preferred, names appear in messages), or a list
#: of label dicts (named "node 1", "node 2"...); ``None`` when unknown.
KnownNodes: TypeAlias = Mapping[str, Mapping[str, str]] | Sequence[Mapping[str, str]] | None

#: Short names a policy may use for the continuum.io/ label keys: ``jurisdiction: [LU]``.
_SHORT_KEYS: Final = {key.removeprefix(PREFIX): key for key in KNOWN_KEYS}
_RULE_KEYS: Final = ("same_site",)
_SPLIT_KEYS: Final = ("processing", "storage")
_HASH_PREFIX: Final = "hmac-sha256:"
_MIN_SALT_BYTES: Final = 16

_EXAMPLE = "deploy/policy/residency.example.yaml"
_KIND = "a residency policy"


# --- the policy spec -------------------------------------------------------------------------


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
        result = SpecError(f"{file}: {error}")
        result.field, result.fix = error.field, error.fix
        raise result from error


# --- decisions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """One policy decision: allowed or not, the rule that decided and why (for the audit log).

    ``stage`` is where data or work moves (edge, uplink, store, training, rollout, ingest,
    placement); ``label`` is the offending ``key=value`` of a refusal, if any.
    """

    allowed: bool
    rule: str
    reason: str
    stage: str = "placement"
    label: str | None = None

    def to_record(self) -> dict[str, Any]:
        """Return the decision as a JSON-ready mapping for the audit log."""
        return {
            "allowed": self.allowed,
            "rule": self.rule,
            "reason": self.reason,
            "stage": self.stage,
            "label": self.label,
        }

    def raise_if_refused(self) -> Decision:
        """Return the decision if allowed; raise ``PlacementError`` carrying it if not."""
        if not self.allowed:
            raise PlacementError(self.reason, rule=self.rule, label=self.label)
        return self


@dataclass(frozen=True, slots=True)
class _Constraint:
    rule: str
    key: str
    allowed: tuple[str, ...]
    head: str  # "confidential data may only be processed in jurisdiction LU"

    def expression(self) -> str:
        return self.allowed[0] if len(self.allowed) == 1 else f"in({','.join(self.allowed)})"

    def fix(self, where_field: str) -> str:
        return f"add `{self.key}: {self.expression()}` to {where_field}"


class _RefusedError(Exception):
    """Internal: carries a refusal out of the nested checks."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.reason)


def _node_list(known_nodes: KnownNodes) -> list[tuple[str, Mapping[str, str]]] | None:
    if known_nodes is None:
        return None
    if isinstance(known_nodes, Mapping):
        return [(str(name), labels) for name, labels in known_nodes.items()]
    return [(f"node {i}", labels) for i, labels in enumerate(known_nodes, start=1)]


def _phrase(key: str, values: Sequence[str]) -> str:
    if key in KNOWN_KEYS:
        return f"in {key.removeprefix(PREFIX)} {' or '.join(values)}"
    return f"on nodes labelled {key}={' or '.join(values)}"


def _what(data_class: DataClass, origin: str | None) -> str:
    return f"{data_class.value} data" + (f" ({origin})" if origin else "")


def _constraints(
    policy: ResidencyPolicy,
    data_class: DataClass,
    *,
    purpose: Purpose,
    tenant: str | None,
    source_sites: Collection[str] | None,
    at_capture: bool,
    origin: str | None,
    stage: str,
) -> tuple[str, list[_Constraint]]:
    """Return the rule path and its constraints, the capture site resolved (or refuse)."""
    path, rule = policy.rule(data_class, purpose, tenant)
    verb = "processed" if purpose == "processing" else "stored"
    what = _what(data_class, origin)
    found: list[_Constraint] = []
    if rule.same_site and not at_capture:
        name = f"{path}.same_site"
        head = f"{what} may not leave the site it was captured at (rule {name})"
        sites = sorted(set(source_sites or ()))
        if not sites:
            raise _RefusedError(
                Decision(
                    False,
                    name,
                    f"{head}; the site the data comes from is not known, so no node can be "
                    f"shown to be on it (fix: pin continuum.io/site in edge.where to one site, "
                    f"or pass the source nodes' labels)",
                    stage,
                    SITE,
                )
            )
        if len(sites) > 1:
            raise _RefusedError(
                Decision(
                    False,
                    name,
                    f"{head}; it comes from sites {', '.join(sites)}, and one {stage} job "
                    f"cannot stay on all of them (fix: one pipeline per site, with "
                    f"`{SITE}: <site>` in edge.where)",
                    stage,
                    SITE,
                )
            )
        found.append(
            _Constraint(name, SITE, (sites[0],), f"{what} may not leave its site {sites[0]}")
        )
    for key, values in rule.labels.items():
        short = key.removeprefix(PREFIX)
        found.append(
            _Constraint(
                f"{path}.{short}", key, values, f"{what} may only be {verb} {_phrase(key, values)}"
            )
        )
    return path, found


def _finite_values(expression: str | None) -> tuple[str, ...] | None:
    """Return the values an exact or ``in(...)`` expression accepts; None for any other form."""
    if expression is None:
        return None
    text = expression.strip()
    if text.startswith("!") or any(c in text for c in "*?"):
        return None
    match = re.match(r"^in\((.*)\)$", text)
    if match:
        return tuple(v.strip() for v in match.group(1).split(","))
    return (text,)


def _check_constraint(
    c: _Constraint,
    selector: LabelSelector,
    candidates: list[tuple[str, Mapping[str, str]]] | None,
    *,
    subject: str,
    where_field: str,
    stage: str,
) -> str:
    """Return why ``selector`` keeps to ``c``; raise ``_RefusedError`` naming the offending node."""
    fix = f"(fix: {c.fix(where_field)})"
    expression = selector.root.get(c.key)
    for name, labels in candidates or ():
        value = labels.get(c.key)
        if value not in c.allowed:
            seen = (
                f"nodes labelled {c.key}={value}"
                if value is not None
                else (f"nodes without a {c.key} label")
            )
            loose = (
                f"; {where_field} does not constrain {c.key}"
                if expression is None
                else f"; {where_field} has {c.key}: {expression}"
            )
            raise _RefusedError(
                Decision(
                    False,
                    c.rule,
                    f"{c.head} (rule {c.rule}); the {subject} selector allows {seen} "
                    f"(node {name}){loose} {fix}",
                    stage,
                    f"{c.key}={value}" if value is not None else c.key,
                )
            )
    finite = _finite_values(expression)
    if finite is not None:
        bad = [v for v in finite if v not in c.allowed]
        if bad:
            raise _RefusedError(
                Decision(
                    False,
                    c.rule,
                    f"{c.head} (rule {c.rule}); the {subject} selector allows nodes labelled "
                    f"{c.key}={bad[0]} {fix}",
                    stage,
                    f"{c.key}={bad[0]}",
                )
            )
        return f"{where_field} pins {c.key} to {', '.join(finite)}"
    loose = (
        f"{where_field} does not constrain {c.key}"
        if expression is None
        else f"{where_field} has {c.key}: {expression}, which nodes outside the rule could match"
    )
    if not candidates:
        known = "no nodes are known" if candidates is None else "no known node matches it"
        raise _RefusedError(
            Decision(
                False,
                c.rule,
                f"{c.head} (rule {c.rule}); {loose} and {known}, so nothing shows the "
                f"{subject} stays inside the rule {fix}",
                stage,
                c.key,
            )
        )
    return (
        f"{loose}, but every known node it matches ({len(candidates)}) satisfies the rule; "
        f"{c.fix(where_field)} so that nodes that join later are held to it too"
    )


def _evaluate(
    policy: ResidencyPolicy,
    classes: Mapping[DataClass, str | None],
    selector: LabelSelector,
    nodes: list[tuple[str, Mapping[str, str]]] | None,
    *,
    purpose: Purpose,
    tenant: str | None,
    source_sites: Collection[str] | None,
    at_capture: bool,
    subject: str,
    where_field: str,
    stage: str,
) -> Decision:
    candidates = None if nodes is None else [(n, lb) for n, lb in nodes if selector.matches(lb)]
    rules: list[str] = []
    reasons: list[str] = []
    try:
        for data_class in sorted(classes, key=lambda c: c.rank, reverse=True):
            path, found = _constraints(
                policy,
                data_class,
                purpose=purpose,
                tenant=tenant,
                source_sites=source_sites,
                at_capture=at_capture,
                origin=classes[data_class],
                stage=stage,
            )
            what = _what(data_class, classes[data_class])
            if not found:
                verb = "processed" if purpose == "processing" else "stored"
                anywhere = "at the capture site" if at_capture else "anywhere"
                rules.append(path)
                reasons.append(f"{what} may be {verb} {anywhere} (rule {path})")
            for c in found:
                why = _check_constraint(
                    c, selector, candidates, subject=subject, where_field=where_field, stage=stage
                )
                rules.append(c.rule)
                reasons.append(f"{c.head} (rule {c.rule}): {why}")
            if at_capture and policy.rule(data_class, purpose, tenant)[1].same_site:
                rules.append(f"{path}.same_site")
                reasons.append(
                    f"{what} may not leave its capture site (rule {path}.same_site): the "
                    f"{subject} runs where the data is captured"
                )
    except _RefusedError as refused:
        return refused.decision
    return Decision(True, ", ".join(dict.fromkeys(rules)), "; ".join(reasons), stage)


def check_placement(
    policy: ResidencyPolicy,
    data_class: DataClass | str,
    selector: LabelSelector | Mapping[str, str],
    known_nodes: KnownNodes,
    *,
    purpose: Purpose,
    tenant: str | None = None,
    source_sites: Collection[str] | None = None,
    subject: str = "placement",
    where_field: str = "where",
) -> Decision:
    """Allow work on ``data_class`` data where ``selector`` may place it, or refuse.

    Every node the selector could use must satisfy the class's rule: either the selector
    pins each constrained label key to allowed values, or (a key it leaves open) every known
    node it matches satisfies the rule.  A ``same_site`` rule needs ``source_sites``, the
    sites the data was captured at.

    Raises:
        PlacementError: a node the selector allows is outside the rule; the message names
            the rule, the offending label and node, and the fix.
    """
    return _evaluate(
        policy,
        {DataClass.parse(data_class): None},
        LabelSelector.parse(selector, field=where_field),
        _node_list(known_nodes),
        purpose=purpose,
        tenant=tenant,
        source_sites=source_sites,
        at_capture=False,
        subject=subject,
        where_field=where_field,
        stage="placement",
    ).raise_if_refused()


def node_may_process(
    policy: ResidencyPolicy,
    data_class: DataClass | str,
    node: str,
    labels: Mapping[str, str],
    *,
    origin_site: str | None,
    tenant: str | None = None,
) -> Decision:
    """Allow the node ``node`` (labelled ``labels``) to process ``data_class`` data captured
    at ``origin_site``, or refuse: the check for one concrete node, not a selector.

    Raises:
        PlacementError: its labels are outside the class's processing rule; the message
            names the rule and the offending label.
    """
    return check_placement(
        policy,
        data_class,
        dict(labels),
        {node: labels},
        purpose="processing",
        tenant=tenant,
        source_sites=[origin_site] if origin_site is not None else None,
        subject=f"node {node}",
        where_field=f"the labels of node {node}",
    )


def route(
    policy: ResidencyPolicy,
    data_class: DataClass | str,
    origin_site: str | None,
    endpoints: Mapping[str, Mapping[str, str]],
    *,
    tenant: str | None = None,
) -> tuple[str, Decision]:
    """Choose where an inference request of ``data_class``, captured at ``origin_site``, runs.

    ``endpoints`` (name -> the labels of the node serving the model) are tried in the
    caller's order of preference, e.g. the central pool first and the on-site server last:
    the first whose labels satisfy the class's processing rule serves it.  A request that
    may not leave its site is thus served on site, and others may use the central pool.

    Raises:
        PlacementError: no endpoint may process it; the message gives each one's refusal.
    """
    refusals: list[str] = []
    last: PlacementError | None = None
    for name, labels in endpoints.items():
        try:
            decision = node_may_process(
                policy, data_class, name, labels, origin_site=origin_site, tenant=tenant
            )
        except PlacementError as refused:
            refusals.append(f"{name}: {refused}")
            last = refused
            continue
        return name, decision
    raise PlacementError(
        f"no endpoint may serve {DataClass.parse(data_class).value} data captured at site "
        f"{origin_site or '(unknown)'}: " + "; ".join(refusals or ["no endpoints given"]),
        rule=last.rule if last is not None else "route",
        label=last.label if last is not None else None,
    )


def _store_decision(
    policy: ResidencyPolicy,
    classes: Mapping[DataClass, str | None],
    store_labels: Mapping[str, str],
    *,
    tenant: str | None,
    source_site: str | None,
    stage: str,
) -> Decision:
    rules: list[str] = []
    reasons: list[str] = []
    try:
        for data_class in sorted(classes, key=lambda c: c.rank, reverse=True):
            path, found = _constraints(
                policy,
                data_class,
                purpose="storage",
                tenant=tenant,
                source_sites=None if source_site is None else [source_site],
                at_capture=False,
                origin=classes[data_class],
                stage=stage,
            )
            if not found:
                rules.append(path)
                reasons.append(f"{_what(data_class, classes[data_class])} may be stored anywhere")
            for c in found:
                value = store_labels.get(c.key)
                if value not in c.allowed:
                    seen = (
                        f"labelled {c.key}={value}"
                        if value is not None
                        else (f"has no {c.key} label")
                    )
                    raise _RefusedError(
                        Decision(
                            False,
                            c.rule,
                            f"{c.head} (rule {c.rule}); the store is {seen}",
                            stage,
                            f"{c.key}={value}" if value is not None else c.key,
                        )
                    )
                rules.append(c.rule)
                reasons.append(f"{c.head} (rule {c.rule}): the store is labelled {c.key}={value}")
    except _RefusedError as refused:
        return refused.decision
    return Decision(True, ", ".join(dict.fromkeys(rules)), "; ".join(reasons), stage)


def ingest_allows(
    policy: ResidencyPolicy,
    data_class: DataClass | str,
    node_labels: Mapping[str, str],
    store_labels: Mapping[str, str],
    *,
    tenant: str | None = None,
) -> Decision:
    """Decide whether a sample of ``data_class`` from a node labelled ``node_labels`` may be stored.

    Use the higher of the batch's class and its pipeline's.  A refusal is returned, not
    raised: ingest rejects the batch, counts it and writes the decision to the audit log.
    """
    return _store_decision(
        policy,
        {DataClass.parse(data_class): None},
        store_labels,
        tenant=tenant,
        source_site=node_labels.get(SITE),
        stage="ingest",
    )


# --- uplink ----------------------------------------------------------------------------------


def hash_field(name: str, value: object, *, salt: bytes) -> str:
    """Return the pseudonym of a field value: HMAC-SHA256 keyed with the tenant's salt.

    The same value hashes the same within a tenant (joins still work) and differently across
    tenants; without the salt the value cannot be guessed by hashing candidates.

    Raises:
        ConfigError: the salt is shorter than 16 bytes.
    """
    if len(salt) < _MIN_SALT_BYTES:
        raise ConfigError(
            f"the field hashing salt has {len(salt)} bytes; use at least {_MIN_SALT_BYTES} "
            "random bytes per tenant (e.g. secrets.token_bytes(32))"
        )
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
    elif hasattr(value, "tobytes"):
        data = value.tobytes()
    else:
        data = repr(value).encode("utf-8")
    digest = hmac.new(salt, name.encode("utf-8") + b"\0" + data, hashlib.sha256).hexdigest()
    return _HASH_PREFIX + digest


@dataclass(frozen=True, slots=True)
class UplinkPlan:
    """What uplink does with a pipeline's samples from one edge node to one store.

    ``keep_at_edge``: no sample goes up.  Otherwise ``dropped`` fields are removed and
    ``hashed`` fields pseudonymised (``apply``) before the sample leaves the node.
    """

    keep_at_edge: bool
    dropped: tuple[str, ...] = ()
    hashed: tuple[str, ...] = ()
    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    @property
    def sends(self) -> bool:
        """Return whether samples may go up the link."""
        return not self.keep_at_edge

    def apply(self, fields: Mapping[str, object], *, salt: bytes) -> dict[str, object]:
        """Return ``fields`` with the dropped fields removed and the hashed ones pseudonymised.

        Raises:
            PlacementError: the plan keeps samples at the edge; nothing may be sent.
        """
        if self.keep_at_edge:
            refusal = next((d for d in self.decisions if not d.allowed), None)
            raise PlacementError(
                "samples of this pipeline stay on the edge"
                + (f": {refusal.reason}" if refusal else ""),
                rule=refusal.rule if refusal else "uplink",
                label=refusal.label if refusal else None,
            )
        out: dict[str, object] = {}
        for name, value in fields.items():
            if name in self.dropped:
                continue
            out[name] = hash_field(name, value, salt=salt) if name in self.hashed else value
        return out

    def describe(self) -> str:
        """Return the plan in one line, for people."""
        if self.keep_at_edge:
            return "samples stay on the edge"
        parts = []
        if self.dropped:
            parts.append(f"drop {', '.join(self.dropped)}")
        if self.hashed:
            parts.append(f"hash {', '.join(self.hashed)}")
        return "send samples" + (f" ({'; '.join(parts)})" if parts else " unchanged")


def uplink_plan(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    edge_labels: Mapping[str, str],
    cloud_store_labels: Mapping[str, str],
) -> UplinkPlan:
    """Return what to do with samples going from the node ``edge_labels`` to the store.

    The sample's own class must be storable there, else every sample stays on the edge.
    A field whose class the store may not hold gets its class's ``field_action``: dropped,
    hashed, or the whole sample stays on the edge.
    """
    site = edge_labels.get(SITE)
    tenant = spec.tenant
    sample = _store_decision(
        policy,
        {spec.data_class: "the samples"},
        cloud_store_labels,
        tenant=tenant,
        source_site=site,
        stage="uplink",
    )
    decisions = [sample]
    if not sample.allowed:
        return UplinkPlan(keep_at_edge=True, decisions=tuple(decisions))
    dropped: list[str] = []
    hashed: list[str] = []
    keep = False
    for name, data_class in spec.edge.input.fields.items():
        verdict = _store_decision(
            policy,
            {data_class: f"field {name}"},
            cloud_store_labels,
            tenant=tenant,
            source_site=site,
            stage="uplink",
        )
        if verdict.allowed:
            decisions.append(verdict)
            continue
        action = policy.field_action(data_class, tenant)
        if action == "drop":
            dropped.append(name)
        elif action == "hash":
            hashed.append(name)
        else:
            keep = True
        path, _ = policy.class_policy(data_class, tenant)
        decisions.append(
            Decision(
                True,
                f"{verdict.rule}, {path}.field_action",
                f"{verdict.reason}: field {name} is "
                + {
                    "drop": "dropped",
                    "hash": "hashed",
                    "keep_at_edge": "kept on the edge, with its whole sample",
                }[action]
                + f" (field_action {action})",
                "uplink",
                verdict.label,
            )
        )
    return UplinkPlan(
        keep_at_edge=keep, dropped=tuple(dropped), hashed=tuple(hashed), decisions=tuple(decisions)
    )


# --- pipeline checks -------------------------------------------------------------------------


def _edge_classes(spec: PipelineSpec) -> dict[DataClass, str | None]:
    classes: dict[DataClass, str | None] = {spec.data_class: None}
    for name, data_class in spec.edge.input.fields.items():
        if data_class not in classes:
            classes[data_class] = f"field {name}"
    return classes


def _training_classes(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    store_labels: Mapping[str, str] | None,
    source_site: str | None,
) -> dict[DataClass, str | None]:
    """Return the classes the store may hold for this pipeline, which training then reads."""
    classes: dict[DataClass, str | None] = {spec.data_class: None}
    for name, data_class in spec.edge.input.fields.items():
        if data_class in classes:
            continue
        if store_labels is None:
            classes[data_class] = f"field {name}; the store is not known, so it may reach it"
            continue
        kept = _store_decision(
            policy,
            {data_class: None},
            store_labels,
            tenant=spec.tenant,
            source_site=source_site,
            stage="training",
        ).allowed
        if kept:
            classes[data_class] = f"field {name}"
    return classes


def _source_sites(
    spec: PipelineSpec, nodes: list[tuple[str, Mapping[str, str]]] | None
) -> list[str] | None:
    """Return the sites the pipeline's data is captured at; None when they cannot be told."""
    finite = _finite_values(spec.edge.where.root.get(SITE))
    if finite is not None:
        return sorted(set(finite))
    if not nodes:
        return None
    sites = {lb.get(SITE) for _, lb in nodes if spec.edge.where.matches(lb)}
    if not sites or None in sites:
        return None
    return sorted(s for s in sites if s is not None)


def derive_training_selector(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    source_labels: Iterable[Mapping[str, str]],
    *,
    store_labels: Mapping[str, str] | None = None,
) -> LabelSelector:
    """Return the selector the Ray Train job must use: ``retrain.where`` within the policy.

    ``source_labels``: the labels of the edge nodes whose samples the job trains on (their
    sites bound a ``same_site`` rule).  ``store_labels``: the store's, to know which fields
    reach training; without them every field is assumed to.

    Raises:
        PlacementError: the user's ``where`` and the policy leave no allowed node value.
    """
    where = spec.retrain.where if spec.retrain is not None else LabelSelector()
    sources = list(source_labels)
    sites = sorted({lb[SITE] for lb in sources if SITE in lb})
    source_site = sites[0] if len(sites) == 1 else None
    terms = dict(where.root)
    try:
        for data_class, origin in _training_classes(
            policy, spec, store_labels, source_site
        ).items():
            _, found = _constraints(
                policy,
                data_class,
                purpose="processing",
                tenant=spec.tenant,
                source_sites=sites,
                at_capture=False,
                origin=origin,
                stage="training",
            )
            for c in found:
                current = LabelSelector.parse({c.key: terms[c.key]}) if c.key in terms else None
                values = [v for v in c.allowed if current is None or current.can_match(c.key, v)]
                if not values:
                    raise _RefusedError(
                        Decision(
                            False,
                            c.rule,
                            f"{c.head} (rule {c.rule}); retrain.where has {c.key}: "
                            f"{terms[c.key]}, which allows none of it "
                            f"(fix: set `{c.key}: {c.expression()}` in retrain.where)",
                            "training",
                            f"{c.key}={terms[c.key]}",
                        )
                    )
                terms[c.key] = values[0] if len(values) == 1 else f"in({','.join(values)})"
    except _RefusedError as refused:
        refused.decision.raise_if_refused()
    return LabelSelector.parse(terms, field="retrain.where")


def pipeline_decisions(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    known_nodes: KnownNodes,
    *,
    store_labels: Mapping[str, str] | None = None,
) -> list[Decision]:
    """Return the policy's decision on every stage of ``spec``, refusals included, in order.

    Stages: edge (inference), uplink and store (one per known edge node, when the store is
    known), training (``retrain.where``), rollout.
    """
    nodes = _node_list(known_nodes)
    tenant = spec.tenant
    decisions = [
        _evaluate(
            policy,
            _edge_classes(spec),
            spec.edge.where,
            nodes,
            purpose="processing",
            tenant=tenant,
            source_sites=None,
            at_capture=True,
            subject="edge stage",
            where_field="edge.where",
            stage="edge",
        )
    ]
    edge_nodes = [(n, lb) for n, lb in nodes or () if spec.edge.where.matches(lb)]
    if store_labels is None:
        decisions.append(
            Decision(
                True,
                "uplink",
                "the store is not known: each edge node's uplink plan is decided when it "
                "connects (give the store's labels to see it)",
                "uplink",
            )
        )
    else:
        for name, labels in edge_nodes:
            plan = uplink_plan(policy, spec, labels, store_labels)
            rules = ", ".join(dict.fromkeys(d.rule for d in plan.decisions))
            reasons = "; ".join(d.reason for d in plan.decisions)
            decisions.append(
                Decision(True, rules, f"node {name}: {plan.describe()}: {reasons}", "uplink")
            )
        sites = _source_sites(spec, nodes)
        store = _store_decision(
            policy,
            {spec.data_class: "the samples"},
            store_labels,
            tenant=tenant,
            source_site=sites[0] if sites and len(sites) == 1 else None,
            stage="store",
        )
        where = ", ".join(f"{k}={v}" for k, v in store_labels.items())
        decisions.append(
            Decision(True, store.rule, f"store ({where}): {store.reason}", "store")
            if store.allowed
            else Decision(
                True,
                store.rule,
                f"store ({where}) receives no samples, they stay on the edge: {store.reason}",
                "store",
            )
        )
    if spec.retrain is not None:
        sites = _source_sites(spec, nodes)
        decisions.append(
            _evaluate(
                policy,
                _training_classes(
                    policy, spec, store_labels, sites[0] if sites and len(sites) == 1 else None
                ),
                spec.retrain.where,
                nodes,
                purpose="processing",
                tenant=tenant,
                source_sites=sites,
                at_capture=False,
                subject="training",
                where_field="retrain.where",
                stage="training",
            )
        )
    decisions.append(
        Decision(
            True,
            "rollout",
            f"model versions go to the nodes of edge.where ({spec.edge.where}); the policy "
            "classes data, not model weights, so rollout is not restricted by it",
            "rollout",
        )
    )
    return decisions


def check_pipeline(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    known_nodes: KnownNodes,
    *,
    store_labels: Mapping[str, str] | None = None,
) -> list[Decision]:
    """Check ``spec`` at deploy: return every decision, or refuse at the first breach.

    Raises:
        PlacementError: the edge stage or the training job could put data where the policy
            forbids it; the message names the rule, the offending label and the fix.
    """
    decisions = pipeline_decisions(policy, spec, known_nodes, store_labels=store_labels)
    for decision in decisions:
        decision.raise_if_refused()
    return decisions


def explain(
    policy: ResidencyPolicy,
    spec: PipelineSpec,
    known_nodes: KnownNodes,
    *,
    store_labels: Mapping[str, str] | None = None,
) -> list[str]:
    """Return, stage by stage, where the pipeline's data may go and why, for people."""
    lines = [f"pipeline {spec.name} (tenant {spec.tenant}, data class {spec.data_class.value})"]
    fields = spec.edge.input.fields
    if fields:
        lines.append("  fields: " + ", ".join(f"{n} ({c.value})" for n, c in fields.items()))
    titles = {
        "edge": "edge inference",
        "uplink": "uplink",
        "store": "ingest/store",
        "training": "training",
        "rollout": "rollout",
    }
    decisions = pipeline_decisions(policy, spec, known_nodes, store_labels=store_labels)
    for decision in decisions:
        verdict = "allowed" if decision.allowed else "REFUSED"
        lines.append(f"{titles.get(decision.stage, decision.stage)}: {verdict}: {decision.reason}")
        if decision.stage == "uplink" and store_labels is not None:
            continue
        if decision.stage == "training" and decision.allowed and spec.retrain is not None:
            nodes = _node_list(known_nodes)
            sources = [lb for _, lb in nodes or () if spec.edge.where.matches(lb)]
            sites = _source_sites(spec, nodes)
            if not sources and sites:
                sources = [{SITE: s} for s in sites]
            try:
                derived = derive_training_selector(policy, spec, sources, store_labels=store_labels)
                lines.append(f"  the training job runs with selector: {derived}")
            except PlacementError as error:
                lines.append(f"  no training selector can be derived: {error}")
    return lines
