"""FACS action units as displacements of the 68 iBUG points (in face units).

Each AU moves a few points by a vector scaled by its intensity in [0, 1]; positive ``dx``
in :data:`AU_MOVES` means *outward* (away from the midline), positive ``dy`` means down.
AU 43 (eyes closed) is not a fixed vector: it slides each upper lid toward its lower lid.
Appearance changes that landmarks cannot show (wrinkles, furrows, teeth) are drawn by
:mod:`emola.synth.render` from the same intensities.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from emola.synth.face_model import LOWER_INNER_LIP, LOWER_LIDS, UPPER_INNER_LIP, UPPER_LIDS

#: AU -> [(point indices, (outward dx, dy)), ...] at full intensity.
AU_MOVES: dict[int, list[tuple[tuple[int, ...], tuple[float, float]]]] = {
    1: [((21, 22), (0.0, -0.13)), ((20, 23), (0.0, -0.09)), ((19, 24), (0.0, -0.045))],
    2: [((17, 26), (0.0, -0.13)), ((18, 25), (0.0, -0.10)), ((19, 24), (0.0, -0.05))],
    4: [((21, 22), (-0.06, 0.10)), ((20, 23), (-0.04, 0.085)), ((19, 24), (-0.02, 0.06)),
        ((17, 18, 25, 26), (0.0, 0.04)), ((37, 38, 43, 44), (0.0, 0.012))],
    5: [((37, 38, 43, 44), (0.0, -0.075)), ((36, 39, 42, 45), (0.0, -0.01))],
    6: [((40, 41, 46, 47), (0.0, -0.045)), ((36, 45), (0.0, -0.015)), ((48, 54), (0.01, -0.015))],
    7: [((40, 41, 46, 47), (0.0, -0.05)), ((37, 38, 43, 44), (0.0, 0.025))],
    9: [((31, 35), (0.025, -0.06)), ((32, 33, 34), (0.0, -0.05)), ((30,), (0.0, -0.03)),
        ((49, 50, 51, 52, 53), (0.0, -0.035)), ((61, 62, 63), (0.0, -0.03)), ((21, 22), (0.0, 0.05))],
    10: [((49, 50, 52, 53), (0.0, -0.075)), ((51,), (0.0, -0.055)), ((61, 62, 63), (0.0, -0.065))],
    12: [((48, 54), (0.07, -0.10)), ((60, 64), (0.06, -0.09)), ((49, 53, 55, 59), (0.03, -0.045))],
    14: [((48, 54), (-0.035, -0.015)), ((60, 64), (-0.03, -0.01))],
    15: [((48, 54), (0.01, 0.09)), ((60, 64), (0.01, 0.08)), ((55, 59), (0.0, 0.04))],
    16: [((56, 57, 58), (0.0, 0.075)), ((55, 59), (0.0, 0.05)), ((65, 66, 67), (0.0, 0.075))],
    17: [((55, 56, 57, 58, 59), (0.0, -0.045)), ((65, 66, 67), (0.0, -0.02)), ((7, 8, 9), (0.0, -0.05))],
    20: [((48, 54), (0.085, 0.02)), ((60, 64), (0.08, 0.02)), ((50, 51, 52), (0.0, 0.012)),
         ((56, 57, 58), (0.0, -0.012)), ((6, 10), (0.02, 0.0))],
    23: [((49, 50, 51, 52, 53), (0.0, 0.025)), ((55, 56, 57, 58, 59), (0.0, -0.025)),
         ((48, 54, 60, 64), (-0.025, 0.0))],
    24: [((49, 50, 51, 52, 53), (0.0, 0.03)), ((55, 56, 57, 58, 59), (0.0, -0.035)),
         ((61, 62, 63), (0.0, 0.006)), ((65, 66, 67), (0.0, -0.006))],
    25: [((61, 62, 63), (0.0, -0.015)), ((65, 66, 67), (0.0, 0.045)), ((56, 57, 58), (0.0, 0.025))],
    26: [((55, 56, 57, 58, 59), (0.0, 0.15)), ((65, 66, 67), (0.0, 0.15)), ((48, 54, 60, 64), (0.0, 0.05)),
         ((8,), (0.0, 0.15)), ((7, 9), (0.0, 0.13)), ((6, 10), (0.0, 0.09)), ((5, 11), (0.0, 0.045))],
    27: [((55, 56, 57, 58, 59), (0.0, 0.26)), ((65, 66, 67), (0.0, 0.26)), ((48, 54, 60, 64), (-0.05, 0.1)),
         ((8,), (0.0, 0.25)), ((7, 9), (0.0, 0.22)), ((6, 10), (0.0, 0.15)), ((5, 11), (0.0, 0.07))],
}

#: Every AU FABA-Synth renders: the FABA label space.
RENDERED_AUS: tuple[int, ...] = tuple(sorted([*AU_MOVES, 43]))


def apply_action_units(neutral: np.ndarray, intensities: Mapping[int, float]) -> np.ndarray:
    """Deform a neutral face by AU intensities.

    ``neutral``: (68, 2) face units; ``intensities``: ``{au: value in [0, 1]}``.
    Returns a new (68, 2) array. Lids and inner lips never cross.
    """
    pts = neutral.copy()
    side = np.sign(neutral[:, 0])  # outward direction per point (0 on the midline)
    for au, value in intensities.items():
        if value <= 0 or au == 43:
            continue
        for indices, (dx, dy) in AU_MOVES[au]:
            idx = np.asarray(indices)
            pts[idx, 0] += value * dx * side[idx]
            pts[idx, 1] += value * dy
    closed = intensities.get(43, 0.0)
    if closed > 0:
        pts[UPPER_LIDS, 1] += closed * (pts[LOWER_LIDS, 1] - 0.004 - pts[UPPER_LIDS, 1])
    # Physical limits: a lid stops at its lower lid, the lower lip below the upper one.
    pts[UPPER_LIDS, 1] = np.minimum(pts[UPPER_LIDS, 1], pts[LOWER_LIDS, 1] - 0.004)
    pts[LOWER_INNER_LIP, 1] = np.maximum(pts[LOWER_INNER_LIP, 1], pts[UPPER_INNER_LIP, 1] + 0.004)
    return pts
