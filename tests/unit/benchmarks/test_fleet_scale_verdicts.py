"""fleet_scale's judgement of a step: held only on all four tests, and what stopped it named."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[3] / "benchmarks"))

import fleet_scale


def step(**changes: object) -> fleet_scale.Step:
    """A step of 1,000 agents at 1 Hz that held, changed by ``changes``."""
    values: dict[str, object] = {
        "agents": 1000,
        "expected_rate": 1000.0,
        "sent_rate": 1000.0,
        "rate_in": 995.0,
        "processed": 0.995,
        "lag_p99": 0.5,
        "flip_max": 0.2,
        "registry_cpu": 0.1,
        "mosquitto_cpu": 0.05,
        "sims_cpu": [0.02, 0.02],
        "load": 0.5,
    }
    values.update(changes)
    return fleet_scale.Step(**values)  # type: ignore[arg-type]


class TestHeld:
    def test_a_step_that_passes_all_four_tests_is_held(self) -> None:
        assert step().held(1.0)

    def test_each_test_alone_can_fail_it(self) -> None:
        assert not step(processed=0.989).held(1.0)
        assert not step(lag_p99=2.0).held(1.0)
        assert not step(false_offline=1).held(1.0)
        assert not step(timed_out=1).held(1.0)
        assert not step(flips_missing=1).held(1.0)
        assert not step(flip_max=2.5).held(1.0)


class TestLimit:
    def test_simulators_short_of_cpu_are_named(self) -> None:
        limit = step(sent_rate=900.0, sims_cpu=[0.95, 0.5]).limit(2)
        assert limit.startswith("simulators' CPU") and "900/s of 1,000/s" in limit

    def test_simulators_not_scheduled_on_a_loaded_machine_name_the_machine(self) -> None:
        limit = step(sent_rate=900.0, load=7.8).limit(2)
        assert limit.startswith("machine: the simulators were not scheduled")

    def test_all_cores_busy_is_the_machine(self) -> None:
        limit = step(processed=0.9, registry_cpu=0.95, mosquitto_cpu=0.5, sims_cpu=[0.4]).limit(2)
        assert limit.startswith("machine:")

    def test_a_registry_at_a_full_core_on_an_idle_machine_is_the_registry(self) -> None:
        assert step(processed=0.9, registry_cpu=0.97).limit(4) == "registry at 97% of a core"


class TestPlan:
    def test_the_file_descriptor_limit_caps_the_plan_and_says_what_to_raise(self) -> None:
        plan, capped = fleet_scale._plan([1000, 20000], 20000, 19936)
        assert plan == [1000, 19936]
        assert "19936" in capped and "ulimit -Hn" in capped and "20064" in capped
        assert fleet_scale._plan([1000, 5000], 20000, 19936) == ([1000, 5000], "")
