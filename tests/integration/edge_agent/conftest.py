"""Fixtures of the edge agent's integration tests: a real RTSP server serving a clip."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from continuum.embedded._process import free_port
from tests.video_clip import encode_digits_clip

#: Debian's interpreter, for which python3-gi (GStreamer's bindings) is built.
SYSTEM_PYTHON = "/usr/bin/python3"
_SERVER = Path(__file__).resolve().parents[2] / "rtsp_server.py"
_INSTALL = (
    "apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly (scripts/bootstrap.sh test does it)"
)


class RtspServer:
    """GStreamer's RTSP server on a free loopback port, serving ``clip`` at ``url``.

    ``kill`` ends it with SIGKILL (a camera losing power); ``start`` brings it back on the
    same port.
    """

    def __init__(self, clip: Path) -> None:
        self.clip = clip
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self._process: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server; return once it listens."""
        deadline = time.monotonic() + timeout_s
        while True:  # the port may still be held for a moment after a kill
            process = subprocess.Popen(
                [SYSTEM_PYTHON, str(_SERVER), str(self.clip), str(self.port)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() == "ready":
                self._process = process
                return
            process.kill()
            _, err = process.communicate(timeout=10)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the RTSP server did not start: {line!r} {err}")
            time.sleep(0.5)

    def kill(self) -> None:
        """Kill the server at once, as a camera that loses power."""
        if self._process is not None:
            self._process.kill()
            self._process.communicate(timeout=10)
            self._process = None


@pytest.fixture(scope="session")
def digits_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 90 s H.264 clip of the digits at 10 fps, 64x64 (tests/video_clip.py)."""
    return encode_digits_clip(tmp_path_factory.mktemp("video") / "digits.mkv", seconds=90)


@pytest.fixture
def rtsp_server(digits_clip: Path) -> Iterator[RtspServer]:
    """Yield a running RTSP server of this test's own, free to kill and start again."""
    if not Path(SYSTEM_PYTHON).is_file():
        pytest.fail(f"needs Debian's python3 at {SYSTEM_PYTHON} with {_INSTALL}")
    probe = [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        pytest.fail(f"needs GStreamer's RTSP server for Debian's python3: {_INSTALL}")
    server = RtspServer(digits_clip)
    server.start()
    try:
        yield server
    finally:
        server.kill()
