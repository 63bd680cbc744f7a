"""Hostile containers at the decoder: only allowed containers open, nothing names another file, work is bounded."""

from __future__ import annotations

import threading
import time

import pytest

from emola.video import VideoLimits, VideoProblem, probe, sample_frames
from tests.serve.hostile_media import encoded, hostile_videos, jpeg, mjpeg_mkv, mutations

LIMITS = VideoLimits(max_bytes=6_000_000, max_pixels=800_000, max_decode_s=10)
CODES = {400: {"empty"}, 413: {"too_large"}, 415: {"not_video"}, 422: {"corrupt"}, 200: set()}


def _read(data: bytes, limits: VideoLimits = LIMITS, **kw) -> int:
    probe(data, limits)
    return sum(1 for _ in sample_frames(data, None, limits, **kw))


def test_every_hostile_case_is_refused_with_its_code(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(encoded("mp4", frames=10))
    for name, (data, statuses) in hostile_videos(str(clip)).items():
        started = time.monotonic()
        try:
            frames = _read(data)
            assert 200 in statuses, f"{name}: accepted, {frames} frames"
        except VideoProblem as err:
            assert err.code in set().union(*(CODES[s] for s in statuses)), (name, err.code, str(err))
            assert str(clip) not in str(err)   # a refusal never tells whether a named file exists
        assert time.monotonic() - started < 2, name


def test_a_playlist_naming_a_real_file_reads_nothing_and_answers_as_a_missing_one(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(encoded("mp4", frames=10))
    answers = []
    for target in (clip, tmp_path / "gone.mp4"):
        with pytest.raises(VideoProblem) as err:
            probe(f"ffconcat version 1.0\nfile {target}\n".encode(), LIMITS)
        answers.append((err.value.code, str(err.value)))
    assert answers[0] == answers[1] and answers[0][0] == "not_video"


def test_random_mutations_of_every_allowed_container_never_escape_as_another_error():
    """1,200 mutated files: each decodes or is a VideoProblem, in well under a second."""
    seen = set()
    for base in (encoded("mp4", frames=20), encoded("matroska", frames=20), encoded("avi", "mpeg4", frames=20),
                 mjpeg_mkv([jpeg(64, 64)] * 10)):
        for data in mutations(base, 300, seed=len(base)):
            started = time.monotonic()
            try:
                _read(data)
                seen.add("ok")
            except VideoProblem as err:
                seen.add(err.code)
            assert time.monotonic() - started < 2
    assert {"ok", "corrupt"} <= seen


def test_a_frame_over_the_pixel_cap_is_refused_whatever_the_header_said():
    switch = mjpeg_mkv([jpeg(64, 64)] * 3 + [jpeg(1600, 1200)] * 3)
    assert probe(switch, LIMITS).width == 64   # the header and the first frame say 64x64
    with pytest.raises(VideoProblem, match="frame over the limit of 800000 pixels|over the limit of 800000"):
        _read(switch)


def test_decoded_frames_time_and_wall_clock_are_bounded_not_only_sampled_frames():
    clip = encoded("matroska", frames=40)
    with pytest.raises(VideoProblem, match="more than 30 decoded frames") as err:
        list(sample_frames(clip, 0.1, VideoLimits(max_decoded_frames=30)))   # one frame sampled, 30 decoded
    assert err.value.code == "too_large"
    with pytest.raises(VideoProblem, match="frames past 2 s|long, over the limit of 2 s"):
        list(sample_frames(clip, None, VideoLimits(max_duration_s=2.0)))   # 4 s of frames
    with pytest.raises(VideoProblem, match="decoding took longer"):
        list(sample_frames(clip, None, VideoLimits(max_decode_s=1e-9)))
    with pytest.raises(ValueError, match="at least 0.1"):
        list(sample_frames(clip, 1e-7))


def test_cancel_stops_decoding_at_the_next_frame():
    cancel = threading.Event()
    frames = sample_frames(encoded("matroska", frames=40), None, LIMITS, cancel)
    next(frames)
    cancel.set()
    with pytest.raises(VideoProblem) as err:
        next(frames)
    assert err.value.code == "cancelled"
