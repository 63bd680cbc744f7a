"""Video decoding for per-frame analysis: probing, caps, sampling at a frame rate, upright frames.

Decoding is PyAV's (FFmpeg's libraries, in the wheel). A video is read once, frame by
frame: the frames kept are those at or after each sampling instant (``fps`` per second of
presentation time, so variable frame rate videos are sampled by time, not by count), each
with its decoded frame index and its presentation time in milliseconds, rotated upright
by the stream's display matrix (phone recordings store it instead of rotated pixels).

Every problem is a :class:`VideoProblem` whose ``code`` says what kind it is: ``missing``,
``empty``, ``not_video`` (not one of the allowed containers, or one without a video stream:
audio only), ``corrupt`` (a stream that fails to decode, a truncated file), ``too_large``
(over :class:`VideoLimits`) and ``cancelled`` (the caller gave up), so callers can answer
4xx or a per-file status.

Hostile input: a file is opened only as one of :data:`CONTAINERS` (MP4/MOV, Matroska/WebM,
AVI), named explicitly from its first bytes; FFmpeg never guesses the format, so no playlist
(ffconcat, HLS, DASH, SDP), image sequence, raw stream or protocol is reachable from a file's
content, and MOV's external data references stay off. The work is bounded on what is
actually decoded: the pixels of every frame (FFmpeg's decoder refuses a frame over the cap
before allocating it, whatever the header said), the frames decoded (not only those kept),
the presentation time reached and the wall time spent decoding.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


#: File suffixes taken for videos (any case) by the CLI and the video job.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")

#: The containers a video may be: name -> FFmpeg demuxer. Nothing else is opened.
CONTAINERS = {"mp4": "mov", "matroska": "matroska", "avi": "avi"}
#: Demuxer options: MOV's data references (``dref``: media in other files) stay unresolved, and no
#: protocol is allowed for any nested open, so a file's content cannot name another file or URL.
_DEMUXER_OPTIONS = {"enable_drefs": "0", "use_absolute_path": "0", "protocol_whitelist": "none"}
#: At most this many streams in a file (a container of thousands of streams is refused unread).
MAX_STREAMS = 16
#: Frames sampled per second: the range a request or the params may ask for (None: every frame); below
#: the lower end nothing is sampled (a frame per 10 s), above the upper one nothing more is.
FPS_RANGE = (0.1, 60.0)


class VideoProblem(ValueError):
    """A video that cannot be used; ``code``: missing, empty, not_video, corrupt, too_large or cancelled."""

    def __init__(self, message: str, code: str = "corrupt"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class VideoLimits:
    """Caps on one video: checked before decoding (bytes, stated duration and resolution) and on what is
    decoded (every frame's pixels, frames decoded and sampled, time reached, wall time), and on the analysis
    (faces per frame, descriptions per video)."""

    max_bytes: int = 200 * 2**20
    max_duration_s: float = 600.0
    max_frames: int = 20_000          # sampled frames
    max_pixels: int = 3840 * 2160     # per frame, every decoded frame
    max_decoded_frames: int = 40_000  # frames decoded, sampled or not
    max_decode_s: float = 1200.0      # wall time of one pass over the video
    max_faces: int = 16               # faces analysed per frame (the largest)
    max_descriptions: int = 64        # descriptions generated per video (the strongest key moments)


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
    kind = container_format(source)
    if kind is None:
        raise VideoProblem(f"{name}: not a video in an allowed container ({', '.join(CONTAINERS)})", "not_video")
    handle = io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray) else open(source, "rb")
    try:
        container = av.open(handle, format=CONTAINERS[kind], container_options=dict(_DEMUXER_OPTIONS),
                            metadata_errors="replace")
    except av.error.EOFError:
        handle.close()
        raise VideoProblem(f"{name}: the file ends before its first frame (truncated, or no frames)", "corrupt") from None
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        handle.close()
        raise VideoProblem(f"{name}: a {kind} file that cannot be read: truncated or damaged ({_reason(err)})",
                           "corrupt") from None
    if (streams := len(container.streams)) > MAX_STREAMS:
        container.close()
        raise VideoProblem(f"{name}: {streams} streams, over the limit of {MAX_STREAMS}", "too_large")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no"]
        container.close()
        raise VideoProblem(f"{name}: no video stream ({', '.join(kinds)} streams only)", "not_video")
    context = container.streams.video[0].codec_context
    if context is None:
        container.close()
        raise VideoProblem(f"{name}: a video stream in a codec FFmpeg cannot decode", "not_video")
    # The decoder refuses any frame over the pixel cap before allocating it, whatever the header said.
    context.options = {"max_pixels": str(limits.max_pixels)}
    return container, name


def _reason(err) -> str:
    """FFmpeg's words for ``err``, without the file name PyAV appends (here always a stream, ``'<none>'``)."""
    return str(getattr(err, "strerror", None) or err)


def container_format(source: Path | bytes) -> str | None:
    """Which of :data:`CONTAINERS` the first bytes are (None: none of them)."""
    if isinstance(source, bytes | bytearray):
        head = bytes(source[:12])
    else:
        with open(source, "rb") as handle:
            head = handle.read(12)
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):   # QuickTime may start without ftyp
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    return None


def looks_like_video(source: Path | bytes) -> bool:
    """Whether the first bytes are those of an allowed video container (MP4/MOV, Matroska/WebM, AVI)."""
    return container_format(source) is not None


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
        _check(_info(container, stream, name), limits, name)   # the stated size: refused before any decoding
        try:
            first = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError as err:
            raise VideoProblem(f"{name}: the first frame does not decode ({_decode_reason(err, limits)})",
                               "corrupt") from None
        if first is None:
            raise VideoProblem(f"{name}: no frame could be decoded (truncated or empty stream)", "corrupt")
        _check_frame(first, limits, name, 0)
        return _info(container, stream, name, _rotation(first))   # rotation changes no checked size
    finally:
        container.close()


def _decode_reason(err, limits: VideoLimits) -> str:
    """FFmpeg's reason; its decoder's "invalid argument" is mostly a frame over ``max_pixels``, so say so."""
    import av

    if isinstance(err, av.error.ArgumentError):
        return f"invalid data, or a frame over the limit of {limits.max_pixels} pixels"
    return _reason(err)


def _check_frame(frame, limits: VideoLimits, name: str, index: int) -> None:
    """A decoded frame over the pixel cap is refused, whatever the stream's header said."""
    if frame.width * frame.height > limits.max_pixels:
        raise VideoProblem(f"{name}: frame {index} is {frame.width}x{frame.height}, over the limit of "
                           f"{limits.max_pixels} pixels", "too_large")


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


def sample_frames(source: Path | bytes, fps: float | None = None, limits: VideoLimits = VideoLimits(),
                  cancel: threading.Event | None = None) -> Iterator[Frame]:
    """Decode ``source`` and yield its frames at ``fps`` (None: every frame), upright, in order.

    Frame ``i`` is kept when its presentation time reaches the next sampling instant
    ``k / fps`` (k = 0, 1, ...); instants that fall between frames are not repeated.
    Raises :class:`VideoProblem` for a file that cannot be used, before the first frame
    when the container says so, or where decoding fails (a truncated file: ``corrupt``,
    naming the last good frame) or zero frames decode; ``too_large`` as soon as a decoded
    frame, the frames decoded or sampled, the time reached or the wall time passes
    ``limits``; ``cancelled`` at the first frame after ``cancel`` is set.
    """
    import av

    if fps is not None and not fps >= FPS_RANGE[0]:   # above the video's own rate: every frame
        raise ValueError(f"fps must be at least {FPS_RANGE[0]} (or None: every frame), got {fps}")
    started = time.monotonic()
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
                _check_budget(frame, decoded, started, limits, name, cancel)
                seconds = frame.time if frame.time is not None else (decoded - 1) / (info.average_fps or 25.0)
                start = seconds if start is None else start
                seconds -= start   # times from the first frame: some containers start at an offset
                if seconds > limits.max_duration_s:
                    raise VideoProblem(f"{name}: frames past {limits.max_duration_s:.0f} s, the limit", "too_large")
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
            raise VideoProblem(f"{name}: decoding failed after {decoded} frames ({_decode_reason(err, limits)})",
                               "corrupt") from None
        if decoded == 0:
            raise VideoProblem(f"{name}: no frame could be decoded (truncated or empty stream)", "corrupt")
    finally:
        container.close()


def _check_budget(frame, decoded: int, started: float, limits: VideoLimits, name: str,
                  cancel: threading.Event | None) -> None:
    """What every decoded frame is checked against: the caller's cancel, its pixels, the frames and time spent."""
    if cancel is not None and cancel.is_set():
        raise VideoProblem(f"{name}: cancelled after {decoded} frames (the caller is gone)", "cancelled")
    _check_frame(frame, limits, name, decoded - 1)
    if decoded > limits.max_decoded_frames:
        raise VideoProblem(f"{name}: more than {limits.max_decoded_frames} decoded frames", "too_large")
    if time.monotonic() - started > limits.max_decode_s:
        raise VideoProblem(f"{name}: decoding took longer than {limits.max_decode_s:.0f} s", "too_large")
