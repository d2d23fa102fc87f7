"""Node label keys (DESIGN.md §6) and ``LabelSelector``: which nodes a stage or job may use.

A selector maps a label key to a value expression; it matches a node's labels here and
turns into a Ray ``label_selector`` for placement.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field, RootModel, ValidationError, field_validator
from typing_extensions import Self

from continuum._validation import key_path, spec_error
from continuum.errors import PlacementError, SpecError

__all__ = [
    "ACCELERATOR",
    "COUNTRY",
    "JURISDICTION",
    "KNOWN_KEYS",
    "PREFIX",
    "SITE",
    "TENANT",
    "TIER",
    "TIERS",
    "LabelSelector",
]

PREFIX = "continuum.io/"
TIER = "continuum.io/tier"
SITE = "continuum.io/site"
COUNTRY = "continuum.io/country"
JURISDICTION = "continuum.io/jurisdiction"
ACCELERATOR = "continuum.io/accelerator"
TENANT = "continuum.io/tenant"
KNOWN_KEYS = frozenset({TIER, SITE, COUNTRY, JURISDICTION, ACCELERATOR, TENANT})
TIERS = ("edge", "cloud", "hpc")

_FORMS = '"edge", "lux-*", "in(a,b)", "!x" or "!in(a,b)"'
# Ray and Kubernetes label values: up to 63 alphanumerics, '-', '_', '.', alphanumeric ends.
_VALUE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_GLOB = re.compile(r"^[A-Za-z0-9._*?-]{1,63}$")
_IN = re.compile(r"^in\((.*)\)$")
_DOMAIN_KEY = re.compile(
    r"^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
)


@dataclass(frozen=True, slots=True)
class _Expr:
    """One parsed value expression: ``values`` (or a single glob), possibly negated."""

    negated: bool
    values: tuple[str, ...]
    glob: bool

    def accepts(self, value: str | None) -> bool:
        if value is None:
            hit = False
        elif self.glob:
            hit = fnmatch.fnmatchcase(value, self.values[0])
        else:
            hit = value in self.values
        return hit != self.negated


@functools.lru_cache(maxsize=4096)
def _parse(key: str, expression: str) -> _Expr:
    """Parse a value expression; raise ``SpecError`` naming the key and the accepted forms."""
    text = expression.strip()
    negated = text.startswith("!")
    body = text[1:].strip() if negated else text
    match = _IN.match(body)
    if match:
        values = tuple(item.strip() for item in match.group(1).split(","))
        bad = [v for v in values if not _VALUE.match(v)]
        if bad:
            what = f"{bad[0]!r} is not a label value" if bad[0] else "an empty value"
            raise SpecError(
                f"value list {expression!r} has {what}",
                field=key_path(key),
                fix="list literal values separated by commas, e.g. in(lux-1,lux-2)",
            )
        return _Expr(negated, values, glob=False)
    if any(c in body for c in "*?") and _GLOB.match(body):
        return _Expr(negated, (body,), glob=True)
    if _VALUE.match(body):
        return _Expr(negated, (body,), glob=False)
    raise SpecError(
        f"cannot read value expression {expression!r}",
        field=key_path(key),
        fix=f"write one of {_FORMS}; values use letters, digits, '.', '_' or '-' (max 63)",
    )


def _check_key(key: str) -> None:
    if key in KNOWN_KEYS:
        return
    known = ", ".join(sorted(KNOWN_KEYS))
    if key.startswith(PREFIX):
        close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
        hint = f'did you mean "{close[0]}"? ' if close else ""
        raise SpecError(
            f'unknown continuum label key "{key}"',
            field=key_path(key),
            fix=f"{hint}continuum.io/ keys are: {known}",
        )
    if "/" not in key:
        short = {k.removeprefix(PREFIX): k for k in KNOWN_KEYS}
        close = difflib.get_close_matches(key.lower(), sorted(short), n=1)
        if close:
            fix = f'use "{short[close[0]]}"'
        else:
            fix = f"use one of {known}, or a custom key with a domain, e.g. example.com/line"
        raise SpecError(f'label key "{key}" has no domain prefix', field=key_path(key), fix=fix)
    if not _DOMAIN_KEY.match(key):
        raise SpecError(
            f'label key "{key}" is not of the form domain/name',
            field=key_path(key),
            fix="use lowercase domain, '/', then up to 63 letters, digits, '.', '_' or '-'",
        )


class LabelSelector(RootModel[dict[str, str]]):
    """Label key -> value expression; a node matches when every expression accepts its label.

    Expressions: ``"edge"`` (equals), ``"lux-*"`` (glob), ``"in(a,b)"``, ``"!x"`` (not
    equal) and ``"!in(a,b)"``.  A negated expression also matches a node without the label.
    Keys are the ``continuum.io/`` keys of ``KNOWN_KEYS`` or custom keys with a domain
    (``example.com/line``).  The empty selector matches every node.
    """

    model_config = ConfigDict(frozen=True)

    root: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def parse(
        cls, value: Mapping[str, str] | LabelSelector | None, *, field: str = "where"
    ) -> Self:
        """Validate ``value`` into a selector; raise ``SpecError`` naming the bad key and the fix.

        ``LabelSelector(...)`` itself raises pydantic's ``ValidationError`` (a ``ValueError``
        carrying the same text), as every pydantic model does.
        """
        try:
            return cls.model_validate({} if value is None else value)
        except ValidationError as error:
            raise spec_error(error, prefix=field, model=cls) from error

    @field_validator("root", mode="before")
    @classmethod
    def _check(cls, value: Any) -> Any:
        if isinstance(value, LabelSelector):
            return dict(value.root)
        if not isinstance(value, Mapping):
            raise SpecError(
                f"a selector is a mapping of label key to value, got {type(value).__name__}",
                fix='write e.g. {"continuum.io/tier": "edge"}',
            )
        for key, expression in value.items():
            if not isinstance(key, str) or not isinstance(expression, str):
                raise SpecError(
                    f"keys and values must be strings, got {key!r}: {expression!r}",
                    fix='quote them (in YAML too: a bare NO or 7 is not a string), e.g. "7"',
                )
            _check_key(key)
            parsed = _parse(key, expression)
            if key == TIER:
                _check_tier(parsed, expression)
        return value

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Return whether a node with ``labels`` satisfies every expression."""
        return all(_parse(k, v).accepts(labels.get(k)) for k, v in self.root.items())

    def can_match(self, key: str, value: str) -> bool:
        """Return whether a node labelled ``key=value`` could satisfy this selector's ``key``."""
        expression = self.root.get(key)
        return expression is None or _parse(key, expression).accepts(value)

    def to_ray(self, known_values: Mapping[str, Iterable[str]] | None = None) -> dict[str, str]:
        """Return the Ray ``label_selector`` for this selector.

        A glob is expanded to ``in(...)`` over ``known_values[key]`` (e.g. the sites the
        fleet registry has seen); a negated glob that matches none of them is dropped.

        Raises:
            PlacementError: a glob has no known values to expand over, or matches none.
        """
        selector: dict[str, str] = {}
        for key, expression in self.root.items():
            parsed = _parse(key, expression)
            values = parsed.values
            if parsed.glob:
                pattern = values[0]
                if known_values is None or key not in known_values:
                    raise PlacementError(
                        f'cannot place with glob "{pattern}" on {key}: no known values to '
                        "expand it over; pass known_values or list the values with in(...)",
                        rule="label_selector",
                        label=key,
                    )
                values = tuple(
                    sorted({v for v in known_values[key] if fnmatch.fnmatchcase(v, pattern)})
                )
                if not values:
                    if parsed.negated:
                        continue
                    raise PlacementError(
                        f'glob "{pattern}" on {key} matches no known value '
                        f"({', '.join(sorted(set(known_values[key]))) or 'none known'})",
                        rule="label_selector",
                        label=key,
                    )
            body = values[0] if len(values) == 1 else f"in({','.join(values)})"
            selector[key] = f"!{body}" if parsed.negated else body
        return selector

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.root.items()) or "any node"


def _check_tier(parsed: _Expr, expression: str) -> None:
    if parsed.glob:
        unknown: list[str] = [] if any(parsed.accepts(t) != parsed.negated for t in TIERS) else [""]
    else:
        unknown = [v for v in parsed.values if v not in TIERS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], TIERS, n=1) if unknown[0] else []
        hint = f'did you mean "{close[0]}"? ' if close else ""
        raise SpecError(
            f"{expression!r} is not a tier",
            field=key_path(TIER),
            fix=f"{hint}tiers are {', '.join(TIERS)}",
        )
