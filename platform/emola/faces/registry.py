"""Build the configured landmark backend."""

from __future__ import annotations

from emola.config import LandmarksConfig
from emola.faces.backend import LandmarkBackend

BACKENDS = ("annotation", "dlib-68", "insightface-2d106")


def build_backend(cfg: LandmarksConfig | None = None, *, name: str | None = None,
                  annotation_points: int = 68) -> LandmarkBackend:
    """The backend ``name`` (default ``cfg.backend``), configured from ``cfg``.

    ``annotation_points`` picks the annotation layout (68 or 106 points; the manifest
    records which one a release ships).
    """
    name = name or (cfg.backend if cfg else None)
    if name == "annotation":
        from emola.faces.annotation import AnnotationBackend

        return AnnotationBackend(annotation_points)
    if name == "dlib-68":
        from emola.faces.dlib68 import Dlib68Backend

        return Dlib68Backend()
    if name == "insightface-2d106":
        from emola.faces.insightface106 import InsightFace106Backend

        insight = cfg.insightface if cfg else None
        return InsightFace106Backend(insight.model_path if insight else None, insight.mode if insight else "paper")
    raise ValueError(f"unknown landmark backend {name!r} (known: {', '.join(BACKENDS)})")
