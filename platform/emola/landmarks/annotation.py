"""``annotation``: landmarks that come with the data set (FABA-Synth, AffectNet, FABA-Instruct)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emola.landmarks.backend import Face, FaceResult, LandmarkBackend, bbox_of, normalize_points


class AnnotationBackend(LandmarkBackend):
    """Landmarks read from the release's annotation files; no detection.

    Two layouts, told apart by the point count of the file:

    - 68 points: image pixels (FABA-Synth, AffectNet). Prior vector: 136 values,
      :func:`~emola.landmarks.backend.normalize_points`, the same as ``dlib-68``.
    - 106 points: the published FABA-Instruct files, which hold InsightFace 2d106det's raw
      output (212 values in [-1, 1] of the 192 px network input). Prior vector: those 212
      values unchanged, exactly what published EmoLA checkpoints were trained on; the
      points are mapped to image pixels as the ``paper`` mode of ``insightface-2d106`` does.
    """

    name = "annotation"

    def __init__(self, num_points: int = 68):
        if num_points not in (68, 106):
            raise ValueError(f"annotation backend: {num_points} points is not a known layout (68 or 106)")
        self.num_points = num_points
        self.version = f"1-{num_points}"

    def extract(self, images, *, all_faces=False, annotations: Sequence[np.ndarray | None] | None = None):
        if annotations is None or len(annotations) != len(images):
            raise ValueError("annotation backend: one landmark array per image is required")
        return [self._one(image, points) for image, points in zip(images, annotations)]

    def _one(self, image: np.ndarray, raw: np.ndarray | None) -> FaceResult:
        height, width = image.shape[:2]
        if raw is None:
            return FaceResult.failed("bad_annotation", "no landmark annotation for this image", width, height)
        raw = np.asarray(raw, dtype=np.float32).reshape(-1)
        if raw.size != self.prior_dim or not np.isfinite(raw).all():
            return FaceResult.failed("bad_annotation", f"expected {self.num_points} finite points, got {raw.size // 2}",
                                     width, height)
        if self.num_points == 106:
            points = (raw.reshape(-1, 2) + 1) / 2 * [width, height]
            prior = raw.copy()
        else:
            points = raw.reshape(-1, 2)
            prior = normalize_points(points)
        return FaceResult("ok", faces=[Face(bbox_of(points), 1.0, points)], prior=prior, width=width, height=height)
