"""Following faces across frames by box overlap, so each face keeps one ``face_id``.

Per frame the detected boxes are matched to the faces seen before by intersection over
union (IoU), greedily from the best-overlapping pair down, each face and box used once; a
pair below ``min_iou`` does not match. A box that matches nothing starts a new face (ids
count up from 0 and are never reused); a face unmatched for more than ``max_gap``
consecutive sampled frames is forgotten, so a face that leaves and comes back later gets a
new id. Matching compares with the face's last box: at a few frames per second a face
moves less than its own width between samples, which keeps the overlap high.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Box = tuple[float, float, float, float]   # x0, y0, x1, y1


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Face:
    face_id: int
    box: Box
    missed: int = 0


class FaceTracker:
    """Assigns a stable ``face_id`` to each box, frame after frame (:meth:`update`)."""

    def __init__(self, min_iou: float = 0.3, max_gap: int = 5):
        if not 0 < min_iou <= 1:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        self.min_iou, self.max_gap = min_iou, max_gap
        self._faces: list[_Face] = []
        self._next_id = 0

    def update(self, boxes: Sequence[Box]) -> list[int]:
        """The ids of this frame's ``boxes``, in their order."""
        pairs = sorted(((iou(face.box, box), f, b) for f, face in enumerate(self._faces) for b, box in enumerate(boxes)),
                       reverse=True)
        ids: list[int | None] = [None] * len(boxes)
        used: set[int] = set()
        for overlap, f, b in pairs:
            if overlap < self.min_iou:
                break
            if f in used or ids[b] is not None:
                continue
            used.add(f)
            ids[b] = self._faces[f].face_id
            self._faces[f].box, self._faces[f].missed = tuple(boxes[b]), 0
        for f, face in enumerate(self._faces):
            if f not in used:
                face.missed += 1
        self._faces = [face for face in self._faces if face.missed <= self.max_gap]
        for b, box in enumerate(boxes):
            if ids[b] is None:
                ids[b] = self._next_id
                self._faces.append(_Face(self._next_id, tuple(box)))
                self._next_id += 1
        return [int(i) for i in ids]
