"""A federated round's aggregation: update norms checked against the round's median, an
out-of-bounds update clipped or excluded, the kept ones averaged by Flower's FedAvg by sample
counts, and the aggregate written into a site's ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_head.federated import (
    SiteUpdate,
    aggregate,
    check_updates,
    dp_applies,
    state_digest,
    write_weights,
)
from continuum import Pipeline, select
from continuum.errors import InputMismatchError, SpecError
from continuum.spec import FederatedSpec

START = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32), "n": np.array(4)}


def update(site: str, step: float, count: int, seed: int) -> SiteUpdate:
    """A site's weights: the start moved by a random direction of length ``step``."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=8)
    direction *= step / np.linalg.norm(direction)
    state = {
        "w": (START["w"] + direction[:6].reshape(2, 3)).astype(np.float32),
        "b": (START["b"] + direction[6:]).astype(np.float32),
        "n": np.array(4 + seed),
    }
    return SiteUpdate(site=site, state=state, num_examples=count)


ROUND = [update("a", 1.0, 10, 1), update("b", 1.5, 30, 2), update("c", 60.0, 20, 3)]


class TestTheNormCheck:
    def test_each_update_s_norm_is_measured_from_the_round_s_start(self) -> None:
        check = check_updates(ROUND, START, FederatedSpec())
        assert check.norms == pytest.approx({"a": 1.0, "b": 1.5, "c": 60.0}, rel=1e-5)
        assert check.bound == pytest.approx(3.0 * 1.5)  # clip_factor x the lower median

    def test_an_update_far_out_is_clipped_to_the_bound(self) -> None:
        check = check_updates(ROUND, START, FederatedSpec(clip_factor=2.0))
        assert check.clipped == ("c",) and check.excluded == ()
        clipped = next(u for u in check.kept if u.site == "c")
        moved = np.concatenate([clipped.state["w"].ravel(), clipped.state["b"]])
        assert np.linalg.norm(moved) == pytest.approx(3.0, rel=1e-5)
        original = np.concatenate([ROUND[2].state["w"].ravel(), ROUND[2].state["b"]])
        assert np.allclose(moved / 3.0, original / 60.0, atol=1e-6)  # same direction
        assert check.to_record()["clipped"] == ["c"]

    def test_an_update_far_out_is_excluded_when_the_spec_says_so(self) -> None:
        check = check_updates(ROUND, START, FederatedSpec(outliers="exclude"))
        assert check.excluded == ("c",) and [u.site for u in check.kept] == ["a", "b"]

    def test_two_sites_one_wild_cannot_raise_its_own_bound(self) -> None:
        check = check_updates([ROUND[0], ROUND[2]], START, FederatedSpec())
        assert check.bound == pytest.approx(3.0) and check.clipped == ("c",)

    def test_one_site_alone_is_not_judged(self) -> None:
        check = check_updates(ROUND[2:], START, FederatedSpec())
        assert check.bound is None and check.clipped == ()

    def test_a_site_training_another_model_is_refused(self) -> None:
        other = SiteUpdate(site="x", state={"w": np.zeros((3, 3), np.float32)}, num_examples=5)
        with pytest.raises(InputMismatchError, match="site x's weights do not match"):
            check_updates([ROUND[0], other], START, FederatedSpec())


class TestFlowerAveraging:
    def test_fedavg_weights_each_site_by_its_sample_count(self) -> None:
        kept = ROUND[:2]
        averaged = aggregate(kept, FederatedSpec(), server_round=1)
        expected = (kept[0].state["w"] * 10 + kept[1].state["w"] * 30) / 40
        assert np.allclose(averaged["w"], expected, atol=1e-6)
        assert averaged["w"].dtype == np.float32 and averaged["w"].shape == (2, 3)
        assert averaged["n"].shape == () and averaged["n"] == round((5 * 10 + 6 * 30) / 40)

    def test_fedprox_averages_as_fedavg_on_the_server(self) -> None:
        fedavg = aggregate(ROUND[:2], FederatedSpec(), server_round=1)
        fedprox = aggregate(ROUND[:2], FederatedSpec(strategy="fedprox"), server_round=1)
        assert all(np.array_equal(fedavg[k], fedprox[k]) for k in fedavg)

    def test_nothing_to_aggregate_is_an_error_naming_it(self) -> None:
        with pytest.raises(InputMismatchError, match="nothing to aggregate"):
            aggregate([], FederatedSpec(), server_round=1)

    def test_the_digest_changes_with_any_weight(self) -> None:
        state = dict(ROUND[0].state)
        before = state_digest(state)
        state["b"] = state["b"] + np.float32(1e-3)
        assert state_digest(state) != before and len(before) == 64


class TestTheAggregateInTheGraph:
    def test_weights_are_written_by_name_into_a_site_s_onnx(self, tmp_path: Path) -> None:
        import onnx
        import torch
        from onnx import numpy_helper

        from cloud_head.gate import evaluate
        from pipelines._checkpoints import export_graph

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = torch.nn.Linear(3, 2)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.softmax(self.model(x), dim=-1)

        graph = export_graph(
            Wrapped(), torch.zeros(1, 3), tmp_path / "site.onnx", input_name="x", output_name="p"
        )
        state = {
            "weight": np.array([[5.0, 0, 0], [0, 5.0, 0]], np.float32),
            "bias": np.zeros(2, np.float32),
        }
        written = write_weights(graph.read_bytes(), state, tmp_path / "model.onnx")
        found = {
            i.name: numpy_helper.to_array(i) for i in onnx.load(str(written)).graph.initializer
        }
        assert np.array_equal(found["model.weight"], state["weight"])
        x = np.array([[1.0, 0, 0], [0, 1.0, 0]], np.float32)
        assert evaluate(written, x, np.array([0, 1]), "accuracy") == 1.0

        with pytest.raises(InputMismatchError, match="'gamma' is not among its initializers"):
            write_weights(
                graph.read_bytes(), {**state, "gamma": np.ones(2, np.float32)}, tmp_path / "x.onnx"
            )


class TestCentralDifferentialPrivacy:
    def test_flower_s_fixed_clipping_bounds_each_update_and_adds_noise(self) -> None:
        options = FederatedSpec(dp_noise_multiplier=0.5, dp_clipping_norm=0.5)
        first = aggregate(ROUND, options, server_round=1, start=START)
        second = aggregate(ROUND, options, server_round=1, start=START)
        assert not np.array_equal(first["w"], second["w"])  # fresh noise each release
        plain = aggregate(ROUND, FederatedSpec(), server_round=1)
        assert not np.allclose(first["w"], plain["w"], atol=0.5)  # the 60-norm site is bounded
        assert first["n"] == plain["n"]  # counters carry no noise
        assert first["w"].dtype == np.float32

    def test_it_needs_a_clipping_norm_and_a_start(self) -> None:
        pipe = Pipeline("risk", tenant="medica", data_class="restricted")
        pipe.edge(model="risk", backend="onnxruntime", shape=(4,))
        pipe.uplink(select.random(0.1))
        with pytest.raises(SpecError, match="dp_noise_multiplier needs dp_clipping_norm"):
            pipe.retrain("pkg.mod:train", federated={"dp_noise_multiplier": 1.0})
        options = FederatedSpec(dp_noise_multiplier=1.0, dp_clipping_norm=1.0)
        assert dp_applies(options, START) and not dp_applies(options, None)
        assert not dp_applies(FederatedSpec(), START)
