"""Build the configured landmark backend; which backend a manifest or a checkpoint needs."""

from __future__ import annotations

from collections.abc import Iterable

from emola.config import LandmarksConfig
from emola.landmarks.backend import LandmarkBackend

BACKENDS = ("annotation", "dlib-68", "insightface-2d106")
_LAYOUT_POINTS = {"ibug68": 68, "insightface106": 106}


def annotation_points(rows: Iterable) -> int:
    """The point count of the annotation layout manifest ``rows`` ship (68 when none do)."""
    layouts = {row.landmark_layout for row in rows if row.landmark_layout}
    if len(layouts) > 1:
        raise ValueError(f"manifest mixes landmark layouts {sorted(layouts)}; the annotation backend needs one")
    return _LAYOUT_POINTS[layouts.pop()] if layouts else 68


def manifest_backend_key(cfg: LandmarksConfig, rows: Iterable) -> str:
    """The cache key (``name@version``) of the configured backend for manifest ``rows``: the
    key their prior vectors are stored under by the landmarks stage."""
    return build_backend(cfg, annotation_points=annotation_points(rows)).key


def inference_backend_name(prior: str, landmark_backend: str, prior_dim: int) -> str | None:
    """Backend that produces prior vectors like a checkpoint's training ones, for images without
    annotations (``prior``, ``landmark_backend`` and ``prior_dim`` from its model config).

    ``annotation`` with 68 points normalizes exactly like ``dlib-68``; with 106 points it
    holds InsightFace 2d106det's raw ``paper``-mode output.
    """
    if prior == "none":
        return None
    name, _, _ = landmark_backend.partition("@")
    if name == "annotation":
        return "dlib-68" if prior_dim == 136 else "insightface-2d106"
    return name


def build_backend(cfg: LandmarksConfig | None = None, *, name: str | None = None,
                  annotation_points: int = 68) -> LandmarkBackend:
    """The backend ``name`` (default ``cfg.backend``), configured from ``cfg``.

    ``annotation_points`` picks the annotation layout (68 or 106 points; the manifest
    records which one a release ships).
    """
    name = name or (cfg.backend if cfg else None)
    if name == "annotation":
        from emola.landmarks.annotation import AnnotationBackend

        return AnnotationBackend(annotation_points)
    if name == "dlib-68":
        from emola.landmarks.dlib68 import Dlib68Backend

        return Dlib68Backend()
    if name == "insightface-2d106":
        from emola.landmarks.insightface106 import InsightFace106Backend

        insight = cfg.insightface if cfg else None
        return InsightFace106Backend(insight.model_path if insight else None, insight.mode if insight else "paper")
    raise ValueError(f"unknown landmark backend {name!r} (known: {', '.join(BACKENDS)})")
