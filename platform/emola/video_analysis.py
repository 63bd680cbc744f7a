"""Facial affect over time: one row per sampled frame and face, descriptions at key moments.

``analyze_video(analyzer, "clip.mp4")`` reads a video (:mod:`emola.video`) and, for each
sampled frame:

1. finds every face with the analyzer's landmark backend and gives each a ``face_id`` that
   stays with it from frame to frame (:class:`~emola.video.tracking.FaceTracker`);
2. crops each face (its box grown by ``margin`` on each side; EmoLA was trained on face
   crops) and takes its prior vector: from the face's points when the backend's prior
   does not depend on where the face is (dlib-68), else from the backend run on the crop;
3. reads AU probabilities and the emotion distribution off the model's readout head
   (:meth:`~emola.engine.InferenceEngine.readout`): one forward pass per face, no
   generation.

A video that ships its landmarks (``annotations``: frame index -> points, as FABA-Synth
clips do) skips detection: each frame's face is the annotated one and its prior is the
annotation's, exactly as for the still images the model was trained on.

Then, per face, the probabilities are smoothed over ``smoothing`` frames
(:func:`~emola.video.timeline.smooth`; 1: none), the key moments are found
(:func:`~emola.video.timeline.key_moments`: the apex of each expression), and only those
frames get a generated description (a second pass over the video crops them again, so no
frame is held in memory meanwhile). A frame without a face gives one row with ``status``
``no_face``; nothing in a frame stops the others.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from emola.config.schema import VideoConfig, VideoLimitsConfig
from emola.labels import EVAL_QUESTIONS
from emola.landmarks.annotation import AnnotationBackend
from emola.video import FaceTracker, VideoLimits, sample_frames
from emola.video.timeline import key_moments, smooth


@dataclass(frozen=True)
class VideoOptions:
    """How a video is analysed (the ``video`` params)."""

    fps: float | None = 5.0          # frames sampled per second (None: every frame)
    smoothing: int = 3               # centered window, in sampled frames (1: none)
    describe: bool = True            # generate a description at each key moment
    task: str = "emotion"            # the question asked at key moments: emotion or au
    min_iou: float = 0.3             # box overlap that continues a face from one frame to the next
    max_gap: int = 5                 # sampled frames a face may be missing and keep its id
    margin: float = 0.25             # crop margin, a fraction of the box's longer side
    limits: VideoLimits = field(default_factory=VideoLimits)

    @classmethod
    def from_config(cls, cfg: VideoConfig, limits: VideoLimitsConfig | None = None, **changes) -> "VideoOptions":
        """The ``video`` params (with ``limits`` instead of ``cfg.limits``, e.g. ``cfg.upload_limits``)."""
        caps = limits or cfg.limits
        values = dict(fps=cfg.fps, smoothing=cfg.smoothing, describe=cfg.describe, task=cfg.task, min_iou=cfg.min_iou,
                      max_gap=cfg.max_gap, margin=cfg.margin,
                      limits=VideoLimits(**caps.model_dump()))
        return cls(**{**values, **changes})


@dataclass
class FrameRow:
    """One sampled frame and face (or a frame without a face: ``face_id`` None, ``status`` no_face)."""

    frame: int
    time_ms: float
    face_id: int | None
    status: str
    reason: str = ""
    box: tuple[float, float, float, float] | None = None
    landmarks: list[list[float]] | None = None
    aus: dict[int, float] | None = None
    emotions: dict[str, float] | None = None
    key_moment: bool = False
    description: str | None = None
    raw_aus: dict[int, float] | None = field(default=None, repr=False)        # before smoothing
    raw_emotions: dict[str, float] | None = field(default=None, repr=False)
    prior: np.ndarray | None = field(default=None, repr=False)                # the face's prior vector

    @property
    def emotion(self) -> str | None:
        return max(self.emotions, key=self.emotions.get) if self.emotions else None

    def to_row(self) -> dict:
        """A flat table row: frame, time, face, box, landmarks (JSON), AUxx and emotion probabilities."""
        box = self.box or (None,) * 4
        row = {"frame": self.frame, "time_ms": self.time_ms, "face_id": self.face_id, "status": self.status,
               "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
               "landmarks": json.dumps(self.landmarks) if self.landmarks is not None else None,
               "emotion": self.emotion}
        row.update({f"AU{au:02d}": round(p, 4) for au, p in (self.aus or {}).items()})
        row.update({e: round(p, 4) for e, p in (self.emotions or {}).items()})
        row.update({"key_moment": self.key_moment, "description": self.description, "reason": self.reason})
        return row


def _prior(backend, face, crop: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The face's prior vector: from its points when the backend's prior is position- and size-invariant
    (no second pass), else from its crop; ``(None, reason)`` when the crop shows no face to the backend."""
    prior = backend.face_prior(face)
    if prior is not None:
        return prior, ""
    inside = backend.extract([crop])[0]
    if inside.status != "ok":
        return None, f"the face found in the frame is not found in its crop ({inside.reason})"
    return inside.prior, ""


def crop_box(box, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` x its longer side on every side, squared, clipped to the image."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(max(0, round(cx - side / 2))), int(max(0, round(cy - side / 2)))
    right, bottom = int(min(width, round(cx + side / 2))), int(min(height, round(cy + side / 2)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def analyze_video(analyzer, source: Path | str | bytes, options: VideoOptions = VideoOptions(),
                  annotations: Mapping[int, np.ndarray] | None = None,
                  cancel: threading.Event | None = None) -> list[FrameRow]:
    """The rows of ``source`` (a path or the file's bytes), by frame then face (module docstring);
    ``annotations``: the landmarks ``(N, 2)`` of the one face of each decoded frame, by frame index.
    At most ``options.limits.max_faces`` faces per frame (the largest) and ``max_descriptions``
    descriptions (the strongest key moments) are analysed; ``cancel`` set stops the work at the
    next frame (:class:`~emola.video.VideoProblem` ``cancelled``).

    Raises :class:`~emola.video.VideoProblem` for a video that cannot be used and
    ``ValueError`` when the model has no readout head.
    """
    engine = analyzer.engine
    if engine.model.readout is None:
        raise ValueError("per-frame analysis reads the model's readout head, which this checkpoint does not have "
                         "(train with train.readout_weight > 0)")
    if analyzer.backend is None and annotations is None:
        raise ValueError("per-frame analysis needs a landmark backend to find the faces")
    source = source if isinstance(source, bytes) else Path(source)
    tracker = FaceTracker(options.min_iou, options.max_gap)
    rows: list[FrameRow] = []
    pending: list[tuple[FrameRow, Image.Image, np.ndarray | None]] = []
    for frame in sample_frames(source, options.fps, options.limits, cancel):
        if annotations is not None:
            points = annotations.get(frame.index)
            found = AnnotationBackend(len(points)).extract([frame.image], annotations=[points])[0] \
                if points is not None else None
            if found is None or found.status != "ok":
                reason = found.reason if found is not None else "the video's annotations have no face for this frame"
                rows.append(FrameRow(frame.index, frame.time_ms, None, "no_face", reason))
                continue
        else:
            found = analyzer.backend.extract([frame.image], all_faces=True)[0]
        if found.status != "ok":
            rows.append(FrameRow(frame.index, frame.time_ms, None, found.status, found.reason))
            continue
        found = _largest(found, options.limits.max_faces)
        ids = tracker.update([face.box for face in found.faces])
        crops = [crop_box(face.box, frame.image.shape[1], frame.image.shape[0], options.margin) for face in found.faces]
        images = [frame.image[t:b, left:right] for left, t, right, b in crops]
        for face, face_id, image in zip(found.faces, ids, images):
            row = FrameRow(frame.index, frame.time_ms, face_id, "ok", box=tuple(round(float(v), 2) for v in face.box),
                           landmarks=np.round(np.asarray(face.points, np.float64), 2).tolist())
            rows.append(row)
            prior, reason = (found.prior, "") if annotations is not None else _prior(analyzer.backend, face, image)
            if prior is None and analyzer.processor.use_prior:
                row.status, row.reason = "no_face", reason
                continue
            row.prior = prior
            pending.append((row, Image.fromarray(image), prior))
        if len(pending) >= engine.cfg.max_batch * 4:
            _read_out(analyzer, pending)
            pending = []
    _read_out(analyzer, pending)
    _smooth_and_mark(rows, options)
    if options.describe:
        _describe(analyzer, source, rows, options, cancel)
    return rows


def _largest(found, count: int):
    """``found`` with its ``count`` largest faces (by box area), in their order."""
    if len(found.faces) <= count:
        return found
    area = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in found.faces]
    keep = sorted(sorted(range(len(area)), key=lambda i: -area[i])[:count])
    return replace(found, faces=[found.faces[i] for i in keep])


def _read_out(analyzer, pending) -> None:
    if not pending:
        return
    requests = analyzer.engine.requests(["?"] * len(pending),
                                        [image for _, image, _ in pending] if analyzer.processor.use_image else None,
                                        [prior for _, _, prior in pending] if analyzer.processor.use_prior else None)
    for (row, _, _), readout in zip(pending, analyzer.engine.readout(requests)):
        row.aus, row.emotions = readout.aus, readout.emotions


def _smooth_and_mark(rows: list[FrameRow], options: VideoOptions) -> None:
    faces: dict[int, list[FrameRow]] = {}
    for row in rows:
        if row.emotions is not None:
            faces.setdefault(row.face_id, []).append(row)
    for timeline in faces.values():
        aus, emotions = list(timeline[0].aus), list(timeline[0].emotions)
        au_values = smooth(np.array([[r.aus[a] for a in aus] for r in timeline]), options.smoothing)
        emotion_values = smooth(np.array([[r.emotions[e] for e in emotions] for r in timeline]), options.smoothing)
        for row, a, e in zip(timeline, au_values, emotion_values):
            row.raw_aus, row.raw_emotions = row.aus, row.emotions
            row.aus = {au: float(v) for au, v in zip(aus, a)}
            row.emotions = {name: float(v) for name, v in zip(emotions, e)}
        for index in key_moments(emotion_values, emotions):
            timeline[index].key_moment = True


def _describe(analyzer, source, rows: list[FrameRow], options: VideoOptions,
              cancel: threading.Event | None = None) -> None:
    moments = sorted((r for r in rows if r.key_moment), key=lambda r: -max(r.emotions.values()))
    keys = {(r.frame, r.face_id): r for r in moments[:options.limits.max_descriptions]}
    if not keys:
        return
    wanted = {frame for frame, _ in keys}
    crops, priors, targets = [], [], []
    for frame in sample_frames(source, options.fps, options.limits, cancel):
        if frame.index not in wanted:
            continue
        for (index, _), row in keys.items():
            if index != frame.index:
                continue
            left, top, right, bottom = crop_box(row.box, frame.image.shape[1], frame.image.shape[0], options.margin)
            crops.append(Image.fromarray(frame.image[top:bottom, left:right]))
            priors.append(row.prior)
            targets.append(row)
    if not targets:
        return
    question = EVAL_QUESTIONS[options.task]
    completions = analyzer.engine.complete([question] * len(targets),
                                           crops if analyzer.processor.use_image else None,
                                           np.stack(priors) if analyzer.processor.use_prior else None,
                                           generation=analyzer.generation)
    for row, completion in zip(targets, completions):
        row.description = completion.text


def write_rows_csv(rows: list[dict], path: Path | str) -> Path:
    """Table rows (:meth:`FrameRow.to_row`, with any extra columns) as CSV: the columns in the order first seen."""
    import csv

    path = Path(path)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_timeline(rows: list[FrameRow], path: Path | str, max_faces: int = 4, top_aus: int = 6) -> Path:
    """A picture of the timelines: per face (up to ``max_faces``), the emotion probabilities and its
    ``top_aus`` most active AUs over time, key moments marked by vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faces = sorted({r.face_id for r in rows if r.emotions is not None})[:max_faces]
    fig, axes = plt.subplots(max(len(faces), 1), 2, figsize=(12, 2.6 * max(len(faces), 1)), squeeze=False)
    for line, face in enumerate(faces):
        timeline = [r for r in rows if r.face_id == face and r.emotions is not None]
        seconds = [r.time_ms / 1000 for r in timeline]
        emotion_axis, au_axis = axes[line]
        for name in timeline[0].emotions:
            emotion_axis.plot(seconds, [r.emotions[name] for r in timeline], label=name)
        strongest = sorted(timeline[0].aus, key=lambda a: -max(r.aus[a] for r in timeline))[:top_aus]
        for au in strongest:
            au_axis.plot(seconds, [r.aus[au] for r in timeline], label=f"AU{au}")
        for axis, title in ((emotion_axis, "emotion"), (au_axis, "AU")):
            for r in timeline:
                if r.key_moment:
                    axis.axvline(r.time_ms / 1000, color="black", linestyle="--", linewidth=0.8)
            axis.set_ylim(0, 1)
            axis.set_title(f"face {face}: {title} probabilities (dashed: key moments)", fontsize=9)
            axis.legend(fontsize=6, ncol=2, loc="upper right")
        au_axis.set_xlabel("seconds")
        emotion_axis.set_xlabel("seconds")
    if not faces:
        axes[0][0].set_title("no face in the sampled frames")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["FrameRow", "VideoOptions", "analyze_video", "crop_box", "plot_timeline", "write_rows_csv"]
