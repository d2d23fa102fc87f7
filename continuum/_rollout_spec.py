"""``RolloutSpec``: canary, an exponential ramp to every target node, and the rollback rules."""

from __future__ import annotations

from typing import Any, Final

from pydantic import Field, field_validator, model_validator
from typing_extensions import Self

from continuum._grammar import (
    RULES_FORMS,
    RollbackRules,
    format_duration,
    parse_duration,
    parse_latency_rise,
    parse_rollback,
    parse_rollback_rules,
)
from continuum._stage_specs import FrozenSpec, bounded
from continuum.errors import SpecError
from continuum.task import metric_info

__all__ = ["MAX_RAMP_STEPS", "RolloutSpec"]

#: A rollout ramp may take at most this many steps, canary and the final one included.
MAX_RAMP_STEPS: Final = 20


class RolloutSpec(FrozenSpec):
    """Canary, then an exponential ramp to every target node, rolled back when a rule fires.

    The candidate first goes to ``canary`` of the target nodes and holds there for
    ``promote_after_s``; then to ``canary * ramp_factor``, ``canary * ramp_factor**2``... of
    them (capped at all), holding ``step_after_s`` at each step, as Greengrass jobs ramp up.
    At every step its telemetry is compared with the current version's; an accuracy drop
    past ``rollback_on_drop`` or a p95 latency rise past ``rollback_on_latency_rise`` rolls
    it back. ``ramp_factor >= 1 / canary`` gives canary, then everyone at once.

    Besides the fields, a mapping may give ``rollback_on: "accuracy drop 0.05 or p95 latency
    +20%"`` (as the DSL does), which sets both rule fields.
    """

    canary: float = Field(
        default=0.1, description="Share of the target nodes that get a new model first."
    )
    promote_after_s: float = Field(
        default=600.0, description="How long the canary step holds without regression, seconds."
    )
    ramp_factor: float = Field(
        default=2.0,
        description="Each step after the canary multiplies the share of nodes by this (> 1).",
    )
    step_after_s: float = Field(
        default=600.0,
        description="How long each later step holds, seconds; defaults to promote_after_s.",
    )
    rollback_on_drop: float | None = Field(
        default=0.02,
        description="Roll back if rollback_metric worsens by this (accuracy or recall drops, "
        "MAE rises); null: not checked.",
    )
    rollback_metric: str = Field(
        default="accuracy",
        description="The task metric the edge reports per window that rollback_on_drop "
        "watches (continuum.task: accuracy, precision, recall, f1, mae, rmse).",
    )
    rollback_on_latency_rise: float | None = Field(
        default=None,
        description="Roll back if p95 latency rises by this fraction (0.2 = +20%); "
        "null: not checked.",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_in(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("step_after_s") is None and "promote_after_s" in data:
            data["step_after_s"] = data["promote_after_s"]
        if "rollback_on" in data:
            given = [k for k in ("rollback_on_drop", "rollback_on_latency_rise") if k in data]
            if given:
                raise SpecError(
                    f"rollback_on and {' and '.join(given)} are both given",
                    field="rollback_on",
                    fix="keep rollback_on alone, e.g. "
                    'rollback_on: "accuracy drop 0.05 or p95 latency +20%"',
                )
            rules = parse_rollback_rules(data.pop("rollback_on"), field="rollback_on")
            data["rollback_on_drop"] = rules.accuracy_drop
            data["rollback_on_latency_rise"] = rules.latency_rise
            if data.get("rollback_metric", rules.metric) != rules.metric:
                raise SpecError(
                    f"rollback_on watches {rules.metric}, rollback_metric says "
                    f"{data['rollback_metric']}",
                    field="rollback_on",
                    fix="keep rollback_on alone; it names the metric",
                )
            data["rollback_metric"] = rules.metric
        return data

    @field_validator("canary")
    @classmethod
    def _check_canary(cls, value: float) -> float:
        return bounded(value, low=0, low_open=True, high=1, example="canary=0.1 (10% of nodes)")

    @field_validator("promote_after_s", mode="before")
    @classmethod
    def _check_promote(cls, value: object) -> float:
        return parse_duration(value, field="promote_after_s")

    @field_validator("step_after_s", mode="before")
    @classmethod
    def _check_step(cls, value: object) -> float:
        return parse_duration(value, field="step_after_s")

    @field_validator("ramp_factor")
    @classmethod
    def _check_factor(cls, value: float) -> float:
        return bounded(value, low=1, low_open=True, high=1000, example="ramp_factor=2.0")

    @field_validator("rollback_on_drop", mode="before")
    @classmethod
    def _check_rollback(cls, value: object) -> float | None:
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 1:
            return float(value)  # an error metric's rise (units); checked with the metric below
        return parse_rollback(value, field="rollback_on_drop")

    @field_validator("rollback_metric")
    @classmethod
    def _check_metric(cls, value: str) -> str:
        if not metric_info(value).windowed:
            raise SpecError(
                f"{value!r} is not computed per telemetry window at the edge",
                field="rollback_metric",
                fix="roll back on accuracy, precision, recall, f1, mae or rmse",
            )
        return value

    @field_validator("rollback_on_latency_rise", mode="before")
    @classmethod
    def _check_latency(cls, value: object) -> float | None:
        return (
            None if value is None else parse_latency_rise(value, field="rollback_on_latency_rise")
        )

    @model_validator(mode="after")
    def _check_plan(self) -> Self:
        if self.rollback_on_drop is None and self.rollback_on_latency_rise is None:
            raise SpecError(
                "gives no rollback rule, so a regressing candidate would reach every node",
                field="rollback_on",
                fix=f"write {RULES_FORMS}",
            )
        drop = self.rollback_on_drop
        if drop is not None and drop > 1 and metric_info(self.rollback_metric).bounded:
            raise SpecError(
                f"{self.rollback_metric} lies in [0, 1], so a drop of {drop:g} never fires",
                field="rollback_on",
                fix=f'write e.g. "{self.rollback_metric} drop 0.05"',
            )
        if len(self.ramp_shares()) > MAX_RAMP_STEPS:
            raise SpecError(
                f"a ramp from canary {self.canary:g} by factor {self.ramp_factor:g} takes "
                f"more than {MAX_RAMP_STEPS} steps",
                field="ramp_factor",
                fix="raise ramp_factor or canary, e.g. canary=0.1, ramp_factor=2.0 (5 steps)",
            )
        return self

    @property
    def rules(self) -> RollbackRules:
        """Return the rollback rules of the rollout."""
        return RollbackRules(
            metric=self.rollback_metric,
            accuracy_drop=self.rollback_on_drop,
            latency_rise=self.rollback_on_latency_rise,
        )

    def ramp_shares(self) -> tuple[float, ...]:
        """Return the share of the target nodes at each step: ``canary``, times the factor..., 1.

        ``RolloutSpec(canary=0.1).ramp_shares() == (0.1, 0.2, 0.4, 0.8, 1.0)``.
        """
        shares: list[float] = []
        share = self.canary
        while share < 1.0 and len(shares) <= MAX_RAMP_STEPS:
            shares.append(share)
            # Rounded so that 0.1 * 2 * 2 * 2 reads 0.8, not 0.8000000000000002.
            share = round(share * self.ramp_factor, 12)
        shares.append(1.0)
        return tuple(shares)

    def describe(self) -> str:
        """Return the rollout in a line: canary, ramp, holds and rules."""
        shares = self.ramp_shares()
        text = f"canary {self.canary:g}, promote after {format_duration(self.promote_after_s)}"
        if len(shares) > 2:
            text += f", then x{self.ramp_factor:g} every {format_duration(self.step_after_s)}"
        ramp = " -> ".join(f"{share:.0%}" for share in shares)
        return f"{text} ({ramp} of the nodes), roll back on {self.rules.describe()}"
