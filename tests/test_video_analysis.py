"""Per-frame analysis of a real recording: a group photo filmed with a moving camera, then an empty scene."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emola import Analyzer
from emola.config.schema import GenerationConfig
from emola.labels import AU_LISTS, EMOTIONS
from emola.video import VideoProblem
from emola.video_analysis import VideoOptions, analyze_video, crop_box


def test_every_sampled_frame_gets_rows_with_stable_face_ids_and_descriptions_at_key_moments(
        readout_checkpoint, recording):
    analyzer = Analyzer.from_checkpoint(readout_checkpoint, generation=GenerationConfig(temperature=0.0, top_p=1.0, max_new_tokens=6))
    rows = analyze_video(analyzer, recording, VideoOptions(fps=5, smoothing=3))
    frames = sorted({r.frame for r in rows})
    assert frames == list(range(0, 16, 2))                      # 5 of the 10 frames per second, each one present
    faces = [r for r in rows if r.face_id is not None]
    empty = [r for r in rows if r.frame >= 12]
    assert [r.status for r in empty] == ["no_face", "no_face"] and all(r.face_id is None for r in empty)
    first = {r.face_id for r in faces if r.frame == 0}
    assert len(first) >= 4
    seen = [{r.face_id for r in faces if r.frame == frame} for frame in frames[:6]]
    assert all(ids <= first for ids in seen)            # the camera moves 12 px a frame: no face gets a new id
    assert len(set.intersection(*seen)) >= 4            # and most are found in every frame
    for r in faces:
        assert r.status == "ok" and len(r.landmarks) == 68 and set(r.aus) == set(AU_LISTS["FABA"])
        assert set(r.emotions) == set(EMOTIONS) and abs(sum(r.emotions.values()) - 1) < 1e-6
    for face in first:   # at least one key moment per face, each described
        keys = [r for r in faces if r.face_id == face and r.key_moment]
        assert keys and all(isinstance(r.description, str) for r in keys)
    assert all(r.description is None for r in faces if not r.key_moment)
    row = faces[0].to_row()
    assert {"frame", "time_ms", "face_id", "x0", "landmarks", "AU01", "AU12", "happiness", "key_moment"} <= set(row)
    assert faces[0].time_ms == 0.0 and [r.time_ms for r in faces if r.frame == 2][0] == 200.0


def test_smoothing_changes_the_probabilities_and_none_keeps_them(readout_checkpoint, recording):
    analyzer = Analyzer.from_checkpoint(readout_checkpoint)
    raw = analyze_video(analyzer, recording, VideoOptions(fps=5, smoothing=1, describe=False))
    smoothed = analyze_video(analyzer, recording, VideoOptions(fps=5, smoothing=5, describe=False))
    pick = lambda rows: np.array([[r.emotions[e] for e in EMOTIONS] for r in rows if r.face_id == 0])  # noqa: E731
    assert pick(raw).shape == pick(smoothed).shape
    assert np.abs(pick(raw) - pick(smoothed)).max() > 1e-4
    assert pick(smoothed).std(0).sum() <= pick(raw).std(0).sum() + 1e-9   # smoothing never adds jitter


def test_bad_videos_and_models_without_a_head_get_clear_errors(readout_checkpoint, tiny_checkpoint, tmp_path):
    analyzer = Analyzer.from_checkpoint(readout_checkpoint)
    (tmp_path / "notes.mp4").write_text("hello\n" * 50)
    with pytest.raises(VideoProblem, match="not a video"):
        analyze_video(analyzer, tmp_path / "notes.mp4")
    with pytest.raises(ValueError, match="readout head"):
        analyze_video(Analyzer.from_checkpoint(tiny_checkpoint), tmp_path / "notes.mp4")


def test_face_crops_are_squares_grown_by_the_margin_and_clipped():
    assert crop_box((40, 40, 60, 80), 200, 200, 0.25) == (20, 30, 80, 90)
    assert crop_box((0, 0, 50, 50), 60, 60, 0.5) == (0, 0, 60, 60)


def test_cli_writes_a_row_per_frame_and_face_and_a_timeline_picture(readout_checkpoint, recording, tmp_path):
    import csv
    import subprocess

    from tests.conftest import VENV_BIN

    (tmp_path / "broken.mp4").write_bytes(recording.read_bytes()[:2000])
    out, picture = tmp_path / "rows.csv", tmp_path / "timeline.png"
    run = subprocess.run([str(VENV_BIN / "emola"), "analyze", str(recording), str(tmp_path / "broken.mp4"),
                          "--checkpoint", str(readout_checkpoint), "--fps", "2.5", "--max-new-tokens", "4",
                          "--csv", str(out), "--plot", str(picture)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 1 and "broken.mp4" in run.stderr   # the bad file is reported, the good one done
    rows = list(csv.DictReader(out.open()))
    assert sorted({int(r["frame"]) for r in rows}) == [0, 4, 8, 12]
    assert {r["status"] for r in rows if int(r["frame"]) == 12} == {"no_face"}
    assert all(r["AU12"] and r["happiness"] for r in rows if r["status"] == "ok")
    assert any(r["description"] for r in rows if r["key_moment"] == "True")
    assert picture.stat().st_size > 10_000 and Image.open(picture).size[0] == 1200
