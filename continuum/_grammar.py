"""The small grammars a user types: durations, retrain triggers and rollback rules.

``"10 min"``, ``"500 new samples or every 1 h"``, ``"accuracy drop 0.02 or p95 latency +20%"``:
each reader returns numbers (or ``RollbackRules``) and raises ``SpecError`` with the forms it
reads.  The spec classes and the DSL both read through here.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from continuum._validation import raw_message
from continuum.errors import SpecError

__all__ = [
    "DURATION_FORMS",
    "LATENCY_FORMS",
    "ROLLBACK_FORMS",
    "RULES_FORMS",
    "TRIGGER_FORMS",
    "RollbackRules",
    "format_duration",
    "parse_duration",
    "parse_latency_rise",
    "parse_rollback",
    "parse_rollback_rules",
    "trigger_fields",
]

DURATION_FORMS = 'a number of seconds, or "30 s", "10 min", "2 h", "1 d"'
TRIGGER_FORMS = '"500 new samples", "drift > 0.2", "every 1 h" or "manual", joined with " or "'
ROLLBACK_FORMS = '"accuracy drop 0.02", "accuracy drop 2%" or a number in (0, 1]'
LATENCY_FORMS = '"p95 latency +20%", "latency increase 20%" or a number in (0, 10] (0.2 = +20%)'
RULES_FORMS = (
    '"accuracy drop 0.02", "p95 latency +20%" (or "latency increase 20%"), '
    'or both joined with " or "; another task metric reads "recall drop 0.05" or '
    '"mae rise 2.5"'
)

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_DURATION = re.compile(rf"^{_NUMBER}\s*([a-z]*)$")


def parse_duration(value: object, *, field: str = "duration") -> float:
    """Return ``value`` in seconds: a number is seconds; text is ``"30 s"``, ``"10 min"``...

    Raises:
        SpecError: the text is not a duration or the duration is not positive.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value.strip().lower())
        if match and match.group(2) in ("", *_UNITS):
            seconds = float(match.group(1)) * _UNITS.get(match.group(2), 1.0)
    if seconds is None:
        raise SpecError(
            f"cannot read duration {value!r}", field=field, fix=f"write {DURATION_FORMS}"
        )
    if not (math.isfinite(seconds) and seconds > 0):
        raise SpecError(
            f"must be a positive duration, got {value!r}",
            field=field,
            fix=f"write {DURATION_FORMS}",
        )
    return seconds


def format_duration(seconds: float) -> str:
    """Return ``seconds`` in the largest unit that keeps it whole: ``3600.0`` -> ``"1 h"``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)} {unit}"
    return f"{seconds:g} s"


def parse_rollback(value: object, *, field: str = "rollback_on") -> float:
    """Return the accuracy drop of ``"accuracy drop 0.02"`` (or ``"2%"``, or a number).

    Raises:
        SpecError: the rule cannot be read or the drop is not in (0, 1].
    """
    drop: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        drop = float(value)
    elif isinstance(value, str):
        match = re.match(rf"^accuracy\s+drop\s+(?:of\s+)?{_NUMBER}\s*(%?)$", value.strip().lower())
        if match:
            drop = float(match.group(1)) / (100.0 if match.group(2) else 1.0)
    if drop is None:
        raise SpecError(
            f"cannot read rollback rule {value!r}", field=field, fix=f"write {ROLLBACK_FORMS}"
        )
    if not 0.0 < drop <= 1.0:
        raise SpecError(
            f"the accuracy drop must be in (0, 1], got {drop:g}",
            field=field,
            fix='write e.g. "accuracy drop 0.02" (two points of accuracy)',
        )
    return drop


_LATENCY_RULE = re.compile(
    rf"^(?:p95\s+)?latency\s+(?:\+\s*|(?:increase|rise)\s+(?:of\s+|by\s+)?\+?){_NUMBER}\s*%$"
)


def parse_latency_rise(value: object, *, field: str = "rollback_on") -> float:
    """Return the p95 latency rise of ``"p95 latency +20%"`` as a fraction (``0.2``).

    ``"latency increase 20%"`` says the same; a number is the fraction itself.

    Raises:
        SpecError: the rule cannot be read or the rise is not in (0, 10] (up to +1000%).
    """
    rise: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        rise = float(value)
    elif isinstance(value, str):
        match = _LATENCY_RULE.match(re.sub(r"\s+", " ", value.strip().lower()))
        if match:
            rise = float(match.group(1)) / 100.0
    if rise is None:
        raise SpecError(
            f"cannot read latency rule {value!r}", field=field, fix=f"write {LATENCY_FORMS}"
        )
    if not (math.isfinite(rise) and 0.0 < rise <= 10.0):
        raise SpecError(
            f"the latency rise must be in (0%, 1000%], got {rise * 100:g}%",
            field=field,
            fix='write e.g. "p95 latency +20%" (roll back when p95 latency grows by a fifth)',
        )
    return rise


_QUALITY_RULE = re.compile(
    rf"^([a-z][a-z0-9_.]*)\s+(drop|rise)\s+(?:of\s+|by\s+)?{_NUMBER}\s*(%?)$"
)


def parse_quality_rule(value: str, *, field: str = "rollback_on") -> tuple[str, float]:
    """Return ``(metric, amount)`` of ``"recall drop 0.05"`` or ``"mae rise 2.5"``.

    A metric where higher is better rolls back on a drop, an error metric on a rise; a
    share (in [0, 1]) drops by at most 1.

    Raises:
        SpecError: the rule cannot be read, names an unknown metric, goes the wrong way,
            or its amount is out of range.
    """
    from continuum.task import metric_info  # the task module imports the grammar's users

    match = _QUALITY_RULE.match(value.strip().lower())
    if match is None:
        raise SpecError(
            f"cannot read rollback rule {value!r}", field=field, fix=f"write {RULES_FORMS}"
        )
    metric, way = match.group(1), match.group(2)
    if metric == "accuracy" and way == "drop":
        return metric, parse_rollback(value, field=field)
    info = metric_info(metric)
    amount = float(match.group(3)) / (100.0 if match.group(4) else 1.0)
    want = "drop" if info.higher_is_better else "rise"
    if way != want:
        raise SpecError(
            f"{metric} gets worse by a {want}, not a {way}",
            field=field,
            fix=f'write e.g. "{metric} {want} {0.05 if info.bounded else 2.5:g}"',
        )
    if not (amount > 0.0 and (amount <= 1.0 or not info.bounded)):
        raise SpecError(
            f"the {metric} {want} must be in {'(0, 1]' if info.bounded else '(0, inf)'}, "
            f"got {amount:g}",
            field=field,
            fix=f'write e.g. "{metric} {want} {0.05 if info.bounded else 2.5:g}"',
        )
    return metric, amount


class RollbackRules(BaseModel):
    """What rolls a rollout back: the task metric worsening, a p95 latency rise or either.

    ``accuracy_drop`` is how far ``metric`` may worsen (a drop of accuracy or recall, a
    rise of MAE) before the candidate is rolled back; None turns that rule off.
    """

    model_config = ConfigDict(frozen=True)

    accuracy_drop: float | None = None
    latency_rise: float | None = None
    metric: str = "accuracy"

    def describe(self) -> str:
        """Return the rules as a user writes them: ``accuracy drop 0.02 or p95 latency +20%``."""
        parts = []
        if self.accuracy_drop is not None:
            from continuum.task import metric_info

            way = "drop" if metric_info(self.metric).higher_is_better else "rise"
            parts.append(f"{self.metric} {way} {self.accuracy_drop:g}")
        if self.latency_rise is not None:
            parts.append(f"p95 latency +{self.latency_rise * 100:g}%")
        return " or ".join(parts) or "no rule"


def parse_rollback_rules(value: object, *, field: str = "rollback_on") -> RollbackRules:
    """Read ``"accuracy drop 0.05"``, ``"p95 latency +20%"`` or both joined with ``" or "``.

    A bare number is an accuracy drop, as ``parse_rollback`` reads it.

    Raises:
        SpecError: a part cannot be read, is out of range, or names the same metric twice.
    """
    if not isinstance(value, str):
        return RollbackRules(accuracy_drop=parse_rollback(value, field=field))
    parts = [part.strip() for part in re.split(r"\s+or\s+", value.strip(), flags=re.IGNORECASE)]
    drop: float | None = None
    rise: float | None = None
    quality = "accuracy"
    for part in parts:
        lowered = part.lower()
        kind = "latency" if "latency" in lowered else "quality"
        if kind == "latency" and rise is not None:
            raise SpecError(
                f"{value!r} gives the latency rule twice",
                field=field,
                fix=f"keep one; write {RULES_FORMS}",
            )
        try:
            if kind == "quality":
                metric, amount = parse_quality_rule(part, field=field)
                if drop is not None:
                    twice = f"the {metric} rule" if metric == quality else "two metric rules"
                    raise SpecError(
                        f"{value!r} gives {twice} twice"
                        if metric == quality
                        else f"{value!r} gives {twice}",
                        field=field,
                        fix=f"keep one; write {RULES_FORMS}",
                    )
                quality, drop = metric, amount
            else:
                rise = parse_latency_rise(part, field=field)
        except SpecError as error:
            if not raw_message(error).startswith("cannot read"):
                raise  # a readable rule out of its range: its own message says the range
            raise SpecError(
                f"cannot read rollback rule {part!r}" + (f" in {value!r}" if part != value else ""),
                field=field,
                fix=f"write {RULES_FORMS}",
            ) from error
    return RollbackRules(accuracy_drop=drop, latency_rise=rise, metric=quality)


def trigger_fields(when: str, field: str) -> dict[str, Any]:
    """Parse a trigger expression into ``TriggerSpec`` fields (``new_samples``, ``every_s``...)."""
    fields: dict[str, Any] = {}
    value: Any
    clauses = [c.strip() for c in re.split(r"\s+or\s+", when.strip().lower())]
    for clause in clauses:
        text = re.sub(r"\s+", " ", clause)
        if match := re.match(r"^(\d+) new samples?$", text):
            key, value = "new_samples", int(match.group(1))
        elif match := re.match(rf"^drift ?> ?{_NUMBER}$", text):
            key, value = "drift_score", float(match.group(1))
        elif match := re.match(r"^every (.+)$", text):
            key, value = "every_s", parse_duration(match.group(1), field=field)
        elif text == "manual":
            key, value = "manual", True
        else:
            raise SpecError(
                f"cannot read trigger {clause!r}" + (f" in {when!r}" if clause != when else ""),
                field=field,
                fix=_trigger_hint(text) + f"write {TRIGGER_FORMS}",
            )
        if key in fields:
            raise SpecError(
                f"{when!r} names {key.replace('_', ' ')} twice", field=field, fix="keep one"
            )
        fields[key] = value
    return fields


def _trigger_hint(text: str) -> str:
    if match := re.match(r"^(\d+) ?(?:samples?|new)$", text):
        return f'did you mean "{match.group(1)} new samples"? '
    if match := re.match(rf"^drift\D*?{_NUMBER}$", text):
        return f'did you mean "drift > {match.group(1)}"? '
    if re.match(rf"^{_NUMBER} ?[a-z]+$", text):
        return f'did you mean "every {text}"? '
    return ""
