"""A real agent on a camera: an RTSP stream of the digits, decoded, prepared as the pipeline
declares (``ImagePrep``), inferred, uplinked over a real broker; the camera goes away for
20 s and the agent picks it up again by itself."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from continuum import Pipeline, select
from continuum.embedded import EmbeddedBroker
from continuum.spec import ImagePrep
from continuum.wire import topics
from continuum.wire.codec import decode_samples
from edge_agent.agent import EdgeAgent
from tests.edge_agent_kit import AgentRig, CloudStandIn, wait_for
from tests.integration.edge_agent.conftest import RtspServer
from tests.tools import assert_promtool_accepts_metrics
from tests.video_clip import FPS

pytestmark = pytest.mark.integration

TENANT, PIPELINE, NODE = "acme", "camera", "cam-1"
#: The camera's outage; the issue asks for 20 s (shorter for a quick local run).
OUTAGE_S = float(os.environ.get("CONTINUUM_TEST_VIDEO_OUTAGE_S", "20"))
#: FFmpeg's RTSP demuxer buffers about 2 s of stream while it probes it at open: a burst.
SETTLE_S = 3.0


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


#: Seconds the slow pipeline's preprocess takes per frame: inference at 4 frames/s.
SLOW_S = 0.25


def slow_preprocess(image: np.ndarray) -> np.ndarray:
    """Stand in for a model slower than the camera (runs after the declared image prep)."""
    time.sleep(SLOW_S)
    return image


def write_camera_pipeline(folder: Path, *, slow: bool = False) -> Path:
    """The camera pipeline: 64x64 RGB frames to the model's 1x8x8 gray input, 0..16 scale."""
    pipe = Pipeline(PIPELINE, tenant=TENANT, data_class="internal")
    declare = pipe.edge(
        model="inspector",
        backend="onnxruntime",
        shape=(1, 8, 8),
        image=ImagePrep(resize=(8, 8), colour="gray", scale=16 / 255),
        max_batch=1,
    )
    if slow:
        declare(slow_preprocess)
    pipe.uplink(select.random(1.0))
    path = folder / f"{PIPELINE}.yaml"
    path.write_text(pipe.spec.to_yaml(), encoding="utf-8")
    return path


@pytest.fixture
def rig(tmp_path: Path, mqtt_broker: EmbeddedBroker) -> Iterator[AgentRig]:
    cloud = CloudStandIn(mqtt_broker.host, mqtt_broker.port, TENANT)
    made = AgentRig(
        tmp_path,
        host=mqtt_broker.host,
        port=mqtt_broker.port,
        node=NODE,
        tenant=TENANT,
        pipeline=PIPELINE,
        cloud=cloud,
    )
    made.spec = write_camera_pipeline(tmp_path)
    cloud.subscribe(f"ctm/{TENANT}/#")
    try:
        yield made
    finally:
        made.stop_agents()
        for topic in (
            topics.node_desired(TENANT, NODE),
            topics.node_status(TENANT, NODE),
            topics.node_reported(TENANT, NODE),
        ):
            cloud.publish(topic, b"", retain=True)
        cloud.close()


def frames_inferred(agent: EdgeAgent) -> float:
    value = agent.metrics.registry.get_sample_value(
        "continuum_edge_frames_total", {"pipeline": PIPELINE}
    )
    return value or 0.0


def source_count(agent: EdgeAgent, name: str, **labels: str) -> float:
    value = agent.metrics.registry.get_sample_value(
        f"continuum_edge_source_{name}_total", {"pipeline": PIPELINE, **labels}
    )
    return value or 0.0


def rate(agent: EdgeAgent, seconds: float) -> float:
    before = frames_inferred(agent)
    time.sleep(seconds)
    return (frames_inferred(agent) - before) / seconds


@pytest.mark.slow
class TestCameraPipeline:
    def test_stream_is_inferred_at_its_rate_uplinked_as_declared_and_survives_an_outage(
        self, rig: AgentRig, rtsp_server: RtspServer
    ) -> None:
        cam = {"ref": "edge_agent.video:VideoSource", "args": {"url": rtsp_server.url}}
        cam["args"].update(read_timeout_s=2.0, retry_min_s=0.5, retry_max_s=4.0)
        agent = rig.agent(source=cam, confirm_stored=False)
        agent.start()
        rig.roll_out("v1", 1)
        wait_for(lambda: frames_inferred(agent) > 0, timeout_s=20)
        time.sleep(SETTLE_S)
        assert FPS * 0.8 <= rate(agent, 5.0) <= FPS * 1.2

        # What went up is what the pipeline declared: the digits, 8x8 gray on 0..16.
        digits = load_digits().images.astype(np.float32)
        records = [
            r for _, p, _ in rig.cloud.messages("/samples/") for r in decode_samples(p).records
        ]
        assert len(records) >= 3 * FPS
        for record in records[:20]:
            assert record.tensor.shape == (1, 8, 8)
            nearest = np.abs(digits - record.tensor[0]).mean(axis=(1, 2)).min()
            assert nearest < 1.0, nearest  # H.264 at 64x64 loses a little, not the digit

        rss_before = rss_bytes()
        rtsp_server.kill()
        time.sleep(2.5)  # frames already decoded drain
        assert rate(agent, OUTAGE_S - 2.5) == 0.0
        rtsp_server.start()
        wait_for(lambda: source_count(agent, "reconnects") == 1, timeout_s=15)
        time.sleep(SETTLE_S)
        assert FPS * 0.8 <= rate(agent, 5.0) <= FPS * 1.2
        assert source_count(agent, "stream_failures") >= 3
        assert rss_bytes() - rss_before < 30 * 2**20
        started = time.monotonic()
        agent.stop(timeout_s=5.0)
        assert time.monotonic() - started < 10.0


class TestCameraFasterThanInference:
    def test_a_camera_faster_than_inference_drops_the_oldest_frames_and_says_so(
        self, rig: AgentRig, rtsp_server: RtspServer
    ) -> None:
        rig.spec = write_camera_pipeline(rig.folder, slow=True)
        cam = {"ref": "edge_agent.video:VideoSource", "args": {"url": rtsp_server.url}}
        agent = rig.agent(source=cam, confirm_stored=False)
        agent.start()
        rig.roll_out("v1", 1)
        wait_for(lambda: frames_inferred(agent) > 0, timeout_s=20)
        # The runtime's own frame queue (16 frames at max_batch=1) fills first, in ~3 s.
        time.sleep(SETTLE_S + 3.0)
        dropped_before = source_count(agent, "frames_dropped", reason="backpressure")
        inferred = rate(agent, 5.0)
        dropped = source_count(agent, "frames_dropped", reason="backpressure") - dropped_before
        assert inferred <= 1 / SLOW_S * 1.1, inferred
        # What inference cannot take of the camera's 10 frames/s is dropped at the source.
        assert dropped >= (FPS - 1 / SLOW_S) * 5.0 * 0.7, dropped
        text = agent.metrics.render().decode()
        assert (
            f'continuum_edge_source_frames_dropped_total{{pipeline="{PIPELINE}",'
            'reason="backpressure"}' in text
        )
        assert_promtool_accepts_metrics(text)


class TestCameraToTheStore:
    def test_camera_frames_are_stored_by_a_real_ingest_as_the_edge_prepared_them(
        self, rig: AgentRig, rtsp_server: RtspServer, mqtt_broker: EmbeddedBroker, tmp_path: Path
    ) -> None:
        # The whole way of a camera frame: RTSP, PyAV, the declared ImagePrep, inference,
        # selection, the outbox, the broker, ingest (acked after the write), Parquet.
        from cloud_head.ingest import IngestService, IngestWorker
        from cloud_head.labelling import LabelStore
        from cloud_head.store import SampleStore
        from continuum.spec import load_pipeline
        from continuum.wire.mqtt import BrokerSettings
        from tests.edge_agent_kit import stored_ids

        store = SampleStore(tmp_path / "store")
        labels = LabelStore(tmp_path / "labels.db")
        service = IngestService(
            TENANT, [load_pipeline(rig.spec)], store, labels, tmp_path / "seen.db"
        )
        settings = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port)
        worker = IngestWorker(service, settings, client_id="ingest-camera-1")
        worker.start()
        try:
            cam = {"ref": "edge_agent.video:VideoSource", "args": {"url": rtsp_server.url}}
            agent = rig.agent(source=cam)
            agent.start()
            rig.roll_out("v1", 1)
            wait_for(
                lambda: len(stored_ids(store, TENANT, PIPELINE)) >= 2 * FPS,
                timeout_s=60.0,
                interval_s=0.5,
            )
            table = store.read(TENANT, PIPELINE, columns=["dtype", "shape", "tensor"])
            digits = load_digits().images.astype(np.float32)
            for dtype, shape, raw in zip(
                table.column("dtype").to_pylist()[:20],
                table.column("shape").to_pylist()[:20],
                table.column("tensor").to_pylist()[:20],
                strict=True,
            ):
                assert (dtype, tuple(shape)) == ("float32", (1, 8, 8))
                image = np.frombuffer(raw, dtype="<f4").reshape(8, 8)
                assert np.abs(digits - image).mean(axis=(1, 2)).min() < 1.0
        finally:
            rig.stop_agents()
            worker.stop()
            service.close()
            labels.close()
