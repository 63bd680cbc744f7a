"""The landmark job: manifest images -> Ray Data actor pool -> landmark cache, incrementally.

Each distinct image (by content hash) is processed once per backend version; images
already in the cache are skipped, so adding 10 images to 20k processes 10. Images that
cannot be used (unreadable, too large, no face, ...) get a cache row with their status
too, so they are reported, not retried, and never silently dropped.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from emola.config import LandmarksConfig
from emola.data.manifest import ManifestRow, read_manifest
from emola.fileio import atomic_write_lines
from emola.imaging import ImageProblem, read_image_file
from emola.landmarks.backend import FaceResult, LandmarkBackend
from emola.landmarks.cache import LandmarkCache, cache_key, result_rows
from emola.landmarks.registry import annotation_points, build_backend


@dataclass(frozen=True)
class ImageTask:
    """One distinct image to process."""

    image_sha256: str
    image: str               # path to read
    landmark: str | None     # annotation file, if the release ships one


def images_of(rows: Iterable[ManifestRow]) -> tuple[list[ImageTask], int]:
    """Distinct images of manifest rows, and the annotation layout's point count."""
    rows = list(rows)
    tasks: dict[str, ImageTask] = {}
    for row in rows:
        if row.image_sha256 not in tasks:
            landmark = str(row.landmark_path()) if row.landmark else None
            tasks[row.image_sha256] = ImageTask(row.image_sha256, str(row.image_path()), landmark)
    return list(tasks.values()), annotation_points(rows)


def process_batch(backend: LandmarkBackend, tasks: list[ImageTask], *, all_faces: bool, max_pixels: int) -> list[FaceResult]:
    """Decode a batch of images and run the backend on the good ones; one result per task."""
    results: list[FaceResult | None] = [None] * len(tasks)
    images, annotations, slots = [], [], []
    for i, task in enumerate(tasks):
        try:
            image, _ = read_image_file(Path(task.image), max_pixels)
        except ImageProblem as err:
            results[i] = FaceResult.failed(err.status, str(err))
            continue
        annotation = None
        if task.landmark:
            try:
                annotation = np.load(task.landmark, allow_pickle=False)
            except (OSError, ValueError) as err:
                annotation = None
                if backend.name == "annotation":
                    results[i] = FaceResult.failed("bad_annotation", f"landmark file unreadable: {err}", *image.size)
                    continue
        images.append(np.asarray(image))
        annotations.append(annotation)
        slots.append(i)
    if images:
        try:
            found = backend.extract(images, all_faces=all_faces, annotations=annotations)
        except Exception as err:  # noqa: BLE001 - a backend failure marks the batch, the job goes on
            found = [FaceResult.failed("error", f"{backend.name} failed: {err}", im.shape[1], im.shape[0]) for im in images]
        for slot, result in zip(slots, found):
            results[slot] = result
    return results


class LandmarkActor:
    """Ray Data actor: builds the backend once, then processes batches of image tasks."""

    def __init__(self, cfg: dict, annotation_points: int, max_pixels: int):
        self.cfg = LandmarksConfig.model_validate(cfg)
        self.backend = build_backend(self.cfg, annotation_points=annotation_points)
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        tasks = [ImageTask(sha, image, landmark or None) for sha, image, landmark
                 in zip(batch["image_sha256"], batch["image"], batch["landmark"])]
        results = process_batch(self.backend, tasks, all_faces=self.cfg.all_faces, max_pixels=self.max_pixels)
        return result_rows([t.image_sha256 for t in tasks], self.backend.key, results)


def run_landmark_job(
    manifests: Iterable[Path | str],
    cfg: LandmarksConfig,
    *,
    max_pixels: int = 40_000_000,
    use_ray: bool = True,
    log=print,
) -> dict:
    """Fill the cache ``cfg.cache`` for every image of the manifests; return the summary.

    With ``use_ray=False`` the same work runs in this process (for tests and benchmarks).
    The summary is also written to ``<cache>/summary.json`` and the images that cannot be
    used to ``<cache>/rejects.jsonl`` (image, hash, status, reason).
    """
    started = time.perf_counter()
    rows = [row for path in manifests for row in read_manifest(path)]
    tasks, annotation_points = images_of(rows)
    backend = build_backend(cfg, annotation_points=annotation_points)
    cache = LandmarkCache(cfg.cache)
    known = cache.keys()
    todo = [t for t in tasks if cache_key(t.image_sha256, backend.key) not in known]
    log(f"landmarks: {len(tasks)} images, {len(tasks) - len(todo)} cached, {len(todo)} to process with {backend.key}")

    if todo and use_ray:
        table = _run_on_ray(todo, cfg, annotation_points, max_pixels)
    elif todo:
        table = pa.concat_tables(
            result_rows([t.image_sha256 for t in chunk], backend.key,
                        process_batch(backend, chunk, all_faces=cfg.all_faces, max_pixels=max_pixels))
            for chunk in (todo[i:i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size))
        )
    else:
        table = None
    if table is not None:
        cache.append(table)

    current = cache.read(backend.key)
    by_sha = dict(zip(current.column("image_sha256").to_pylist(), range(current.num_rows)))
    missing = [t.image for t in tasks if t.image_sha256 not in by_sha]
    if missing:
        raise RuntimeError(f"landmark cache misses {len(missing)} images after the run, e.g. {missing[:3]}")
    statuses = current.column("status").to_pylist()
    reasons = current.column("reason").to_pylist()
    rejects = [{"image": t.image, "image_sha256": t.image_sha256, "status": statuses[by_sha[t.image_sha256]],
                "reason": reasons[by_sha[t.image_sha256]]} for t in tasks if statuses[by_sha[t.image_sha256]] != "ok"]
    summary = {
        "backend": backend.key,
        "prior_dim": backend.prior_dim,
        "images": len(tasks),
        "processed": len(todo),
        "status": dict(sorted(Counter(statuses[by_sha[t.image_sha256]] for t in tasks).items())),
        "seconds": round(time.perf_counter() - started, 2),
    }
    _write_report(Path(cfg.cache), summary, rejects)
    log(f"landmarks: {summary['status']} in {summary['seconds']:.1f} s -> {cfg.cache}")
    return summary


def _write_report(root: Path, summary: dict, rejects: list[dict]) -> None:
    atomic_write_lines(root / "rejects.jsonl", (json.dumps(r) for r in rejects))
        # Only what describes the cache's content: per-run counts would change the DVC output hash.
    stable = {k: summary[k] for k in ("backend", "prior_dim", "images", "status")}
    atomic_write_lines(root / "summary.json", [json.dumps(stable, indent=2)])


def _run_on_ray(todo: list[ImageTask], cfg: LandmarksConfig, annotation_points: int, max_pixels: int) -> pa.Table:
    import ray

    from emola.runtime import init_ray, map_on_actors

    init_ray()
    items = [{"image_sha256": t.image_sha256, "image": t.image, "landmark": t.landmark or ""} for t in todo]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // cfg.batch_size, 64)))
    ds = map_on_actors(
        ds, LandmarkActor,
        fn_constructor_kwargs={"cfg": cfg.model_dump(), "annotation_points": annotation_points, "max_pixels": max_pixels},
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        batch_size=cfg.batch_size,
        batch_format="numpy",
        # Fractional CPUs: actors holding every CPU would starve Ray Data's other tasks.
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor,
    )
    tables = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
              for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
    return pa.concat_tables(tables) if tables else None
