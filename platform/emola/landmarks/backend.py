"""The one interface every landmark backend implements, and what it returns.

A backend turns a batch of RGB images into one :class:`FaceResult` per image: the faces
found (box, score, points in image pixels) and the *prior vector* of the selected face,
the input of EmoLA's prior projector. Each backend fixes how its prior vector is
normalized (see its class docstring), and its ``version`` changes whenever that or the
model behind it changes, so cached vectors of different versions never mix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: Status values of a :class:`FaceResult`; everything but ``ok`` has a reason.
STATUSES = ("ok", "no_face", "unreadable", "too_large", "bad_annotation", "error")


@dataclass(frozen=True)
class Face:
    """One face: box ``(x0, y0, x1, y1)`` and points ``(N, 2)`` in image pixels."""

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4),
                "points": np.round(self.points, 2).tolist()}


@dataclass
class FaceResult:
    """What a backend found in one image. ``faces[0]`` is the selected (largest) face."""

    status: str
    reason: str = ""
    faces: list[Face] = field(default_factory=list)
    prior: np.ndarray | None = None  # (prior_dim,) float32 of faces[0]
    width: int = 0
    height: int = 0

    @staticmethod
    def failed(status: str, reason: str, width: int = 0, height: int = 0) -> "FaceResult":
        assert status in STATUSES and status != "ok"
        return FaceResult(status=status, reason=reason, width=width, height=height)


def bbox_of(points: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box around ``(N, 2)`` points."""
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    return float(x0), float(y0), float(x1), float(y1)


def normalize_points(points: np.ndarray) -> np.ndarray:
    """The 68-point prior vector: points centred on their box and scaled by its longer side.

    ``(N, 2)`` pixels -> ``(2N,)`` float32 in about [-1, 1] (x0, y0, x1, y1, ...), invariant
    to the face's position and size in the image, so the same face gives the same vector
    in a crop or in a group photo.
    """
    x0, y0, x1, y1 = bbox_of(points)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    half = max(x1 - x0, y1 - y0, 1e-6) / 2
    return ((points - centre) / half).astype(np.float32).reshape(-1)


def order_faces(faces: Sequence[Face], all_faces: bool) -> list[Face]:
    """Largest face first; only that one unless ``all_faces``."""
    ranked = sorted(faces, key=lambda f: f.area, reverse=True)
    return ranked if all_faces else ranked[:1]


class LandmarkBackend(ABC):
    """A landmark extractor. Subclasses set the class attributes and implement ``extract``."""

    name: str
    version: str
    num_points: int

    @property
    def prior_dim(self) -> int:
        return 2 * self.num_points

    @property
    def key(self) -> str:
        """Cache key part: backend name and version."""
        return f"{self.name}@{self.version}"

    def face_prior(self, face: Face) -> np.ndarray | None:
        """The prior vector of any one detected face (not only the selected one), when the backend's
        prior is a function of the face's points alone; None when it is not (then take the face's
        crop through :meth:`extract`)."""
        return None

    @abstractmethod
    def extract(
        self,
        images: Sequence[np.ndarray],
        *,
        all_faces: bool = False,
        annotations: Sequence[np.ndarray | None] | None = None,
    ) -> list[FaceResult]:
        """Landmarks for a batch of ``(H, W, 3)`` uint8 RGB images, one result per image.

        ``annotations`` are the landmark arrays shipped with the data (used by the
        ``annotation`` backend only). Never raises for one bad image: its result says why.
        """
