"""Video decoding for per-frame analysis: probing, caps, sampling at a frame rate, upright frames.

Decoding is PyAV's (FFmpeg's libraries, in the wheel). A video is read once, frame by
frame: the frames kept are those at or after each sampling instant (``fps`` per second of
presentation time, so variable frame rate videos are sampled by time, not by count), each
with its decoded frame index and its presentation time in milliseconds, rotated upright
by the stream's display matrix (phone recordings store it instead of rotated pixels).

Every problem is a :class:`VideoProblem` whose ``code`` says what kind it is: ``missing``,
``empty``, ``not_video`` (not a container FFmpeg reads, or one without a video stream:
audio only), ``corrupt`` (a stream that fails to decode, a truncated file) and
``too_large`` (over :class:`VideoLimits`), so callers can answer 4xx or a per-file status.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


#: File suffixes taken for videos (any case) by the CLI and the video job.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


class VideoProblem(ValueError):
    """A video that cannot be used; ``code``: missing, empty, not_video, corrupt or too_large."""

    def __init__(self, message: str, code: str = "corrupt"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class VideoLimits:
    """Caps checked before decoding (bytes, duration, resolution) and while decoding (frames)."""

    max_bytes: int = 200 * 2**20
    max_duration_s: float = 600.0
    max_frames: int = 20_000          # sampled frames
    max_pixels: int = 3840 * 2160     # per frame


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (upright size: after rotation)."""

    width: int
    height: int
    rotation: int          # degrees counterclockwise applied to make frames upright: 0, 90, 180 or 270
    duration_s: float | None
    average_fps: float | None
    frames: int | None     # as the container states it; None when it does not
    codec: str


@dataclass(frozen=True)
class Frame:
    """One sampled frame: ``index`` among the decoded frames, ``time_ms`` its presentation time,
    ``image`` ``(H, W, 3)`` uint8 RGB, upright."""

    index: int
    time_ms: float
    image: np.ndarray


def _open(source: Path | bytes, limits: VideoLimits):
    import av

    if isinstance(source, bytes | bytearray):
        size = len(source)
        name = "upload"
    else:
        path = Path(source)
        if not path.is_file():
            raise VideoProblem(f"{path}: no such file", "missing")
        size, name = path.stat().st_size, str(path)
    if size == 0:
        raise VideoProblem(f"{name}: empty file", "empty")
    if size > limits.max_bytes:
        raise VideoProblem(f"{name}: {size} bytes, over the limit of {limits.max_bytes}", "too_large")
    try:
        container = av.open(io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray) else str(source))
    except av.error.InvalidDataError as err:
        if _container_signature(source):
            raise VideoProblem(f"{name}: a video container that cannot be read: truncated or damaged ({err})",
                               "corrupt") from None
        raise VideoProblem(f"{name}: not a video FFmpeg can read ({err})", "not_video") from None
    except av.error.EOFError:
        raise VideoProblem(f"{name}: the file ends before its first frame (truncated, or no frames)", "corrupt") from None
    except av.error.FFmpegError as err:
        raise VideoProblem(f"{name}: cannot be opened ({err})", "corrupt") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no"]
        container.close()
        raise VideoProblem(f"{name}: no video stream ({', '.join(kinds)} streams only)", "not_video")
    return container, name


def looks_like_video(source: Path | bytes) -> bool:
    """Whether the first bytes are those of a video container (MP4/MOV, Matroska/WebM, AVI, FLV, Ogg)."""
    return _container_signature(source)


def _container_signature(source: Path | bytes) -> bool:
    """Whether the first bytes are those of a video container (MP4/MOV, Matroska/WebM, AVI, FLV, Ogg)."""
    if isinstance(source, bytes | bytearray):
        head = bytes(source[:12])
    else:
        with open(source, "rb") as handle:
            head = handle.read(12)
    return (head[4:8] == b"ftyp" or head.startswith((b"\x1a\x45\xdf\xa3", b"FLV", b"OggS"))
            or (head.startswith(b"RIFF") and head[8:12] == b"AVI "))


def _rotation(frame) -> int:
    """Degrees counterclockwise that make a decoded frame upright (its display matrix), a multiple of 90."""
    return int(round(float(frame.rotation or 0) / 90.0)) % 4 * 90


def _info(container, stream, name: str, rotation: int = 0) -> VideoInfo:
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    rate = stream.average_rate
    width, height = stream.codec_context.width, stream.codec_context.height
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(width=width, height=height, rotation=rotation, duration_s=duration,
                     average_fps=float(rate) if rate else None, frames=stream.frames or None,
                     codec=stream.codec_context.name)


def probe(source: Path | bytes, limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """The video's metadata, checked against ``limits`` (:class:`VideoProblem` otherwise)."""
    import av

    container, name = _open(source, limits)
    try:
        stream = container.streams.video[0]
        rotation = 0
        try:
            first = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError as err:
            raise VideoProblem(f"{name}: the first frame does not decode ({err})", "corrupt") from None
        if first is None:
            raise VideoProblem(f"{name}: no frame could be decoded (truncated or empty stream)", "corrupt")
        rotation = _rotation(first)
        info = _info(container, stream, name, rotation)
    finally:
        container.close()
    _check(info, limits, name)
    return info


def _check(info: VideoInfo, limits: VideoLimits, name: str) -> None:
    if info.width * info.height > limits.max_pixels:
        raise VideoProblem(f"{name}: {info.width}x{info.height} frames, over the limit of {limits.max_pixels} "
                           "pixels", "too_large")
    if info.duration_s is not None and info.duration_s > limits.max_duration_s:
        raise VideoProblem(f"{name}: {info.duration_s:.1f} s long, over the limit of {limits.max_duration_s:.0f} s",
                           "too_large")


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """``image`` rotated ``rotation`` degrees counterclockwise (a multiple of 90)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def sample_frames(source: Path | bytes, fps: float | None = None, limits: VideoLimits = VideoLimits()
                  ) -> Iterator[Frame]:
    """Decode ``source`` and yield its frames at ``fps`` (None: every frame), upright, in order.

    Frame ``i`` is kept when its presentation time reaches the next sampling instant
    ``k / fps`` (k = 0, 1, ...); instants that fall between frames are not repeated.
    Raises :class:`VideoProblem` for a file that cannot be used, before the first frame
    when the container says so, or where decoding fails (a truncated file: ``corrupt``,
    naming the last good frame) or zero frames decode.
    """
    import av

    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    container, name = _open(source, limits)
    kept = decoded = 0
    try:
        stream = container.streams.video[0]
        info = _info(container, stream, name)
        _check(info, limits, name)
        stream.thread_type = "AUTO"
        next_time = 0.0
        start = None
        try:
            for frame in container.decode(stream):
                decoded += 1
                seconds = frame.time if frame.time is not None else (decoded - 1) / (info.average_fps or 25.0)
                start = seconds if start is None else start
                seconds -= start   # times from the first frame: some containers start at an offset
                if fps is not None and seconds + 1e-6 < next_time:
                    continue
                if fps is not None:
                    while next_time <= seconds + 1e-6:
                        next_time += 1.0 / fps
                kept += 1
                if kept > limits.max_frames:
                    raise VideoProblem(f"{name}: more than {limits.max_frames} sampled frames", "too_large")
                yield Frame(index=decoded - 1, time_ms=round(seconds * 1000.0, 3),
                            image=upright(frame.to_ndarray(format="rgb24"), _rotation(frame)))
        except av.error.FFmpegError as err:
            raise VideoProblem(f"{name}: decoding failed after {decoded} frames ({err})", "corrupt") from None
        if decoded == 0:
            raise VideoProblem(f"{name}: no frame could be decoded (truncated or empty stream)", "corrupt")
    finally:
        container.close()
