"""``dlib-68``: dlib's HOG face detector and 68-point shape predictor (offline, CPU)."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from emola.landmarks.backend import Face, FaceResult, LandmarkBackend, normalize_points, order_faces


def predictor_path() -> Path:
    """The 68-point model shipped by ``face-recognition-models``.

    Found without importing that package, whose ``__init__`` needs ``pkg_resources``
    (removed from recent setuptools).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("dlib-68 needs the face-recognition-models package (pip install face-recognition-models)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise RuntimeError(f"dlib-68: {path} is missing; reinstall face-recognition-models")
    return path


class Dlib68Backend(LandmarkBackend):
    """Faces by dlib's frontal HOG detector, 68 iBUG points by its shape predictor.

    Images whose shorter side is under ``upsample_below`` pixels are searched once more
    at twice the size (dlib's detector misses faces under about 80 px otherwise).
    Prior vector: 136 values, :func:`~emola.landmarks.backend.normalize_points` (the same
    as the ``annotation`` backend's 68-point layout).

    dlib's detector and shape predictor are not thread-safe: two threads calling them at once
    crash the process (SIGSEGV; Serve runs a deployment's plain methods in threads). One
    backend is used by one thread at a time; throughput comes from more processes.
    """

    name = "dlib-68"
    version = "1"
    num_points = 68

    def __init__(self, upsample_below: int = 400, min_score: float = 0.0):
        import dlib  # imported here: only this backend needs it

        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path()))
        self._rectangle = dlib.rectangle
        self._lock = threading.Lock()
        self.upsample_below = upsample_below
        self.min_score = min_score

    def detect(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """Face boxes and detector scores of one RGB image."""
        upsample = 1 if min(image.shape[:2]) < self.upsample_below else 0
        with self._lock:
            rects, scores, _ = self._detector.run(np.ascontiguousarray(image), upsample, self.min_score)
        return [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]

    def points(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        with self._lock:
            shape = self._predictor(np.ascontiguousarray(image), self._rectangle(*(int(round(v)) for v in box)))
            return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def face_prior(self, face):
        return normalize_points(face.points)   # position- and size-invariant: the same for the face in any crop

    def extract(self, images, *, all_faces=False, annotations=None):
        results = []
        for image in images:
            height, width = image.shape[:2]
            try:
                found = self.detect(image)
                if not found:
                    results.append(FaceResult.failed("no_face", "no face detected", width, height))
                    continue
                faces = order_faces([Face(box, score, self.points(image, box)) for box, score in found], all_faces)
                results.append(FaceResult("ok", faces=faces, prior=normalize_points(faces[0].points),
                                          width=width, height=height))
            except Exception as err:  # noqa: BLE001 - one bad image must not stop the batch
                results.append(FaceResult.failed("error", f"dlib-68 failed: {err}", width, height))
        return results
