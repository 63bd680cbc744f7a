"""Smoothing and key moments on synthetic expression timelines: neutral, onset, apex, offset."""

from __future__ import annotations

import numpy as np
import pytest

from emola.labels import EMOTIONS
from emola.video.timeline import key_moments, segments, smooth

NEUTRAL, HAPPY, SURPRISE = EMOTIONS.index("neutral"), EMOTIONS.index("happiness"), EMOTIONS.index("surprise")


def _timeline(events, length: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Probabilities per frame: neutral, plus a triangular expression (onset, apex, offset) per event."""
    rng = np.random.default_rng(seed)
    strength = np.zeros((length, len(EMOTIONS)))
    for cls, start, apex, stop, peak in events:
        for t in range(start, stop + 1):
            rise = (t - start) / max(apex - start, 1) if t <= apex else (stop - t) / max(stop - apex, 1)
            strength[t, cls] = max(strength[t, cls], peak * rise)
    strength = np.clip(strength + noise * rng.random(strength.shape), 0, 0.98)
    probs = strength.copy()
    probs[:, NEUTRAL] = 1.0 - strength.max(1)
    return probs / probs.sum(1, keepdims=True)


def test_smoothing_averages_a_centered_window_and_keeps_the_ends():
    values = np.array([[0.0], [3.0], [0.0], [3.0], [0.0]])
    assert smooth(values, 1).ravel().tolist() == values.ravel().tolist()
    assert smooth(values, 3).ravel().tolist() == [1.5, 1.0, 2.0, 1.0, 1.5]
    assert smooth(values, 100).ravel().tolist() == pytest.approx([1.2] * 5)


def test_segments_absorb_flickers():
    labels = ["n", "n", "h", "n", "n", "h", "h", "h", "h", "n", "n", "n"]
    assert segments(labels, 3) == [(0, 5, "n"), (5, 9, "h"), (9, 12, "n")]
    assert segments(["h", "n", "n", "n"], 2) == [(0, 4, "n")]


def test_key_moments_are_the_apexes_of_each_expression():
    # Neutral, a smile peaking at frame 15, neutral again, a surprise peaking at 44.
    probs = _timeline([(HAPPY, 8, 15, 24, 0.95), (SURPRISE, 38, 44, 50, 0.9)], length=60)
    assert key_moments(probs, EMOTIONS) == [15, 44]
    # A weak expression is no key moment; a neutral face gets its most intense frame.
    weak = _timeline([(HAPPY, 8, 15, 24, 0.4)], length=30)
    assert key_moments(weak, EMOTIONS, min_intensity=0.5) == [15]
    assert key_moments(_timeline([], length=10), EMOTIONS) == [0]


def test_smoothing_keeps_key_moments_within_a_frame_or_two_of_the_apex_in_noise():
    truth = [15, 44]
    probs = _timeline([(HAPPY, 8, 15, 24, 0.95), (SURPRISE, 38, 44, 50, 0.9)], length=60, noise=0.6, seed=3)
    noisy = key_moments(probs, EMOTIONS)
    smoothed = key_moments(smooth(probs, 5), EMOTIONS)
    assert len(smoothed) == 2 and all(abs(a - b) <= 2 for a, b in zip(smoothed, truth)), smoothed
    assert len(noisy) >= len(smoothed)   # noise alone can only split or shift expressions
