"""Writing frames as a video file (H.264 in MP4 by default): FABA-Synth clips and tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def write_video(path: Path | str, frames: Iterable[np.ndarray], fps: float, codec: str = "libx264",
                rotation: int | None = None) -> Path:
    """Encode ``(H, W, 3)`` uint8 RGB frames (even width and height for H.264) at ``fps``;
    ``rotation``: a display-matrix rotation in degrees counterclockwise (as phones record)."""
    import av
    from fractions import Fraction

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w")
    try:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                if rotation:
                    stream.set_display_rotation(rotation)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    return path
