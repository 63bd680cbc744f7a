"""The video job: a folder of videos, bad files among them, analysed in one process and on Ray Data."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emola.config import load_config
from emola.labels import EMOTIONS
from emola.synth.clips import generate_clips
from emola.video_analysis import FrameRow
from emola.video_batch import clip_records, find_videos, run_video_job, score_clips, table_name, VideoResult
from tests.conftest import REPO


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    """Three labelled FABA-Synth clips, one in a subfolder, and a bad file of every kind."""
    folder = tmp_path_factory.mktemp("videos")
    generate_clips(folder, count=2, seed=3, size=96, fps=10, seconds=2.0)
    generate_clips(folder / "more", count=1, seed=4, size=96, fps=10, seconds=2.0)
    (folder / "notes.mp4").write_text("not a video")
    (folder / "empty.mov").write_bytes(b"")
    data = (folder / "0000.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 3])
    shutil.copy(folder / "0001.mp4", folder / "badlabels.mp4")
    (folder / "badlabels.json").write_text("{broken")
    (folder / "readme.txt").write_text("not a video by its name: ignored")
    return folder


def _cfg(folder: Path, out: Path, **extra):
    return load_config(REPO / "params.yaml", {
        "video.input": str(folder), "video.reports": str(out / "video"), "video.metrics": str(out / "video.json"),
        "video.actors": 2, "video.cpus_per_actor": 0.5,
        "evaluate.generation.max_new_tokens": 6, "evaluate.generation.temperature": 0.0, **extra})


def test_find_videos_by_suffix(video_folder):
    names = [p.relative_to(video_folder).as_posix() for p in find_videos(video_folder)]
    assert names == ["0000.mp4", "0001.mp4", "badlabels.mp4", "cut.mp4", "empty.mov", "more/0000.mp4", "notes.mp4"]
    assert table_name(video_folder / "more/0000.mp4", video_folder) == "more__0000.csv"


@pytest.fixture(scope="module")
def in_process(readout_checkpoint, video_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    (out / "video").mkdir()
    (out / "video" / "stale.csv").write_text("from an earlier run")
    metrics = run_video_job(_cfg(video_folder, out), readout_checkpoint, use_ray=False, log=lambda *_: None)
    return out, metrics


def test_every_file_is_reported_and_the_good_ones_have_a_row_per_frame(in_process, video_folder):
    out, metrics = in_process
    files = {Path(r["video"]).relative_to(video_folder).as_posix(): r
             for r in map(json.loads, (out / "video/files.jsonl").read_text().splitlines())}
    assert {k: v["status"] for k, v in files.items()} == {
        "0000.mp4": "ok", "0001.mp4": "ok", "more/0000.mp4": "ok", "badlabels.mp4": "bad_labels",
        "cut.mp4": "corrupt", "empty.mov": "empty", "notes.mp4": "not_video"}
    assert "badlabels.json: unreadable label file" in files["badlabels.mp4"]["reason"]
    assert "notes.mp4" in files["notes.mp4"]["reason"]
    assert metrics["status"] == {"bad_labels": 1, "corrupt": 1, "empty": 1, "not_video": 1, "ok": 3}
    for name in ("0000", "0001", "more__0000"):
        rows = list(csv.DictReader(open(out / f"video/{name}.csv")))
        assert [int(r["frame"]) for r in rows] == list(range(20))          # every frame, one face each
        assert {r["face_id"] for r in rows} == {"0"} and {r["status"] for r in rows} == {"ok"}
        assert abs(sum(float(rows[5][e]) for e in EMOTIONS) - 1) < 1e-3
        keys = [r for r in rows if r["key_moment"] == "True"]
        assert keys and all(r["description"] for r in keys)
    assert files["0000.mp4"]["landmarks"] == "annotation" and files["badlabels.mp4"]["landmarks"] == "dlib-68@1"
    assert (out / "video/badlabels.csv").is_file()    # analysed all the same, with the detector
    assert not (out / "video/stale.csv").exists() and (out / "video/timeline.png").stat().st_size > 1000
    assert json.loads((out / "video.json").read_text())["videos"] == 7


def test_labelled_clips_are_scored_at_the_apex_and_every_frame(in_process):
    head = in_process[1]["head"]
    assert head["clips"] == 3     # the clip with a broken label file is not scored
    for where, n in (("apex", 3), ("frames", 60)):
        for variant in ("raw", "smoothed"):
            scores = head[where][variant]
            assert scores["n"] == n and 0 <= scores["emotion_accuracy"] <= 100 and 0 <= scores["au_macro_f1"] <= 100
    assert head["key_moments"]["smoothed"]["faces"] == 3


def _row(frame: int, emotion: str, aus: dict[int, float], key=False, p=0.9) -> FrameRow:
    emotions = {e: (p if e == emotion else (1 - p) / 6) for e in EMOTIONS}
    row = FrameRow(frame, 100.0 * frame, 0, "ok", aus=aus, emotions=emotions, key_moment=key)
    row.raw_aus, row.raw_emotions = aus, emotions
    return row


def test_clip_scores_count_the_face_seen_most_and_measure_key_moments():
    labels = {"apex_frame": 3, "frames": [{"frame": i, "emotion": "neutral" if i < 2 else "happiness",
                                           "aus": [] if i < 2 else [6, 12]} for i in range(6)]}
    rows = [_row(0, "neutral", {6: 0.1, 12: 0.1}), _row(1, "neutral", {6: 0.1, 12: 0.1}),
            _row(2, "happiness", {6: 0.9, 12: 0.9}), _row(3, "happiness", {6: 0.9, 12: 0.2}, p=0.95),
            _row(4, "happiness", {6: 0.9, 12: 0.9}, key=True), _row(5, "sadness", {6: 0.1, 12: 0.1})]
    other = FrameRow(3, 300.0, 7, "ok", aus={6: 0.0, 12: 0.0}, emotions={e: 1 / 7 for e in EMOTIONS})
    records = clip_records(rows + [other], labels)
    assert [r["label"] for r in records["apex"]["raw"]] == ["happiness", "6, 12"]
    # Raw: the key moment is the most intense frame of the happiness segment (3, the apex); smoothed: the row's mark (4).
    assert records["key_distance"] == {"raw": 0, "smoothed": 1}
    scores = score_clips([VideoResult("a.mp4", "ok", scores=records)])
    assert scores["apex"]["raw"]["emotion_accuracy"] == 100.0 and scores["apex"]["raw"]["au_macro_f1"] == 50.0
    assert scores["frames"]["raw"]["emotion_accuracy"] == pytest.approx(100 * 5 / 6, abs=1e-3)
    assert scores["key_moments"]["smoothed"] == {"median_frames_from_apex": 1, "within_3_frames": 1, "faces": 1}


def test_on_ray_data_the_rows_are_those_of_one_process(in_process, readout_checkpoint, video_folder, tmp_path):
    out, metrics = in_process
    on_ray = run_video_job(_cfg(video_folder, tmp_path), readout_checkpoint, use_ray=True, log=lambda *_: None)
    assert on_ray["status"] == metrics["status"] and on_ray["head"] == metrics["head"]
    for name in ("0000.csv", "more__0000.csv", "badlabels.csv"):
        assert (tmp_path / "video" / name).read_text() == (out / "video" / name).read_text()


def test_the_job_skips_a_model_without_a_head_and_refuses_a_missing_folder(tiny_checkpoint, video_folder, tmp_path):
    def job(*args):
        return subprocess.run([sys.executable, "-m", "jobs.video", "--checkpoint", str(tiny_checkpoint),
                               f"video.reports={tmp_path / 'video'}", f"video.metrics={tmp_path / 'video.json'}", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    done = job(f"video.input={video_folder}")
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stdout and "no readout head" in json.loads((tmp_path / "video.json").read_text())["skipped"]
    missing = job(f"video.input={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and "nowhere is not a folder" in missing.stderr
