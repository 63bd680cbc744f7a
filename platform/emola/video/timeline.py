"""Per-face probability timelines: smoothing over time, and the key moments worth a description.

Frames are analysed one by one, so their probabilities jitter from frame to frame.
:func:`smooth` averages each face's timeline over a centered window of ``window`` sampled
frames (shorter at the ends; 1: no smoothing).

Key moments (:func:`key_moments`) are where a description says most, the apex of each
expression:

1. the dominant emotion of each frame (the most probable class) splits the timeline into
   segments; a segment shorter than ``min_frames`` joins the one before it (a flicker is
   not an expression);
2. in each segment whose emotion is not ``neutral``, the apex is the frame of highest
   intensity, ``1 - P(neutral)``; it is a key moment when that intensity reaches
   ``min_intensity``;
3. a timeline without any such segment (a neutral face all along) gets one key moment, its
   most intense frame, so every face has at least one description.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """``values`` ``(T, K)`` averaged over a centered window of ``window`` frames (odd or even; 1: unchanged)."""
    values = np.asarray(values, np.float64)
    if window <= 1 or len(values) < 2:
        return values.copy()
    before, after = (window - 1) // 2, window // 2
    cumulative = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    index = np.arange(len(values))
    lo, hi = np.maximum(index - before, 0), np.minimum(index + after + 1, len(values))
    return (cumulative[hi] - cumulative[lo]) / (hi - lo)[:, None]


def segments(labels: Sequence[str], min_frames: int) -> list[tuple[int, int, str]]:
    """Runs ``(start, stop, label)`` of equal labels; runs shorter than ``min_frames`` join the previous run."""
    runs: list[list] = []
    for i, label in enumerate(labels):
        if runs and runs[-1][2] == label:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, label])
    merged: list[list] = []
    for run in runs:
        if merged and (run[1] - run[0] < min_frames or run[2] == merged[-1][2]):
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    if len(merged) > 1 and merged[0][1] - merged[0][0] < min_frames:   # a flicker at the start joins the next
        merged[1][0] = merged[0][0]
        merged.pop(0)
    return [(a, b, label) for a, b, label in merged]


def key_moments(emotions: np.ndarray, classes: Sequence[str], min_frames: int = 3,
                min_intensity: float = 0.5) -> list[int]:
    """Indices of the key frames of one face's timeline (module docstring); ``emotions`` ``(T, len(classes))``."""
    emotions = np.asarray(emotions, np.float64)
    if len(emotions) == 0:
        return []
    classes = list(classes)
    neutral = emotions[:, classes.index("neutral")] if "neutral" in classes else np.zeros(len(emotions))
    intensity = 1.0 - neutral
    labels = [classes[i] for i in emotions.argmax(1)]
    moments = []
    for start, stop, label in segments(labels, min_frames):
        if label == "neutral":
            continue
        apex = start + int(np.argmax(intensity[start:stop]))
        if intensity[apex] >= min_intensity:
            moments.append(apex)
    return moments or [int(np.argmax(intensity))]
