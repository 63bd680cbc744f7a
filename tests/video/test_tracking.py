"""Face ids across frames: stable while a face moves, new for a new face or one that was gone too long."""

from __future__ import annotations

import pytest

from emola.video import FaceTracker, iou


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0 and iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_moving_faces_keep_their_ids_and_new_ones_get_the_next():
    tracker = FaceTracker(min_iou=0.3, max_gap=2)
    a, b = (0, 0, 40, 40), (100, 0, 140, 40)
    assert tracker.update([a, b]) == [0, 1]
    for step in range(1, 6):   # both drift 4 px a frame; listed in the other order
        assert tracker.update([(100 + 4 * step, 0, 140 + 4 * step, 40), (4 * step, 0, 40 + 4 * step, 40)]) == [1, 0]
    assert tracker.update([(20, 0, 60, 40), (120, 0, 160, 40), (300, 300, 340, 340)]) == [0, 1, 2]


def test_a_face_gone_longer_than_the_gap_comes_back_with_a_new_id():
    tracker = FaceTracker(min_iou=0.3, max_gap=2)
    face = (0, 0, 40, 40)
    assert tracker.update([face]) == [0]
    assert tracker.update([]) == [] and tracker.update([]) == []
    assert tracker.update([face]) == [0]          # missed 2 frames: still known
    for _ in range(3):
        tracker.update([])
    assert tracker.update([face]) == [1]          # missed 3: forgotten
    assert tracker.update([(0, 0, 40, 40), (2, 2, 42, 42)]) == [1, 2]   # one box per face, the best overlap wins
    with pytest.raises(ValueError):
        FaceTracker(min_iou=0)
