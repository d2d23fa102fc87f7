"""How a pipeline trains when the residency policy keeps its data at its sites: rounds,
quorum, aggregation strategy and the check on each site's update (``retrain.federated``).

The options apply only when deploy plans federated retraining (``continuum.residency.
training_plan``); a pipeline whose data may be pooled trains centrally and ignores them, so
one spec serves both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from continuum._spec_base import FrozenSpec
from continuum.errors import SpecError

__all__ = ["FederatedSpec", "OutlierAction", "Strategy"]

Strategy = Literal["fedavg", "fedprox"]
OutlierAction = Literal["clip", "exclude"]


class FederatedSpec(FrozenSpec):
    """Rounds, quorum, strategy and update checks of federated retraining."""

    rounds: int = Field(default=3, ge=1, le=1000, description="Aggregation rounds per run.")
    local_epochs: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Epochs of each site's local training; null: the loop's.",
    )
    quorum: int | None = Field(
        default=None,
        ge=1,
        description="Sites that must answer for a round to count; null: all but one, at least "
        "two (one where only one site trains).",
    )
    strategy: Strategy = Field(
        default="fedavg",
        description="Flower strategy: fedavg, or fedprox (the loop gets proximal_mu).",
    )
    proximal_mu: float = Field(
        default=0.01, ge=0.0, le=100.0, description="FedProx's proximal term weight."
    )
    clip_factor: float = Field(
        default=3.0,
        gt=1.0,
        le=1000.0,
        description="An update whose L2 norm exceeds this many times the round's median norm is "
        "out of bounds.",
    )
    outliers: OutlierAction = Field(
        default="clip",
        description="What happens to an out-of-bounds update: clip (scaled to the bound) or "
        "exclude (left out of the round).",
    )
    dp_noise_multiplier: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="Central differential privacy (Flower's server-side fixed clipping): the "
        "Gaussian noise multiplier; 0: off.",
    )
    dp_clipping_norm: float | None = Field(
        default=None,
        gt=0.0,
        le=1e6,
        description="With dp_noise_multiplier: every site's update is clipped to this L2 norm.",
    )
    round_timeout_s: float = Field(
        default=600.0, gt=0.0, le=86400.0, description="How long a round waits for the sites."
    )
    quorum_wait_s: float = Field(
        default=300.0,
        ge=0.0,
        le=86400.0,
        description="How long a round short of quorum keeps asking the sites before the run fails.",
    )

    @model_validator(mode="after")
    def _dp_needs_a_norm(self) -> FederatedSpec:
        if self.dp_noise_multiplier > 0 and self.dp_clipping_norm is None:
            raise SpecError(
                "dp_noise_multiplier needs dp_clipping_norm: the noise is scaled to the bound "
                "every update is clipped to",
                field="dp_clipping_norm",
                fix="set dp_clipping_norm (e.g. the round's typical update norm), or "
                "dp_noise_multiplier: 0",
            )
        return self

    def quorum_of(self, sites: int) -> int:
        """Return the sites a round needs out of ``sites``: the declared quorum, or all but one
        (at least two; one when only one site trains), never more than there are."""
        if self.quorum is not None:
            return min(self.quorum, sites)
        return min(sites, max(2, sites - 1))
