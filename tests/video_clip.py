"""A real video for the video source tests: scikit-learn's handwritten digits as an H.264 clip.

Encoded with PyAV's own libx264 into Matroska, the container the test RTSP server
(``tests/rtsp_server.py``) payloads without re-encoding.  Frame ``i`` shows digit image
``i % 1797`` scaled up 8x in gray (R = G = B), so a test can tell real pictures from noise.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from sklearn.datasets import load_digits

#: Frames per second of the clips.
FPS = 10
#: Width and height of a frame, in pixels (the 8x8 digits scaled up 8x).
SIZE = 64


def digit_frames(count: int) -> list[np.ndarray]:
    """Return ``count`` HxWx3 uint8 frames of the digits, in dataset order."""
    images = load_digits().images
    frames = []
    for i in range(count):
        gray = (images[i % len(images)] * (255 / 16)).astype(np.uint8)
        big = gray.repeat(SIZE // 8, axis=0).repeat(SIZE // 8, axis=1)
        frames.append(np.stack([big] * 3, axis=-1))
    return frames


def encode_digits_clip(path: Path, seconds: float) -> Path:
    """Write ``seconds`` of digits at ``FPS`` to ``path`` (H.264 in Matroska); return it."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream(
            "libx264", rate=FPS, options={"tune": "zerolatency", "preset": "ultrafast", "g": "10"}
        )
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for frame in digit_frames(int(seconds * FPS)):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path
