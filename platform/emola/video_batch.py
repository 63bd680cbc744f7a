"""The video job: every video of a folder analysed frame by frame, on a Ray Data actor pool.

``run_video_job(cfg, checkpoint)`` finds the videos of ``video.input`` (by suffix), and
each of ``video.actors`` Ray Data actors loads the model once and analyses whole videos
with :func:`~emola.video_analysis.analyze_video`, the same code as ``emola analyze
clip.mp4``. What it writes (``video.reports``, replaced as a whole only when the run ends):

- ``<video>.csv``: one row per sampled frame and face (the CLI's ``--csv`` columns);
- ``files.jsonl``: every video's status (``ok``, or the :class:`~emola.video.VideoProblem`
  code, ``bad_labels`` or ``error``) with the reason, its frames, faces, key moments and
  seconds: a bad file is reported there and the others are still done;
- ``timeline.png``: the timelines of the first video analysed.

A video with a label file beside it (:func:`~emola.synth.clips.read_clip_labels`:
FABA-Synth clips) is scored too, and ``video.metrics`` gets the readout head's emotion
accuracy and AU macro F1 (:func:`~emola.metrics.readout.readout_scores`) at each clip's
apex frame and over every frame, before and after smoothing, and how far the key moments
are from the true apex. With ``video.landmarks: auto`` such a clip's face comes from its
annotated landmarks, as FABA-Synth's still images do in the landmarks stage, so the
scores measure the head, not the face detector.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from emola.config import EmolaConfig
from emola.fileio import atomic_write_lines, replace_dir
from emola.labels import EMOTIONS
from emola.metrics.readout import readout_scores
from emola.synth.clips import ClipLabelError, clip_landmarks, read_clip_labels
from emola.video import VIDEO_SUFFIXES, VideoProblem
from emola.video.timeline import key_moments
from emola.video_analysis import FrameRow, VideoOptions, analyze_video, plot_timeline, write_rows_csv

def find_videos(folder: Path | str) -> list[Path]:
    """The videos of ``folder`` and its subfolders (by suffix, any case), sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


@dataclass
class VideoResult:
    """One video's outcome: ``status`` ok, a :class:`~emola.video.VideoProblem` code, ``bad_labels`` or ``error``."""

    video: str
    status: str
    reason: str = ""
    landmarks: str = ""          # annotation (the label file's) or the detector's name
    frames: int = 0              # sampled frames
    faces: int = 0               # face ids
    face_frames: int = 0         # rows with a face read out
    key_moments: int = 0
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)       # FrameRow.to_row() of each row
    scores: dict | None = None   # clip_records() of a labelled clip

    def report(self) -> dict:
        """The ``files.jsonl`` line: everything but the rows and the scores."""
        return {k: v for k, v in asdict(self).items() if k not in ("rows", "scores")}


def analyze_file(analyzer, path: Path | str, options: VideoOptions, landmarks: str = "auto") -> VideoResult:
    """Analyse one video; every problem becomes the result's status, nothing raises."""
    started = time.perf_counter()
    path = Path(path)
    result = VideoResult(str(path), "ok")
    try:
        labels = read_clip_labels(path)
    except ClipLabelError as err:
        labels, result.status, result.reason = None, "bad_labels", str(err)
    annotations = None
    if labels is not None and landmarks == "auto":
        annotations = clip_landmarks(labels)
        if annotations is not None and 2 * len(next(iter(annotations.values()))) != analyzer.config.prior_dim:
            annotations = None   # another point layout than the model's prior: detect instead
    result.landmarks = "annotation" if annotations is not None else (analyzer.backend.key if analyzer.backend else "")
    try:
        rows = analyze_video(analyzer, path, options, annotations)
    except VideoProblem as err:
        result.status, result.reason = err.code, str(err)
        rows = []
    except Exception as err:  # noqa: BLE001 - one bad video is reported, the batch goes on
        result.status, result.reason = "error", f"{path}: {type(err).__name__}: {err}"
        rows = []
    result.rows = [row.to_row() for row in rows]
    result.frames = len({row.frame for row in rows})
    result.faces = len({row.face_id for row in rows if row.face_id is not None})
    result.face_frames = sum(row.emotions is not None for row in rows)
    result.key_moments = sum(row.key_moment for row in rows)
    if labels is not None and rows:
        result.scores = clip_records(rows, labels)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def clip_records(rows: list[FrameRow], labels: dict) -> dict | None:
    """A labelled clip's scoring records for :func:`readout_scores`, for the face seen in most frames:
    ``{"apex" | "frames": {"raw" | "smoothed": [records]}, "key_distance": {"raw" | "smoothed": frames or None}}``."""
    read = [r for r in rows if r.emotions is not None]
    if not read:
        return None
    main = Counter(r.face_id for r in read).most_common(1)[0][0]
    timeline = [r for r in read if r.face_id == main]
    truth = {int(f.get("frame", i)): f for i, f in enumerate(labels["frames"])}
    apex = labels["apex_frame"]

    def records(row: FrameRow, raw: bool) -> list[dict]:
        label = truth[row.frame]
        aus, emotions = (row.raw_aus, row.raw_emotions) if raw else (row.aus, row.emotions)
        readout = {"aus": {str(a): p for a, p in aus.items()}, "emotions": emotions}
        return [{"task": "emotion", "label": label["emotion"], "readout": readout},
                {"task": "au", "label": ", ".join(str(a) for a in label["aus"]), "readout": readout}]

    out: dict = {"apex": {}, "frames": {}, "key_distance": {}}
    classes = list(timeline[0].emotions)
    raw_keys = [timeline[i].frame for i in key_moments(np.array([[r.raw_emotions[c] for c in classes]
                                                                 for r in timeline]), classes)]
    smooth_keys = [r.frame for r in timeline if r.key_moment]
    for variant, raw, keys in (("raw", True, raw_keys), ("smoothed", False, smooth_keys)):
        out["apex"][variant] = [x for r in timeline if r.frame == apex for x in records(r, raw)]
        out["frames"][variant] = [x for r in timeline if r.frame in truth for x in records(r, raw)]
        out["key_distance"][variant] = min((abs(k - apex) for k in keys), default=None)
    return out


def score_clips(results: list[VideoResult]) -> dict:
    """The readout head over every labelled clip: at the apex and over all frames, raw and smoothed; key moments."""
    scored = [r.scores for r in results if r.scores]
    out: dict = {"clips": len(scored)}
    for where in ("apex", "frames"):
        out[where] = {}
        for variant in ("raw", "smoothed"):
            scores = readout_scores([x for s in scored for x in s[where][variant]])
            out[where][variant] = {"emotion_accuracy": scores.get("emotion", {}).get("accuracy"),
                                   "au_macro_f1": scores.get("au", {}).get("macro_f1"),
                                   "n": scores.get("emotion", {}).get("n", 0)}
    out["key_moments"] = {}
    for variant in ("raw", "smoothed"):
        distances = sorted(d for s in scored if (d := s["key_distance"][variant]) is not None)
        out["key_moments"][variant] = {
            "median_frames_from_apex": distances[len(distances) // 2] if distances else None,
            "within_3_frames": sum(d <= 3 for d in distances), "faces": len(distances)}
    return out


class VideoActor:
    """Ray Data actor: loads the model once, then analyses one video per row of a batch."""

    def __init__(self, cfg: dict, checkpoint: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.cfg = EmolaConfig.model_validate(cfg)
        self.analyzer = load_analyzer(self.cfg, checkpoint)
        self.options = VideoOptions.from_config(self.cfg.video)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        results = [analyze_file(self.analyzer, path, self.options, self.cfg.video.landmarks) for path in batch["video"]]
        return {"video": [r.video for r in results], "result": [json.dumps(asdict(r)) for r in results]}


def load_analyzer(cfg: EmolaConfig, checkpoint: Path | str):
    """The Analyzer of ``checkpoint`` with the params' generation, landmarks and inference settings."""
    from emola.analyzer import Analyzer

    return Analyzer.from_checkpoint(checkpoint, generation=cfg.evaluate.generation, landmarks_cfg=cfg.landmarks,
                                    inference=cfg.inference)


def readout_part(checkpoint: Path | str) -> Path | None:
    """The part of a trained model (one checkpoint, or one per task) that has a readout head; None if none has."""
    from emola.model.configuration import EmolaModelConfig
    from emola.model.reference import model_parts

    return next((part for part in model_parts(checkpoint) if EmolaModelConfig.load(part).readout), None)


def run_video_job(cfg: EmolaConfig, checkpoint: Path | str, *, use_ray: bool = True, log=print) -> dict:
    """Analyse every video of ``cfg.video.input`` with ``checkpoint``'s readout head; write the reports
    (module docstring) and return the metrics (also written to ``cfg.video.metrics``).

    A model without a readout head (the published recipe trains none) is skipped: the reports
    are empty and the metrics say why (``skipped``). Raises ``FileNotFoundError`` when the input
    folder does not exist. With ``use_ray=False`` the same work runs in this process.
    """
    started = time.perf_counter()
    v = cfg.video
    if not Path(v.input).is_dir():
        raise FileNotFoundError(f"video.input: {v.input} is not a folder")
    part = readout_part(checkpoint)
    if part is None:
        metrics = {"skipped": f"{checkpoint}: no readout head to read per-frame probabilities from "
                              "(train with train.readout_weight > 0)"}
        _write_reports(Path(v.input), Path(v.reports), Path(v.metrics), [], metrics, v.smoothing)
        log(f"video: skipped: {metrics['skipped']}")
        return metrics
    videos = find_videos(v.input)
    log(f"video: {len(videos)} videos in {v.input}, model {part}, "
        f"{'Ray Data, ' + str(v.actors) + ' actors' if use_ray else 'in this process'}")
    if use_ray and videos:
        results = _run_on_ray(videos, cfg, part)
    else:
        analyzer = load_analyzer(cfg, part) if videos else None
        options = VideoOptions.from_config(v)
        results = [analyze_file(analyzer, path, options, v.landmarks) for path in videos]
    results.sort(key=lambda r: r.video)
    seconds = time.perf_counter() - started
    frames = sum(r.frames for r in results)
    metrics = {"videos": len(results), "status": dict(sorted(Counter(r.status for r in results).items())),
               "frames": frames, "face_frames": sum(r.face_frames for r in results),
               "key_moments": sum(r.key_moments for r in results),
               "landmarks": dict(Counter(r.landmarks for r in results if r.rows)),
               "seconds": round(seconds, 2), "frames_per_s": round(frames / seconds, 2) if seconds else None,
               # per actor, analysis only (no start-up): what one model replica sustains
               "analysis_frames_per_s": round(frames / max(sum(r.seconds for r in results), 1e-9), 2),
               "head": score_clips(results)}
    _write_reports(Path(v.input), Path(v.reports), Path(v.metrics), results, metrics, v.smoothing)
    for r in results:
        if r.status != "ok":
            log(f"video: {r.status}: {r.reason}")
    log(f"video: {metrics['status']}, {frames} frames in {seconds:.1f} s -> {v.reports}/")
    return metrics


def table_name(video: Path | str, folder: Path | str) -> str:
    """The CSV name of ``video`` found under ``folder``: its relative path, ``/`` as ``__``, ``.csv`` for its suffix."""
    relative = Path(video).relative_to(folder) if Path(video).is_relative_to(folder) else Path(Path(video).name)
    return "__".join(relative.with_suffix("").parts) + ".csv"


#: The stage's timing figures: reported and written beside the per-video tables, not into the metrics file.
TIMINGS = ("seconds", "frames_per_s", "analysis_frames_per_s")


def _write_reports(folder: Path, reports: Path, metrics_file: Path, results: list[VideoResult], metrics: dict,
                   smoothing: int) -> None:
    """Everything into a fresh folder first; the old reports are replaced only once it is complete."""
    reports.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{reports.name}-", dir=reports.parent))
    try:
        first = None
        for r in results:
            if not r.rows:
                continue
            write_rows_csv(r.rows, staging / table_name(r.video, folder))
            first = first or r
        atomic_write_lines(staging / "files.jsonl", (json.dumps(r.report()) for r in results))
        # The metrics file is committed with the code: only what the same inputs reproduce goes there; the run's
        # timings stay here.
        atomic_write_lines(staging / "timings.json", [json.dumps({k: metrics[k] for k in TIMINGS if k in metrics},
                                                                 indent=2)])
        if first is not None:
            plot_timeline([_row_of(row) for row in first.rows], staging / "timeline.png")
        replace_dir(staging, reports)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in metrics.items() if k not in TIMINGS}
    atomic_write_lines(metrics_file, [json.dumps({**kept, "smoothing": smoothing}, indent=2)])


def _row_of(row: dict) -> FrameRow:
    """A table row back into a :class:`FrameRow` (for the timeline picture)."""
    aus = {int(k[2:]): v for k, v in row.items() if k.startswith("AU") and k[2:].isdigit() and v is not None}
    emotions = {name: row[name] for name in EMOTIONS if row.get(name) is not None}
    return FrameRow(row["frame"], row["time_ms"], row["face_id"], row["status"], aus=aus or None,
                    emotions=emotions or None, key_moment=bool(row["key_moment"]))


def _run_on_ray(videos: list[Path], cfg: EmolaConfig, checkpoint: Path) -> list[VideoResult]:
    import ray

    from emola.runtime import init_ray, map_on_actors

    init_ray()
    v = cfg.video
    ds = ray.data.from_items([{"video": str(p.resolve())} for p in videos], override_num_blocks=len(videos))
    ds = map_on_actors(
        ds, VideoActor,
        fn_constructor_kwargs={"cfg": cfg.model_dump(), "checkpoint": str(Path(checkpoint).resolve()),
                               "threads": max(1, int(v.cpus_per_actor))},
        compute=ray.data.ActorPoolStrategy(size=v.actors),
        batch_size=1,            # one video per call: long videos do not wait behind each other
        batch_format="numpy",
        num_cpus=v.cpus_per_actor,
        num_gpus=v.gpus_per_actor,
    )
    results = []
    for row in ds.iter_rows():
        data = json.loads(row["result"])
        results.append(VideoResult(**data))
    # Paths were resolved for the actors: report them as given.
    given = {str(p.resolve()): str(p) for p in videos}
    for r in results:
        r.video = given.get(r.video, r.video)
    return results


__all__ = ["VideoActor", "VideoResult", "analyze_file", "clip_records", "find_videos",
           "readout_part", "run_video_job", "score_clips", "table_name"]
