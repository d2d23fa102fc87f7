"""A residency decision, and the constraints of a class's rule that decisions are made of.

``Decision`` is what every check returns: allowed or not, the rule and field it is about as
attributes, the reason in words for the audit log.  ``constraints`` turns a class's rule into
label constraints, the capture site resolved, for the checks of the sibling modules.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from continuum.errors import PlacementError
from continuum.labels import KNOWN_KEYS, PREFIX, SITE
from continuum.residency._policy import Purpose, ResidencyPolicy
from continuum.spec import DataClass

#: Nodes the cluster knows: name -> labels (preferred, names appear in messages), or a list
#: of label dicts (named "node 1", "node 2"...); ``None`` when unknown.
KnownNodes: TypeAlias = Mapping[str, Mapping[str, str]] | Sequence[Mapping[str, str]] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One policy decision: allowed or not, the rule that decided and why (for the audit log).

    ``rule`` is the policy path that decided (``confidential.storage``, several joined by
    ", "); ``stage`` is where data or work moves (edge, uplink, store, training, rollout,
    ingest, placement); ``label`` is the offending ``key=value`` of a refusal, if any;
    ``field`` is the sample field the decision is about (an uplink plan decides each field
    of the input schema on its own), None for a decision on whole samples or a stage.
    Code acts on these attributes; ``reason`` is for people and the audit log.
    """

    allowed: bool
    rule: str
    reason: str
    stage: str = "placement"
    label: str | None = None
    field: str | None = None

    def to_record(self) -> dict[str, Any]:
        """Return the decision as a JSON-ready mapping for the audit log."""
        return {
            "allowed": self.allowed,
            "rule": self.rule,
            "reason": self.reason,
            "stage": self.stage,
            "label": self.label,
        }

    @classmethod
    def allowing(cls, rules: Iterable[str], reasons: Iterable[str], stage: str) -> Decision:
        """Return an allowing decision naming each rule checked (once) and why it holds."""
        return cls(
            allowed=True,
            rule=", ".join(dict.fromkeys(rules)),
            reason="; ".join(reasons),
            stage=stage,
        )

    def raise_if_refused(self) -> Decision:
        """Return the decision if allowed; raise ``PlacementError`` carrying it if not."""
        if not self.allowed:
            raise PlacementError(self.reason, rule=self.rule, label=self.label)
        return self


@dataclass(frozen=True, slots=True)
class Constraint:
    """One label constraint of a rule: ``key`` must carry one of ``allowed``."""

    rule: str
    key: str
    allowed: tuple[str, ...]
    head: str  # "confidential data may only be processed in jurisdiction LU"

    def expression(self) -> str:
        """Return the selector expression that keeps to it: ``LU`` or ``in(LU,BE)``."""
        return self.allowed[0] if len(self.allowed) == 1 else f"in({','.join(self.allowed)})"

    def fix(self, where_field: str) -> str:
        """Return what to add to ``where_field`` to keep to it."""
        return f"add `{self.key}: {self.expression()}` to {where_field}"


class RefusedError(Exception):
    """Carries a refusal out of the nested checks (never leaves ``continuum.residency``)."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.reason)


def node_list(known_nodes: KnownNodes) -> list[tuple[str, Mapping[str, str]]] | None:
    """Return the known nodes as (name, labels) pairs; None when they are not known."""
    if known_nodes is None:
        return None
    if isinstance(known_nodes, Mapping):
        return [(str(name), labels) for name, labels in known_nodes.items()]
    return [(f"node {i}", labels) for i, labels in enumerate(known_nodes, start=1)]


def _phrase(key: str, values: Sequence[str]) -> str:
    if key in KNOWN_KEYS:
        return f"in {key.removeprefix(PREFIX)} {' or '.join(values)}"
    return f"on nodes labelled {key}={' or '.join(values)}"


def data_phrase(data_class: DataClass, origin: str | None) -> str:
    """Return how a reason names the data: ``confidential data (field plate)``."""
    return f"{data_class.value} data" + (f" ({origin})" if origin else "")


def constraints(
    policy: ResidencyPolicy,
    data_class: DataClass,
    *,
    purpose: Purpose,
    tenant: str | None,
    source_sites: Collection[str] | None,
    at_capture: bool,
    origin: str | None,
    stage: str,
) -> tuple[str, list[Constraint]]:
    """Return the rule path and its constraints, the capture site resolved (or refuse)."""
    path, rule = policy.rule(data_class, purpose, tenant)
    verb = "processed" if purpose == "processing" else "stored"
    what = data_phrase(data_class, origin)
    found: list[Constraint] = []
    if rule.same_site and not at_capture:
        name = f"{path}.same_site"
        head = f"{what} may not leave the site it was captured at (rule {name})"
        sites = sorted(set(source_sites or ()))
        if not sites:
            raise RefusedError(
                Decision(
                    allowed=False,
                    rule=name,
                    reason=f"{head}; the site the data comes from is not known, so no node can be "
                    f"shown to be on it (fix: pin continuum.io/site in edge.where to one site, "
                    f"or pass the source nodes' labels)",
                    stage=stage,
                    label=SITE,
                )
            )
        if len(sites) > 1:
            raise RefusedError(
                Decision(
                    allowed=False,
                    rule=name,
                    reason=f"{head}; it comes from sites {', '.join(sites)}, and one {stage} job "
                    f"cannot stay on all of them (fix: one pipeline per site, with "
                    f"`{SITE}: <site>` in edge.where)",
                    stage=stage,
                    label=SITE,
                )
            )
        found.append(
            Constraint(name, SITE, (sites[0],), f"{what} may not leave its site {sites[0]}")
        )
    for key, values in rule.labels.items():
        short = key.removeprefix(PREFIX)
        found.append(
            Constraint(
                f"{path}.{short}", key, values, f"{what} may only be {verb} {_phrase(key, values)}"
            )
        )
    return path, found


def finite_values(expression: str | None) -> tuple[str, ...] | None:
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
