"""VideoSource against a real RTSP server (GStreamer's) serving an H.264 clip of the digits."""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from continuum.embedded._process import free_port
from continuum.sources import Frame
from edge_agent.metrics import AgentMetrics
from edge_agent.video import VideoSource
from tests.integration.edge_agent.conftest import RtspServer
from tests.video_clip import FPS, SIZE, encode_digits_clip

pytestmark = pytest.mark.integration

#: The outage of the reconnect test here; the 20 s one the issue asks for is the agent's,
#: in test_edge_agent_camera.
OUTAGE_S = 5.0
#: FFmpeg's RTSP demuxer buffers about 2 s of stream while it probes it at open: a burst.
SETTLE_S = 3.0


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Reader:
    """Consume a source on a thread, as the agent's source loop does; record arrival times."""

    def __init__(self, source: VideoSource, per_frame_s: float = 0.0) -> None:
        self.arrivals: list[float] = []
        self.frames: list[Frame] = []
        self._iterator: Iterator[Frame] = iter(source)
        self._per_frame_s = per_frame_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for frame in self._iterator:
            self.arrivals.append(time.monotonic())
            self.frames[-4:] = [*self.frames[-3:], frame]  # keep a few, not the stream
            if self._stop.is_set():
                break
            if self._per_frame_s:
                time.sleep(self._per_frame_s)

    def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.arrivals) < count:
            assert time.monotonic() < deadline, f"{len(self.arrivals)} of {count} frames came"
            time.sleep(0.05)

    def between(self, start: float, end: float) -> int:
        return sum(1 for t in self.arrivals if start <= t < end)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class TestStreamRate:
    def test_frames_arrive_at_the_streams_rate_as_rgb_pictures(
        self, rtsp_server: RtspServer
    ) -> None:
        reader = Reader(VideoSource(rtsp_server.url, retry_min_s=0.2, retry_max_s=1.0))
        try:
            reader.wait_for(1, timeout_s=15)
            start = reader.arrivals[0] + SETTLE_S
            time.sleep(max(0.0, start + 5.0 - time.monotonic()))
            rate = reader.between(start, start + 5.0) / 5.0
            frame = reader.frames[-1]
        finally:
            reader.close()
        assert FPS * 0.8 <= rate <= FPS * 1.2, f"{rate} fps from a {FPS} fps stream"
        image = frame.tensor
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        # The digits are gray on black: R, G and B agree (up to the codec) and both show.
        assert np.abs(image.astype(int)[..., 0] - image[..., 2]).max() < 16
        assert image.min() < 40 and image.max() > 150

    def test_max_fps_caps_the_rate_and_counts_the_rest(self, rtsp_server: RtspServer) -> None:
        source = VideoSource(rtsp_server.url, max_fps=4)
        reader = Reader(source)
        try:
            reader.wait_for(1, timeout_s=15)
            start = reader.arrivals[0] + SETTLE_S
            time.sleep(max(0.0, start + 5.0 - time.monotonic()))
            rate = reader.between(start, start + 5.0) / 5.0
        finally:
            reader.close()
        assert 3.0 <= rate <= 4.6, rate
        assert source.counts().dropped["max_fps"] >= 5 * (FPS - 4) * 0.8


class TestBackpressure:
    def test_a_slow_consumer_gets_the_newest_frames_and_the_drops_are_exported(
        self, rtsp_server: RtspServer
    ) -> None:
        source = VideoSource(rtsp_server.url, queue_frames=3)
        metrics = AgentMetrics()
        metrics.watch_source("cam", source)
        reader = Reader(source, per_frame_s=0.5)  # 2 frames/s from a 10 frames/s camera
        try:
            reader.wait_for(1, timeout_s=15)
            time.sleep(SETTLE_S + 3.0)
            ages_s = [(time.time_ns() - f.captured_at_ns) / 1e9 for f in reader.frames[-1:]]
        finally:
            reader.close()
        counts = source.counts()
        assert counts.dropped["backpressure"] >= 20, counts
        # Held at most 3 frames (0.3 s) plus the consumer's 0.5 s: never seconds old.
        assert ages_s[0] < 1.5, ages_s
        text = metrics.render().decode()
        found = re.search(
            r'continuum_edge_source_frames_dropped_total\{pipeline="cam",reason="backpressure"\}'
            r" (\S+)",
            text,
        )
        assert found is not None and float(found.group(1)) >= counts.dropped["backpressure"]


class TestOutage:
    def test_source_reconnects_by_itself_after_the_camera_is_gone_and_memory_stays_flat(
        self, rtsp_server: RtspServer
    ) -> None:
        source = VideoSource(rtsp_server.url, read_timeout_s=2.0, retry_min_s=0.5, retry_max_s=4.0)
        reader = Reader(source)
        try:
            reader.wait_for(FPS * 5, timeout_s=20)
            rss_before = rss_bytes()
            rtsp_server.kill()
            killed = time.monotonic()
            time.sleep(OUTAGE_S)
            during = reader.between(killed + 2.5, killed + OUTAGE_S)
            rtsp_server.start()
            restarted = time.monotonic()
            seen = len(reader.arrivals)
            reader.wait_for(seen + FPS * 3, timeout_s=20)
            back_after_s = reader.arrivals[seen] - restarted
            rss_after = rss_bytes()
        finally:
            reader.close()
        counts = source.counts()
        assert during == 0
        assert counts.reconnects == 1, counts
        # Each failed attempt during the outage was counted (backoff 0.5 s doubling to 4 s).
        assert counts.failures >= 2, counts
        # Back within the longest backoff plus FFmpeg's stream probe at open.
        assert back_after_s < 4.0 + 5.0, back_after_s
        assert rss_after - rss_before < 20 * 2**20, (rss_before, rss_after)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class TestCredentials:
    def test_camera_passwords_stay_out_of_logs_and_thread_names(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        port = free_port()
        source = VideoSource(
            f"rtsp://admin:s3cret@127.0.0.1:{port}/s1", retry_min_s=5, retry_max_s=5
        )
        iterator = iter(source)
        reader = threading.Thread(target=lambda: next(iterator, None), daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while source.counts().failures == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        names = [t.name for t in threading.enumerate()]
        source.close()
        reader.join(10)
        assert source.counts().failures >= 1  # nothing listens there: refused
        assert any(f"rtsp://***@127.0.0.1:{port}/s1" in n for n in names), names
        assert "s3cret" not in " ".join(names) + caplog.text + repr(source)
        assert "***@127.0.0.1" in caplog.text


class TestHttp:
    def test_a_clip_over_http_is_decoded_whole_at_its_rate(self, tmp_path: Path) -> None:
        encode_digits_clip(tmp_path / "digits.mkv", seconds=2)
        handler = functools.partial(_QuietHandler, directory=str(tmp_path))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, name="test-http", daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_port}/digits.mkv"
            source = VideoSource(url, live=False, pace=True)
            started = time.monotonic()
            frames = list(source)
            elapsed = time.monotonic() - started
        finally:
            server.shutdown()
            server.server_close()
        assert len(frames) == 2 * FPS
        assert 1.8 <= elapsed <= 5.0, elapsed
        assert source.counts().failures == 0
