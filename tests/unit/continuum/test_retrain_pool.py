"""``pipe.retrain(pool=..., fallback=...)``: which pool trains, declared and checked up front."""

from __future__ import annotations

import pytest

from continuum import Pipeline, PipelineSpec, SpecError, select

TRAINER = "pipelines.digits.train:train_loop_per_worker"


def pipeline() -> Pipeline:
    pipe = Pipeline("p", tenant="acme", data_class="internal")
    pipe.edge(model="inspector", shape=(1, 8, 8))
    pipe.uplink(select.random(0.1))
    return pipe


class TestPoolDeclared:
    def test_an_hpc_pool_with_cloud_fallback_round_trips_through_yaml(self) -> None:
        pipe = pipeline()
        pipe.retrain(TRAINER, pool="hpc", fallback=True, where={"continuum.io/country": "LU"})
        spec = pipe.spec
        assert spec.retrain is not None
        assert (spec.retrain.pool, spec.retrain.fallback) == ("hpc", True)
        again = PipelineSpec.from_yaml(spec.to_yaml())
        assert again == spec
        assert "pool: hpc" in spec.to_yaml()

    def test_no_pool_keeps_any_node_and_no_fallback(self) -> None:
        pipe = pipeline()
        pipe.retrain(TRAINER)
        retrain = pipe.spec.retrain
        assert retrain is not None
        assert (retrain.pool, retrain.fallback) == (None, False)


class TestPoolRefused:
    @pytest.mark.parametrize(
        ("keywords", "field", "says"),
        [
            ({"pool": "gpu"}, "retrain.pool", "use one of hpc, cloud, auto"),
            ({"pool": "cloud", "fallback": True}, "retrain.fallback", "set pool='hpc'"),
            ({"fallback": True}, "retrain.fallback", "needs pool='hpc'"),
            (
                {"pool": "hpc", "where": {"continuum.io/tier": "cloud"}},
                "retrain.where",
                "drop continuum.io/tier from where; the pool sets it",
            ),
        ],
    )
    def test_a_pool_that_cannot_be_meant_names_the_fix(
        self, keywords: dict[str, object], field: str, says: str
    ) -> None:
        with pytest.raises(SpecError) as caught:
            pipeline().retrain(TRAINER, **keywords)  # type: ignore[arg-type]
        assert caught.value.field == field
        assert says in str(caught.value)
