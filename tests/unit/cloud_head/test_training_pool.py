"""``choose_pool``: where a retraining run goes, from the nodes the cluster reports, by policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud_head._training_pool import (
    ENDS_AT_LABEL,
    SLURM_JOB_LABEL,
    allocations_of,
    choose_pool,
    residency_rule,
)
from continuum import Pipeline, select
from continuum.errors import PlacementError
from continuum.labels import LabelSelector
from continuum.residency import load_policy
from continuum.spec import PipelineSpec, RetrainSpec

REPO_ROOT = Path(__file__).resolve().parents[3]
NOW = 1_800_000_000.0
TRAINER = "pipelines.digits.train:train_loop_per_worker"
CLOUD = {"continuum.io/tier": "cloud", "continuum.io/jurisdiction": "DE"}


def node(
    labels: dict[str, str], *, cpus: float = 2, gpus: float = 0, alive: bool = True
) -> dict[str, Any]:
    """A node as ``ray.nodes()`` reports it."""
    return {"Alive": alive, "Labels": labels, "Resources": {"CPU": cpus, "GPU": gpus}}


def hpc(
    job: str, jurisdiction: str = "LU", ends_in_s: float | None = 3600, **kw: Any
) -> dict[str, Any]:
    labels = {
        "continuum.io/tier": "hpc",
        "continuum.io/site": f"{jurisdiction.lower()}-hpc",
        "continuum.io/country": jurisdiction,
        "continuum.io/jurisdiction": jurisdiction,
        SLURM_JOB_LABEL: job,
    }
    if ends_in_s is not None:
        labels[ENDS_AT_LABEL] = str(int(NOW + ends_in_s))
    return node(labels, **kw)


def spec(data_class: str = "internal", **retrain: Any) -> PipelineSpec:
    pipe = Pipeline("p", tenant="acme", data_class=data_class)
    pipe.edge(model="inspector", shape=(1, 8, 8))
    pipe.uplink(select.random(0.1))
    pipe.retrain(TRAINER, **retrain)
    return pipe.spec


def retrain_of(**retrain: Any) -> RetrainSpec:
    found = spec(**retrain).retrain
    assert found is not None
    return found


def choose(retrain: RetrainSpec, nodes: list[dict[str, Any]], **kw: Any) -> Any:
    options: dict[str, Any] = {"estimate_s": 60.0, "now": NOW} | kw
    selector = options.pop("selector", LabelSelector())
    return choose_pool(retrain, selector, nodes, **options)


class TestHpcPool:
    def test_an_allocation_that_is_up_takes_the_run_pinned_by_its_job_label(self) -> None:
        choice = choose(retrain_of(pool="hpc"), [node(CLOUD), hpc("4711")])
        assert (choice.pool, choice.allocation) == ("hpc", "4711")
        assert choice.selector.root == {"continuum.io/tier": "hpc", SLURM_JOB_LABEL: "4711"}
        assert "Slurm allocation 4711" in choice.why

    def test_the_policy_selector_stays_on_the_job(self) -> None:
        selector = LabelSelector({"continuum.io/jurisdiction": "LU"})
        choice = choose(retrain_of(pool="hpc"), [hpc("1", "DE"), hpc("2", "LU")], selector=selector)
        assert choice.allocation == "2"
        assert choice.selector.root["continuum.io/jurisdiction"] == "LU"
        assert any("allocation 1" in p for p in choice.passed_over)

    def test_none_up_and_no_fallback_is_refused_naming_the_command(self) -> None:
        with pytest.raises(PlacementError) as caught:
            choose(retrain_of(pool="hpc"), [node(CLOUD)])
        assert caught.value.rule == "retrain.pool"
        assert "continuum hpc up --join" in str(caught.value)

    def test_a_dead_allocation_counts_as_none(self) -> None:
        assert allocations_of([hpc("9", alive=False)]) == []

    def test_a_run_that_would_outlive_the_allocation_is_refused_with_the_figures(self) -> None:
        with pytest.raises(PlacementError) as caught:
            choose(retrain_of(pool="hpc"), [hpc("4711", ends_in_s=360)], estimate_s=840)
        assert caught.value.rule == "hpc.time_limit"
        assert "run needs ~14 min" in str(caught.value)
        assert "Slurm allocation 4711 ends in 6 min" in str(caught.value)

    def test_the_allocation_with_most_time_left_is_taken(self) -> None:
        nodes = [hpc("1", ends_in_s=600), hpc("2", ends_in_s=7200), hpc("3", ends_in_s=100)]
        assert choose(retrain_of(pool="hpc"), nodes).allocation == "2"

    def test_too_small_an_allocation_is_refused_for_its_resources(self) -> None:
        with pytest.raises(PlacementError) as caught:
            choose(retrain_of(pool="hpc", gpus=4), [hpc("1", gpus=1)])
        assert caught.value.rule == "retrain.resources"

    def test_an_allocation_that_ended_under_the_run_is_not_taken_again(self) -> None:
        choice = choose(
            retrain_of(pool="hpc", fallback=True), [node(CLOUD), hpc("1")], exclude=frozenset({"1"})
        )
        assert choice.pool == "cloud"
        assert "1 ended under this run" in choice.why


class TestResidency:
    def test_a_centre_in_another_jurisdiction_is_refused_naming_the_rule(self) -> None:
        policy = load_policy(REPO_ROOT / "pipelines" / "residency.yaml")
        confidential = spec("confidential", pool="hpc")
        assert confidential.retrain is not None
        selector = LabelSelector({"continuum.io/jurisdiction": "LU"})  # as derived at deploy
        with pytest.raises(PlacementError) as caught:
            choose(
                confidential.retrain,
                [hpc("77", "DE")],
                selector=selector,
                rule_of=residency_rule(policy, confidential),
            )
        assert caught.value.rule == "confidential.jurisdiction"
        assert caught.value.label == "continuum.io/jurisdiction=DE"
        assert "Slurm allocation 77" in str(caught.value)

    def test_without_the_policy_the_selector_term_is_named(self) -> None:
        selector = LabelSelector({"continuum.io/jurisdiction": "LU"})
        with pytest.raises(PlacementError) as caught:
            choose(retrain_of(pool="hpc"), [hpc("77", "DE")], selector=selector)
        assert caught.value.rule == "training_selector"
        assert "continuum.io/jurisdiction=LU" in str(caught.value)

    def test_fallback_goes_to_the_cloud_pool_saying_why(self) -> None:
        selector = LabelSelector({"continuum.io/country": "in(DE,LU)"})
        choice = choose(
            retrain_of(pool="hpc", fallback=True), [node(CLOUD), hpc("77", "FR")], selector=selector
        )
        assert choice.pool == "cloud"
        assert choice.selector.root == {
            "continuum.io/country": "in(DE,LU)",
            "continuum.io/tier": "cloud",
        }
        assert choice.why.startswith("falls back to the cloud pool: Slurm allocation 77")


class TestCloudAndAuto:
    def test_cloud_pins_the_cloud_tier(self) -> None:
        choice = choose(retrain_of(pool="cloud"), [node(CLOUD), hpc("1")])
        assert (choice.pool, choice.selector.root) == ("cloud", {"continuum.io/tier": "cloud"})

    def test_auto_stays_on_the_cloud_while_it_has_the_gpus(self) -> None:
        choice = choose(retrain_of(pool="auto", gpus=1), [node(CLOUD, gpus=2), hpc("1", gpus=4)])
        assert choice.pool == "cloud"

    def test_auto_goes_to_an_allocation_when_the_cloud_lacks_the_gpus(self) -> None:
        choice = choose(retrain_of(pool="auto", gpus=2), [node(CLOUD, gpus=0), hpc("1", gpus=4)])
        assert (choice.pool, choice.allocation) == ("hpc", "1")
        assert "the cloud pool's biggest node has 0 GPU(s), the run asks 2" in choice.why

    def test_no_pool_leaves_the_selector_as_derived(self) -> None:
        selector = LabelSelector({"continuum.io/jurisdiction": "LU"})
        choice = choose(retrain_of(), [hpc("1")], selector=selector)
        assert (choice.pool, choice.selector) == ("any", selector)
