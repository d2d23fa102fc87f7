"""Camera frames for the agent: ``VideoSource`` decodes RTSP, HTTP, a file or a V4L2 device.

Named in the agent config as ``{"ref": "edge_agent.video:VideoSource", "args": {"url":
"rtsp://cam-7/stream", "max_fps": 15}}``; it needs the ``video`` extra (PyAV).

Why PyAV rather than OpenCV: PyAV raises an exception on every failure, with FFmpeg's
reason, and takes open and read timeouts and FFmpeg's protocol options (``rtsp_transport``,
``rw_timeout``); OpenCV's ``VideoCapture`` answers ``False`` with no reason and has no
portable read timeout, so a stalled camera hangs the reader.  PyAV's wheels (Python 3.10
to 3.13, x86-64 and aarch64) bundle their own FFmpeg.  On Jetson that bundled FFmpeg
decodes on the CPU cores: Jetson's hardware decoders (NVDEC) are reached through NVIDIA's
V4L2 memory-to-memory driver, which NVIDIA's GStreamer plugins (``nvv4l2decoder``) and
NVIDIA's own FFmpeg build (``h264_nvv4l2dec``) use, and neither upstream FFmpeg nor
PyAV's wheels do.  A build of PyAV from source against NVIDIA's FFmpeg might; that is not
verified.  The same holds for OpenCV:
only a build with GStreamer (JetPack's own) reaches the hardware decoder, and pip's wheels
are not one.  For a few cameras of modest resolution, CPU decode on Orin's cores is
enough; for many 4K streams, use DeepStream or a GStreamer pipeline.

Decoding runs on the source's own thread into a bounded queue.  When the consumer falls
behind, the oldest frame is dropped, so memory stays bounded whatever the camera does and
inference works on the newest picture.  A lost stream is opened again with capped
exponential backoff; drops, failures and reconnections are counted (``counts``) and the
agent exports them.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from continuum._retry import Backoff, FailureLog
from continuum.errors import ConfigError
from continuum.sources import Frame
from edge_agent._source_counts import SourceCounts

__all__ = ["VideoSource"]

log = logging.getLogger(__name__)

_LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "srt://")
#: How long a closing iterator waits for its decoder thread (bounded by the read timeout).
_JOIN_S = 5.0


class VideoSource:
    """Frames of a video stream, decoded to HxWx3 uint8 RGB on the source's own thread.

    Args:
        url: ``rtsp://``, ``http(s)://`` and other FFmpeg URLs, a file path, or a V4L2 device
            (``/dev/video0``).
        max_fps: Keep at most this many frames per second (the rest are dropped as
            ``max_fps``); null keeps every frame.
        queue_frames: Decoded frames held for a slow consumer; past it the oldest is dropped
            (counted as ``backpressure``).
        open_timeout_s: Longest wait to open the stream.
        read_timeout_s: Longest wait for data once open; past it the stream counts as lost.
        retry_min_s: First wait before opening a lost stream again (doubling, jittered).
        retry_max_s: Longest wait between attempts.
        rtsp_transport: ``tcp`` (default: no losses on a busy link) or ``udp``.
        live: Whether the end of the stream is a loss to reconnect after; by default true for
            URLs and devices, false for files, which end the iteration.
        pace: Deliver a file's frames at its own rate, as a camera would; by default true for
            files (a live stream paces itself).
        options: More FFmpeg options, e.g. ``{"video_size": "1280x720"}`` for V4L2.

    Raises:
        ConfigError: an argument is out of range, or the file does not exist.
    """

    def __init__(
        self,
        url: str,
        *,
        max_fps: float | None = None,
        queue_frames: int = 4,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        rtsp_transport: Literal["tcp", "udp"] = "tcp",
        live: bool | None = None,
        pace: bool | None = None,
        options: Mapping[str, str] | None = None,
    ) -> None:
        try:
            import av  # noqa: F401  (checked here so a missing extra fails at config time)
        except ImportError as exc:
            raise ConfigError(
                "VideoSource needs PyAV: install the agent with the video extra, "
                "pip install 'continuum[edge,video]'"
            ) from exc
        _check_positive(max_fps=max_fps, open_timeout_s=open_timeout_s)
        _check_positive(read_timeout_s=read_timeout_s, retry_min_s=retry_min_s)
        if not 1 <= queue_frames <= 1024:
            raise ConfigError(f"queue_frames must be in [1, 1024], got {queue_frames}")
        if retry_max_s < retry_min_s:
            raise ConfigError(f"retry_max_s ({retry_max_s}) is below retry_min_s ({retry_min_s})")
        if rtsp_transport not in ("tcp", "udp"):
            raise ConfigError(f"rtsp_transport must be tcp or udp, got {rtsp_transport!r}")
        # /dev/video0, or a stable name such as /dev/v4l/by-id/usb-...-video-index0.
        is_device = url.startswith("/dev/")
        is_file = not is_device and not url.startswith(_LIVE_SCHEMES)
        if is_file and not Path(url).is_file():
            raise ConfigError(
                f"video file {url!r} does not exist; give a file path, an rtsp:// or "
                "http(s):// URL, or a V4L2 device such as /dev/video0"
            )
        self.url = url
        #: The URL without its user and password, for logs, thread names and repr.
        self.shown_url = _redact(url)
        self.max_fps = max_fps
        self.queue_frames = queue_frames
        self.live = not is_file if live is None else live
        self.pace = is_file if pace is None else pace
        self._timeouts = (open_timeout_s, read_timeout_s)
        self._retry = (retry_min_s, retry_max_s)
        self._format = "v4l2" if is_device else None
        self._options = _ffmpeg_options(url, read_timeout_s, rtsp_transport, options)
        self._lock = threading.Lock()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._failures = 0
        self._reconnects = 0
        self._decoded = 0
        self._decoders: set[_Decoder] = set()
        self._closed = False

    def counts(self) -> SourceCounts:
        """Return the counts so far: frames decoded and dropped, failures, reconnections."""
        with self._lock:
            return SourceCounts(
                decoded=self._decoded,
                dropped=dict(self._dropped),
                failures=self._failures,
                reconnects=self._reconnects,
            )

    def __iter__(self) -> Iterator[Frame]:
        """Start a decoder thread and yield its frames; closing the iterator stops it."""
        decoder = _Decoder(self)
        with self._lock:
            if self._closed:
                return
            self._decoders.add(decoder)
        decoder.start()
        try:
            while (frame := decoder.next_frame()) is not None:
                yield frame
        finally:
            decoder.stop()
            with self._lock:
                self._decoders.discard(decoder)

    def close(self) -> None:
        """Stop decoding: iterations end once their queued frames are taken (the agent calls
        this when the pipeline stops, while its source thread may wait on a dead camera)."""
        with self._lock:
            self._closed = True
            decoders = list(self._decoders)
        for decoder in decoders:
            decoder.stop()

    def __repr__(self) -> str:
        return f"VideoSource({self.shown_url!r}, max_fps={self.max_fps})"

    # What the decoder thread reports, under the lock.
    def _count(self, *, decoded: int = 0, failures: int = 0, reconnects: int = 0) -> None:
        with self._lock:
            self._decoded += decoded
            self._failures += failures
            self._reconnects += reconnects

    def _drop(self, reason: str) -> None:
        with self._lock:
            self._dropped[reason] += 1

    def _open(self) -> Any:
        import av

        container = av.open(
            self.url, format=self._format, options=dict(self._options), timeout=self._timeouts
        )
        container.streams.video[0].thread_type = "AUTO"
        return container


class _Decoder:
    """One iteration's decoder thread and its bounded, drop-oldest frame queue."""

    def __init__(self, source: VideoSource) -> None:
        self._source = source
        self._frames: collections.deque[Frame] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._stopping = threading.Event()
        self._ended = False
        self._thread = threading.Thread(
            target=self._run, name=f"video-source {source.shown_url}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(_JOIN_S)

    def next_frame(self) -> Frame | None:
        """Return the oldest queued frame; None once the stream has ended and all are taken."""
        with self._ready:
            while not self._frames:
                if self._ended:
                    return None
                self._ready.wait(0.5)
            return self._frames.popleft()

    def _put(self, frame: Frame) -> None:
        with self._ready:
            if len(self._frames) >= self._source.queue_frames:
                self._frames.popleft()
                self._source._drop("backpressure")
            self._frames.append(frame)
            self._ready.notify()

    def _run(self) -> None:
        source = self._source
        backoff = Backoff(*source._retry)
        failures = FailureLog(f"video source {source.shown_url}", log)
        opened_before = False
        try:
            while not self._stopping.is_set():
                try:
                    container = source._open()
                except Exception as exc:  # FFmpeg's errors are OSError/ValueError subclasses
                    self._lost(backoff, failures, f"cannot open: {exc}")
                    continue
                if opened_before:
                    source._count(reconnects=1)
                opened_before = True
                try:
                    self._decode(container, backoff, failures)
                except Exception as exc:
                    self._lost(backoff, failures, f"stream lost: {exc}")
                    continue
                finally:
                    container.close()
                if self._stopping.is_set() or not source.live:
                    return
                self._lost(backoff, failures, "stream ended")
        finally:
            with self._ready:
                self._ended = True
                self._ready.notify_all()

    def _lost(self, backoff: Backoff, failures: FailureLog, detail: str) -> None:
        self._source._count(failures=1)
        # FFmpeg's errors quote the URL, with the camera's password if it has one.
        failures.failed(detail.replace(self._source.url, self._source.shown_url))
        self._stopping.wait(backoff.next_delay())

    def _decode(self, container: Any, backoff: Backoff, failures: FailureLog) -> None:
        source = self._source
        gap_s = 0.0 if source.max_fps is None else 1.0 / source.max_fps
        last_kept = -float("inf")
        started: float | None = None
        first_s = 0.0
        for decoded in container.decode(video=0):
            if self._stopping.is_set():
                return
            if started is None:  # the first picture: the stream works again
                backoff.reset()
                failures.recovered()
                started = time.monotonic()
                first_s = decoded.time or 0.0
            source._count(decoded=1)
            if source.pace and decoded.time is not None:
                due = started + decoded.time - first_s
                self._stopping.wait(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            # A small slack keeps a camera at exactly max_fps from losing every other frame
            # to clock jitter.
            if now - last_kept < gap_s * 0.9:
                source._drop("max_fps")
                continue
            last_kept = now
            image: np.ndarray = decoded.to_ndarray(format="rgb24")
            self._put(Frame(tensor=image))


def _ffmpeg_options(
    url: str, read_timeout_s: float, transport: str, extra: Mapping[str, str] | None
) -> dict[str, str]:
    """Return FFmpeg's protocol options: TCP for RTSP, and socket timeouts in microseconds."""
    options: dict[str, str] = {}
    micros = str(int(read_timeout_s * 1e6))
    if url.startswith(("rtsp://", "rtsps://")):
        options.update(rtsp_transport=transport, timeout=micros)
    elif url.startswith(("http://", "https://")):
        options.update(rw_timeout=micros)
    options.update({str(k): str(v) for k, v in (extra or {}).items()})
    return options


def _redact(url: str) -> str:
    """Return ``url`` with any ``user:password@`` replaced by ``***@``."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1***@", url, flags=re.IGNORECASE)


def _check_positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be positive, got {value!r}")
