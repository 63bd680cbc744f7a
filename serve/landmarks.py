"""The face deployment: detection, landmarks and the prior vector of the largest face.

The backend is the one whose prior vectors match the checkpoint's training data
(:func:`emola.landmarks.registry.inference_backend_name`). When ``serve.landmark_cache`` is set,
an image whose content hash is in the cache under the checkpoint's own backend key gets
exactly the landmarks it was trained or evaluated with (FABA-Synth's annotated faces,
which no detector finds, are served this way); other images go to the live backend.

Every answer names the same ``source``, the landmark prior the models read (the checkpoint's
backend key), whether the face came from the cache or the live backend: a response does not
tell a client whether its image is in the cache (the training or test set).

The ingress asks once for what the deployment knows without detecting (:meth:`LandmarkDetector.known`:
whether the models need a face at all, and the cached faces) and answers those requests
itself (:func:`cached_face`), so a known image costs no call to this deployment.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from ray import serve

from serve.inputs import pixels_of


def _cached_results(cache_root: str | None, backend_key: str) -> dict[str, dict]:
    """``sha256 -> face`` for every ok row of the cache under ``backend_key``."""
    if not cache_root or not Path(cache_root).is_dir():
        return {}
    from emola.landmarks.cache import LandmarkCache

    table = LandmarkCache(cache_root).read_ok(backend_key)
    faces = {}
    for row in table.select(["image_sha256", "boxes", "scores", "points", "prior"]).to_pylist():
        faces[row["image_sha256"]] = {
            "box": [round(v, 2) for v in row["boxes"][0]], "score": round(row["scores"][0], 4),
            "landmarks": np.round(np.asarray(row["points"][0]).reshape(-1, 2), 2).tolist(),
            "prior": row["prior"]}
    return faces


def cached_face(hit: dict, source: str, started: float) -> dict:
    """:meth:`LandmarkDetector.detect`'s answer for a cached face ``hit`` (a row of :func:`_cached_results`)."""
    face = {k: hit[k] for k in ("box", "score", "landmarks")}
    return {"status": "ok", "reason": "", "face": face, "prior": hit["prior"], "source": source,
            "ms": round(1e3 * (time.perf_counter() - started), 2)}


#: :meth:`LandmarkDetector.detect`'s answer when the served models read no prior.
NO_FACE_NEEDED = {"status": "ok", "reason": "", "face": None, "prior": None, "source": None, "ms": 0.0}


@serve.deployment(name="LandmarkDetector")
class LandmarkDetector:
    def __init__(self, checkpoints: list[str], landmarks: dict, landmark_cache: str | None):
        """``checkpoints``: every served model; they must read priors of one landmark backend."""
        from emola.config.schema import LandmarksConfig
        from emola.landmarks.registry import build_backend, inference_backend_name
        from emola.model.configuration import EmolaModelConfig
        from emola.model.reference import resolve_checkpoint

        configs = {reference: EmolaModelConfig.load(resolve_checkpoint(reference).path) for reference in checkpoints}
        backends = {(c.prior, c.landmark_backend) for c in configs.values()}
        if len(backends) > 1:
            raise ValueError("the served models need different face priors; serve them separately: "
                             + ", ".join(f"{r}: {c.prior} {c.landmark_backend}" for r, c in configs.items()))
        config = next(iter(configs.values()))
        name = inference_backend_name(config.prior, config.landmark_backend, config.prior_dim)
        self.backend = build_backend(LandmarksConfig.model_validate(landmarks), name=name) if name else None
        self.cached = _cached_results(landmark_cache, config.landmark_backend) if name else {}
        self.source = {"backend": self.backend.key if self.backend else None, "cache": config.landmark_backend,
                       "cached_images": len(self.cached)}
        self.detections = 0   # detect calls this replica answered

    def info(self) -> dict:
        return {**self.source, "detect_calls": self.detections}

    def known(self) -> dict:
        """What needs no detection: ``{needs_face, source, faces: {sha256: cached face}}`` (the ingress's copy)."""
        return {"needs_face": self.backend is not None, "source": self.source["cache"], "faces": self.cached}

    def detect(self, image: bytes | np.ndarray, sha256: str) -> dict:
        """``image`` (:attr:`serve.inputs.DecodedImage.wire`: encoded bytes or ``(H, W, 3)`` uint8 pixels) ->
        ``{status, reason, face: {box, score, landmarks}, prior, source}``; a cached image is not decoded."""
        started = time.perf_counter()
        self.detections += 1
        if self.backend is None:  # a model without the prior token needs no face
            return dict(NO_FACE_NEEDED)
        if hit := self.cached.get(sha256):
            return cached_face(hit, self.source["cache"], started)
        result = self.backend.extract([pixels_of(image)])[0]
        ms = round(1e3 * (time.perf_counter() - started), 2)
        if result.status != "ok":
            return {"status": result.status, "reason": result.reason, "face": None, "prior": None,
                    "source": self.source["cache"], "ms": ms}
        face = result.faces[0].to_dict()
        face["landmarks"] = face.pop("points")
        return {"status": "ok", "reason": "", "face": face, "prior": result.prior.tolist(),
                "source": self.source["cache"], "ms": ms}
