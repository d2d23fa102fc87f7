"""VideoSource on real files (no network): pacing, rate cap, drop-oldest, loss and backoff."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from continuum.errors import ConfigError
from edge_agent._source_counts import SourceCollector, SourceCounts
from edge_agent.video import VideoSource, _ffmpeg_options, _redact
from tests.video_clip import FPS, digit_frames, encode_digits_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of the digits at 10 fps."""
    return encode_digits_clip(tmp_path_factory.mktemp("clip") / "digits.mkv", seconds=2)


class TestFiles:
    def test_a_file_plays_at_its_own_rate_and_then_ends(self, clip: Path) -> None:
        started = time.monotonic()
        frames = list(VideoSource(str(clip)))
        elapsed = time.monotonic() - started
        assert len(frames) == 2 * FPS
        # 20 frames 0.1 s apart: 1.9 s from the first to the last, plus opening.
        assert 1.8 <= elapsed <= 4.0, elapsed
        first = frames[0].tensor
        assert first.shape == (64, 64, 3) and first.dtype == np.uint8
        expected = digit_frames(1)[0].astype(float)
        assert np.abs(first.astype(float) - expected).mean() < 8  # H.264 is lossy, not noise

    def test_max_fps_keeps_about_that_many_frames_a_second(self, clip: Path) -> None:
        source = VideoSource(str(clip), max_fps=5)
        frames = list(source)
        counts = source.counts()
        assert 8 <= len(frames) <= 12, len(frames)
        assert counts.decoded == 2 * FPS
        assert counts.dropped == {"max_fps": counts.decoded - len(frames)}


class TestBackpressure:
    def test_a_consumer_that_falls_behind_gets_the_newest_frames(self, clip: Path) -> None:
        source = VideoSource(str(clip), pace=False, queue_frames=2)
        iterator = iter(source)
        next(iterator)
        time.sleep(1.5)  # the decoder runs through the whole clip meanwhile
        rest = list(iterator)
        counts = source.counts()
        assert len(rest) == 2
        newest = digit_frames(2 * FPS)[-2:]
        for got, want in zip(rest, newest, strict=True):
            assert np.abs(got.tensor.astype(float) - want).mean() < 8
        assert counts.decoded == 2 * FPS
        assert counts.dropped == {"backpressure": 2 * FPS - 3}


class TestLoss:
    def test_a_broken_stream_is_retried_with_capped_backoff_until_closed(
        self, tmp_path: Path
    ) -> None:
        broken = tmp_path / "broken.mkv"
        broken.write_bytes(b"not a video at all" * 100)
        source = VideoSource(str(broken), live=True, retry_min_s=0.05, retry_max_s=0.2)
        got: list[object] = []
        reader = threading.Thread(target=lambda: got.extend(source), daemon=True)
        reader.start()
        time.sleep(2.0)
        failures = source.counts().failures
        source.close()
        reader.join(5)
        assert not reader.is_alive(), "close() did not end the iteration"
        assert got == []
        # Backoff 0.05 s doubling to a 0.2 s cap (jittered down to half): 2 s holds about
        # 10 to 25 attempts; without the cap it would be 5, without backoff thousands.
        assert 8 <= failures <= 30, failures
        assert source.counts().reconnects == 0


class TestConfig:
    def test_a_missing_file_names_what_it_accepts(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"does not exist.*rtsp://.*/dev/video0"):
            VideoSource(str(tmp_path / "nope.mp4"))

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ({"max_fps": 0}, "max_fps must be positive"),
            ({"queue_frames": 0}, r"queue_frames must be in \[1, 1024\]"),
            ({"retry_min_s": 5, "retry_max_s": 1}, "retry_max_s"),
            ({"rtsp_transport": "http"}, "tcp or udp"),
        ],
    )
    def test_bad_arguments_are_config_errors(self, args: dict[str, object], message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            VideoSource("rtsp://127.0.0.1:1/cam", **args)  # type: ignore[arg-type]

    def test_rtsp_goes_over_tcp_with_a_socket_timeout(self) -> None:
        assert _ffmpeg_options("rtsp://cam/s", 2.5, "tcp", None) == {
            "rtsp_transport": "tcp",
            "timeout": "2500000",
        }
        assert _ffmpeg_options("https://cam/mjpg", 1, "tcp", {"a": "b"}) == {
            "rw_timeout": "1000000",
            "a": "b",
        }
        assert _ffmpeg_options("/dev/video0", 1, "tcp", {"video_size": "640x480"}) == {
            "video_size": "640x480"
        }

    def test_camera_passwords_are_redacted_for_logs(self) -> None:
        assert _redact("rtsp://admin:s3cret@10.0.0.7:554/s1") == "rtsp://***@10.0.0.7:554/s1"
        assert _redact("HTTP://u@cam/mjpg") == "HTTP://***@cam/mjpg"
        assert _redact("/dev/video0") == "/dev/video0"
        assert (
            repr(VideoSource("rtsp://a:b@cam/s")) == "VideoSource('rtsp://***@cam/s', max_fps=None)"
        )

    def test_devices_and_urls_are_live_files_are_not(self, clip: Path) -> None:
        assert VideoSource("/dev/video0").live
        assert VideoSource("rtsp://cam/s").live and not VideoSource("rtsp://cam/s").pace
        assert not VideoSource(str(clip)).live and VideoSource(str(clip)).pace


class TestCollector:
    def test_counts_are_exported_by_pipeline_and_reason(self) -> None:
        class Counted:
            def counts(self) -> SourceCounts:
                return SourceCounts(decoded=9, dropped={"backpressure": 4}, failures=2)

        collector = SourceCollector()
        collector.watch("cam", Counted())
        collector.watch("plain", object())  # keeps no counts: not exported
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in collector.collect()
            for s in family.samples
        }
        assert (
            samples[
                (
                    "continuum_edge_source_frames_dropped_total",
                    (("pipeline", "cam"), ("reason", "backpressure")),
                )
            ]
            == 4
        )
        assert samples[("continuum_edge_source_stream_failures_total", (("pipeline", "cam"),))] == 2
        assert not any(dict(labels).get("pipeline") == "plain" for _, labels in samples)
