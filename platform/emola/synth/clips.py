"""FABA-Synth expression clips: one face going neutral, onset, apex, offset, neutral, with head motion.

Each clip is a pure function of ``(seed, index)``: an identity, an appearance and an
emotion prototype (never neutral) rendered frame by frame with the prototype's AU
intensities scaled by an expression profile (0 before the onset, rising linearly to 1 at
the apex, falling back to 0 at the offset), while the head turns, nods, rolls and drifts
a little. Every frame's labels are written beside the video: time, profile, AU
intensities, the active AUs (at or above FABA-Synth's threshold) and the emotion shown
(the prototype's while its intensity is at least ``EMOTION_VISIBLE``, neutral otherwise).

    {index:04d}.mp4      the clip (H.264)
    {index:04d}.json     {"emotion", "apex_frame", "fps", "frames": [per-frame labels]}: its label file

:func:`read_clip_labels` finds and checks a video's label file (the same name, ``.json``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from emola.labels import EMOTIONS
from emola.synth.action_units import apply_action_units
from emola.synth.dataset import ACTIVE_THRESHOLD, sample_face_spec
from emola.synth.face_model import Identity, Pose, neutral_face, project
from emola.synth.render import Appearance, render_face
from emola.video.encode import write_video

#: The emotion is labelled while the expression's intensity (profile x prototype intensity) is at least this.
EMOTION_VISIBLE = 0.2


def expression_profile(frames: int, onset: int, apex: int, offset: int) -> np.ndarray:
    """``(frames,)`` in [0, 1]: 0 until ``onset``, linear to 1 at ``apex``, linear to 0 at ``offset``, then 0."""
    t = np.arange(frames, dtype=np.float64)
    rise = np.clip((t - onset) / max(apex - onset, 1), 0, 1)
    fall = np.clip((offset - t) / max(offset - apex, 1), 0, 1)
    return np.where(t <= apex, rise, fall)


def render_clip(seed: int, index: int, size: int = 160, fps: float = 10.0, seconds: float = 3.0
                ) -> tuple[list[np.ndarray], dict]:
    """The frames and labels of clip ``index`` (module docstring)."""
    rng = np.random.default_rng([seed, 7, index])
    spec = sample_face_spec(rng, au_only_fraction=0.0)
    while spec.emotion in (None, "neutral"):
        spec = sample_face_spec(rng, au_only_fraction=0.0)
    spec = replace(spec, intensity=max(spec.intensity, 0.6),
                   au_intensities={au: max(v, 0.6) for au, v in spec.au_intensities.items()})
    identity, base, appearance = Identity.sample(rng), Pose.sample(rng, size), Appearance.sample(rng)
    frames = int(round(seconds * fps))
    onset = int(rng.integers(frames // 6, frames // 3))
    apex = int(rng.integers(onset + 3, frames // 2 + 4))
    offset = int(rng.integers(apex + 3, frames - 2))
    profile = expression_profile(frames, onset, apex, offset)
    phase = rng.uniform(0, 2 * np.pi, 4)
    neutral = neutral_face(identity)
    images, labels = [], []
    for i, level in enumerate(profile):
        wave = np.sin(2 * np.pi * i / frames + phase)
        pose = Pose(yaw=base.yaw * 0.5 + 0.15 * wave[0], pitch=base.pitch * 0.5 + 0.06 * wave[1],
                    roll=base.roll * 0.5 + np.deg2rad(5) * wave[2], scale=base.scale,
                    cx=base.cx + 0.04 * size * wave[3], cy=base.cy + 0.02 * size * wave[0])
        intensities = {au: v * level for au, v in spec.au_intensities.items()}
        points = apply_action_units(neutral, intensities)
        # The same background and lighting in every frame: each frame's renderer draws from one seed.
        image = render_face(points, intensities, pose, appearance, size, np.random.default_rng([seed, 7, index, 1]))
        images.append(np.asarray(image.convert("RGB")))
        shown = level * spec.intensity >= EMOTION_VISIBLE
        labels.append({"frame": i, "time_ms": round(1000 * i / fps, 3), "profile": round(float(level), 4),
                       "au_intensities": {str(au): round(float(v), 3) for au, v in intensities.items() if v >= 0.01},
                       "aus": sorted(au for au, v in intensities.items() if v >= ACTIVE_THRESHOLD),
                       "emotion": spec.emotion if shown else "neutral",
                       "landmarks": np.round(project(points, pose), 2).tolist()})
    assert spec.emotion in EMOTIONS
    return images, {"emotion": spec.emotion, "apex_frame": apex, "onset_frame": onset, "offset_frame": offset,
                    "fps": fps, "frames": labels}


def generate_clips(out_dir: Path | str, count: int, seed: int, size: int = 160, fps: float = 10.0,
                   seconds: float = 3.0) -> list[Path]:
    """Write ``count`` clips and their label files into ``out_dir``; returns the video paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        images, labels = render_clip(seed, index, size, fps, seconds)
        paths.append(write_video(folder / f"{index:04d}.mp4", images, fps))
        (folder / f"{index:04d}.json").write_text(json.dumps(labels) + "\n")
    return paths


class ClipLabelError(ValueError):
    """A clip's label file that exists but cannot be used (names the file and the problem)."""


def read_clip_labels(video: Path | str) -> dict | None:
    """The labels beside ``video`` (``<name>.json`` as :func:`generate_clips` writes them), or None when there is
    no such file; :class:`ClipLabelError` when it is not valid JSON or lacks ``apex_frame`` and ``frames``."""
    path = Path(video).with_suffix(".json")
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClipLabelError(f"{path}: unreadable label file ({err})") from None
    frames = labels.get("frames") if isinstance(labels, dict) else None
    if not isinstance(frames, list) or not isinstance(labels.get("apex_frame"), int):
        raise ClipLabelError(f"{path}: a clip label file needs 'apex_frame' (an integer) and 'frames' (a list)")
    if not 0 <= labels["apex_frame"] < len(frames):
        raise ClipLabelError(f"{path}: apex_frame {labels['apex_frame']} is outside its {len(frames)} frames")
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or "emotion" not in frame or not isinstance(frame.get("aus"), list):
            raise ClipLabelError(f"{path}: frames[{i}] needs 'emotion' and 'aus'")
    return labels


def clip_landmarks(labels: dict) -> dict[int, np.ndarray] | None:
    """Frame index -> the face's landmarks ``(N, 2)``, when every frame of the labels has them; else None."""
    points = {}
    for i, frame in enumerate(labels["frames"]):
        raw = frame.get("landmarks")
        if raw is None:
            return None
        array = np.asarray(raw, np.float32)
        if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
            return None
        points[int(frame.get("frame", i))] = array
    return points
