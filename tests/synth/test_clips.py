"""FABA-Synth expression clips: the profile, the labels, and a video that decodes to them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emola.synth.clips import (ClipLabelError, clip_landmarks, expression_profile, generate_clips,
                               read_clip_labels, render_clip)
from emola.video import sample_frames


def test_the_expression_rises_to_the_apex_and_falls_back():
    profile = expression_profile(12, onset=2, apex=5, offset=9)
    assert profile[:3].tolist() == [0, 0, 0] and profile[5] == 1 and profile[9:].tolist() == [0, 0, 0]
    assert np.all(np.diff(profile[2:6]) > 0) and np.all(np.diff(profile[5:10]) < 0)


def test_clips_are_deterministic_and_labelled_per_frame(tmp_path):
    images, labels = render_clip(seed=3, index=0, size=96, fps=10, seconds=2.0)
    again, same = render_clip(seed=3, index=0, size=96, fps=10, seconds=2.0)
    assert len(images) == 20 and all(np.array_equal(a, b) for a, b in zip(images, again)) and labels == same
    frames = labels["frames"]
    apex = labels["apex_frame"]
    assert frames[apex]["profile"] == 1.0 and frames[0]["profile"] == 0.0 and frames[-1]["profile"] == 0.0
    assert frames[apex]["emotion"] == labels["emotion"] != "neutral" and frames[0]["emotion"] == "neutral"
    assert frames[apex]["aus"] and not frames[0]["aus"]
    # The head moves (its landmarks drift by pixels over the clip); the pixels change at the apex.
    drift = [np.abs(np.array(f["landmarks"]) - np.array(frames[0]["landmarks"])).mean() for f in frames]
    assert max(drift) > 2.0
    assert np.abs(images[apex].astype(int) - images[0].astype(int)).mean() > 1.0

    paths = generate_clips(tmp_path, count=2, seed=3, size=96, fps=10, seconds=2.0)
    decoded = list(sample_frames(paths[0]))
    assert len(decoded) == 20 and decoded[0].image.shape == (96, 96, 3)
    assert np.abs(decoded[apex].image.astype(int) - images[apex].astype(int)).mean() < 8   # lossy, but the same frames
    saved = json.loads((tmp_path / "0000.json").read_text())
    assert saved["apex_frame"] == apex and len(saved["frames"]) == 20
    assert read_clip_labels(paths[0]) == saved
    points = clip_landmarks(saved)
    assert sorted(points) == list(range(20)) and points[apex].shape == (68, 2)


def test_clip_labels_missing_or_bad(tmp_path):
    video = tmp_path / "clip.mp4"
    assert read_clip_labels(video) is None   # no label file: an unlabelled video
    (tmp_path / "clip.json").write_text("{not json")
    with pytest.raises(ClipLabelError, match="clip.json: unreadable"):
        read_clip_labels(video)
    (tmp_path / "clip.json").write_text(json.dumps({"apex_frame": 5, "frames": [{"emotion": "happy", "aus": []}]}))
    with pytest.raises(ClipLabelError, match="apex_frame 5 is outside its 1 frames"):
        read_clip_labels(video)
    (tmp_path / "clip.json").write_text(json.dumps({"apex_frame": 0, "frames": [{"emotion": "happy"}]}))
    with pytest.raises(ClipLabelError, match=r"frames\[0\] needs"):
        read_clip_labels(video)
    labels = {"apex_frame": 0, "frames": [{"emotion": "happy", "aus": [12]}]}
    (tmp_path / "clip.json").write_text(json.dumps(labels))
    assert read_clip_labels(video) == labels and clip_landmarks(labels) is None   # labels without landmarks
