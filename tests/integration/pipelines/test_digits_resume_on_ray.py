"""A digits run cut short on Ray Train resumes from its last progress checkpoint when it is
started again under the same name and storage, as an allocation's end makes the controller do
(``cloud_head/_training_pool.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_head.training import TrainingError, run_training
from continuum.embedded import LocalRayCluster
from pipelines._checkpoints import EpochProgress

pytestmark = pytest.mark.integration


def cut_once_loop(config: dict[str, Any]) -> None:
    """The digits loop, ended after its second epoch's progress report on the first attempt
    only (the marker file says whether it was made)."""
    from pipelines.digits.train import train_loop_per_worker

    marker = Path(config.pop("marker"))
    if not marker.exists():
        marker.touch()
        report = EpochProgress.after_epoch

        def then_end(self: EpochProgress, epoch: int, state: Any) -> None:
            report(self, epoch, state)
            if epoch == 1:
                raise RuntimeError("the allocation ended")

        EpochProgress.after_epoch = then_end  # type: ignore[method-assign]
    train_loop_per_worker(config)


def test_a_cut_run_started_again_resumes_after_its_last_epoch(
    ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    def attempt() -> Any:
        return run_training(
            f"{__name__}:cut_once_loop",
            np.zeros((0, 1, 8, 8), dtype=np.float32),
            np.zeros(0, dtype=np.int64),
            base_model=None,
            workdir=tmp_path / "run",
            epochs=4,
            cpus=1,
            run_name="cut-once",
            config={"marker": str(tmp_path / "cut"), "checkpoint_every_s": 1e-3},
        )

    with pytest.raises(TrainingError, match="allocation ended"):
        attempt()
    result = attempt()
    assert result.metrics["resumed_after_epoch"] == 1
    assert result.onnx_path.is_file()
    assert result.metrics["train_accuracy"] > 0.5  # after 4 epochs; chance is 0.1
