"""The demo's scenarios: each names its pipeline's own metric, sites and sources; bad flags fail."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from continuum.errors import ConfigError
from continuum.spec import load_pipeline
from pipelines.demo._scenarios import SCENARIOS, SourceContext, scenario_named, window_metric
from pipelines.demo.demo import options_from


def _args(**given: object) -> argparse.Namespace:
    flags = {
        "scenario": "digits",
        "duration": None,
        "agents": None,
        "drift": None,
        "drift_at": None,
        "fps": None,
        "workdir": Path("continuum-demo"),
        "no_live": True,
        "chaos": False,
    }
    return argparse.Namespace(**(flags | given))


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_scenario_scores_its_pipelines_gate_metric(name: str) -> None:
    scenario = scenario_named(name)
    module = importlib.import_module(scenario.pipeline_module)
    spec = load_pipeline(Path(module.__file__ or ""))
    assert spec.gate_metric == scenario.metric
    assert spec.edge.task.fits_metric(scenario.metric)


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_drifted_agent_stands_alone_at_the_drift_site_and_gets_a_source(name: str) -> None:
    scenario = scenario_named(name)
    sites = scenario.sites(3)
    assert [drifted for _, _, drifted in sites] == [False, False, True]
    assert sites[-1][1] == scenario.drift_site
    assert scenario.drift_site not in {site for _, site, _ in sites[:-1]}
    assert len({node for node, _, _ in sites}) == 3
    node, site, drifted = sites[-1]
    source = scenario.source(
        SourceContext(
            node=node,
            site=site,
            drifted=drifted,
            rate=10.0,
            label_delay_s=3.0,
            drift=scenario.defaults["drift"],
            drift_at=1.0e9,
            gateway=("127.0.0.1", 1883),
        )
    )
    module, _, name_in_module = source["ref"].partition(":")
    assert hasattr(importlib.import_module(module), name_in_module)


def test_live_metrics_from_counts_match_scikit_learn() -> None:
    y_true = [1, 0, 1, 1, 0, 0, 1, 0, 0, 1]
    y_pred = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0]
    # Two telemetry windows that split the same records.
    windows = []
    for part in (slice(0, 4), slice(4, 10)):
        t, p = y_true[part], y_pred[part]
        windows.append(
            {
                "labelled": len(t),
                "correct": sum(a == b for a, b in zip(t, p, strict=True)),
                "labelled_positive": sum(t),
                "predicted_positive": sum(p),
                "true_positive": sum(a and b for a, b in zip(t, p, strict=True)),
            }
        )
    assert window_metric(windows, "accuracy") == pytest.approx(accuracy_score(y_true, y_pred))
    assert window_metric(windows, "precision") == pytest.approx(precision_score(y_true, y_pred))
    assert window_metric(windows, "recall") == pytest.approx(recall_score(y_true, y_pred))
    assert window_metric(windows, "f1") == pytest.approx(f1_score(y_true, y_pred))
    assert window_metric(windows[1:], "recall", count=1) == pytest.approx(
        recall_score(y_true[4:], y_pred[4:])
    )
    assert window_metric([{"labelled": 3, "labelled_positive": 0}], "recall") is None
    assert window_metric([], "f1") is None


def test_each_scenario_runs_on_its_own_defaults() -> None:
    fraud = options_from(_args(scenario="fraud"))
    assert (fraud.scenario, fraud.duration_s, fraud.drift) == ("fraud", 300.0, "account_takeover")
    digits = options_from(_args())
    assert (digits.duration_s, digits.drift, digits.fps) == (180.0, "blur_contrast", 20.0)
    assert options_from(_args(scenario="maintenance", fps=4.0)).fps == 4.0


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"scenario": "fraud", "chaos": True}, "--chaos runs on the digits scenario only"),
        ({"scenario": "fraud", "agents": 5}, "--agents 4 or fewer"),
        ({"scenario": "maintenance", "drift": "blur_contrast"}, "machine_b, sensor_ageing"),
        ({"drift": "machine_b"}, "not a drift the digits scenario knows"),
    ],
)
def test_a_flag_that_does_not_fit_the_scenario_names_the_fix(
    given: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        options_from(_args(**given))


def test_an_unknown_scenario_names_those_there_are() -> None:
    with pytest.raises(ConfigError, match="digits, fraud, maintenance"):
        scenario_named("chess")
