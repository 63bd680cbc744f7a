"""Video decoding on real encoded files (written here with PyAV): sampling, times, rotation, bad input."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from emola.video import VideoLimits, VideoProblem, probe, sample_frames


def _write(path, frames: int = 20, fps: int = 10, size=(64, 48), rotation: int | None = None, times=None,
           codec: str = "libx264"):
    """A clip whose frame i is uniformly grey level 10 * i, with its left quarter white (to see rotation)."""
    w, h = size
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    if times is not None:   # variable frame rate: explicit presentation times in milliseconds
        stream.codec_context.time_base = Fraction(1, 1000)
    if rotation is not None:
        stream.set_display_rotation(rotation)
    for i in range(frames):
        image = np.full((h, w, 3), 10 * i % 250, np.uint8)
        image[:, : w // 4] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        if times is not None:
            frame.pts, frame.time_base = times[i], Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def _grey(frame) -> float:
    return float(frame.image[:, frame.image.shape[1] // 2:].mean())


def test_frames_are_sampled_by_time_with_their_index_and_timestamp(tmp_path):
    clip = _write(tmp_path / "clip.mp4", frames=20, fps=10)
    info = probe(clip)
    assert (info.width, info.height, info.rotation) == (64, 48, 0) and info.average_fps == 10
    assert info.duration_s == pytest.approx(2.0, abs=0.15)
    every = list(sample_frames(clip))
    assert [f.index for f in every] == list(range(20))
    assert [f.time_ms for f in every[:3]] == [0.0, 100.0, 200.0]
    assert all(abs(_grey(f) - 10 * f.index) < 4 for f in every)   # the right frames, in order
    half = list(sample_frames(clip, fps=5))
    assert [f.index for f in half] == list(range(0, 20, 2)) and half[1].time_ms == 200.0
    assert [f.index for f in sample_frames(clip, fps=100)] == list(range(20))   # never repeats a frame
    assert every[0].image.shape == (48, 64, 3) and every[0].image.dtype == np.uint8


def test_variable_frame_rate_is_sampled_by_presentation_time(tmp_path):
    times = [0, 40, 80, 120, 400, 440, 900, 1000, 1100, 1500]   # bursts and gaps, in ms
    clip = _write(tmp_path / "vfr.mkv", frames=len(times), fps=25, times=times)
    kept = list(sample_frames(clip, fps=4))   # instants 0, 250, 500, 750, 1000, 1250, 1500 ms
    assert [f.time_ms for f in kept] == [0.0, 400.0, 900.0, 1000.0, 1500.0]
    assert [f.index for f in kept] == [0, 4, 6, 7, 9]


def test_rotated_recordings_come_out_upright(tmp_path):
    clip = _write(tmp_path / "phone.mp4", frames=3, size=(64, 32), rotation=90)
    info = probe(clip)
    assert (info.width, info.height, info.rotation) == (32, 64, 90)
    image = next(sample_frames(clip)).image
    assert image.shape == (64, 32, 3)
    # The stored frame's white left quarter is its bottom quarter once turned 90 degrees counterclockwise.
    assert image[-8:].mean() > 240 and image[:8].mean() < 40


def test_bad_inputs_each_get_their_problem(tmp_path):
    good = _write(tmp_path / "good.mp4", frames=30)
    cases = {}
    (tmp_path / "missing.mp4").unlink(missing_ok=True)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video at all, just some text\n" * 20)
    (tmp_path / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    audio = av.open(str(tmp_path / "audio.m4a"), "w")
    stream = audio.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    frame.sample_rate = 16000
    for packet in stream.encode(frame):
        audio.mux(packet)
    for packet in stream.encode():
        audio.mux(packet)
    audio.close()
    nothing = av.open(str(tmp_path / "zero.mkv"), "w")
    s = nothing.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    nothing.start_encoding()   # the header, and no frame
    nothing.close()
    for name in ("missing.mp4", "empty.mp4", "notes.mp4", "truncated.mp4", "audio.m4a", "zero.mkv"):
        with pytest.raises(VideoProblem) as caught:
            list(sample_frames(tmp_path / name))
        cases[name] = caught.value.code
        assert name in str(caught.value)
    assert cases == {"missing.mp4": "missing", "empty.mp4": "empty", "notes.mp4": "not_video",
                     "truncated.mp4": "corrupt", "audio.m4a": "not_video", "zero.mkv": "corrupt"}
    # Over the caps: resolution, duration, size, sampled frames.
    for limits, words in ((VideoLimits(max_pixels=1000), "pixels"), (VideoLimits(max_duration_s=1.0), "long"),
                          (VideoLimits(max_bytes=100), "bytes"), (VideoLimits(max_frames=5), "sampled frames")):
        with pytest.raises(VideoProblem, match=words) as caught:
            list(sample_frames(good, limits=limits))
        assert caught.value.code == "too_large"
    # An upload is the same as a file.
    assert len(list(sample_frames(good.read_bytes(), fps=5))) == 15
