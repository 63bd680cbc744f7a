"""A 68-point face (iBUG 300-W layout) with identity variation and head pose.

Coordinates are in *face units*: x to the image's right, y down, origin between the
eyes' level and the nose; the face is about 1.9 units wide. iBUG indices::

    0-16 jaw (image left to right)    17-21, 22-26 brows      27-30 nose bridge
    31-35 nostrils                    36-41, 42-47 eyes       48-59 outer lips
    60-67 inner lips

Point 36 is the outer corner of the eye on the image's left; "outward" below means away
from the vertical midline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JAW = np.arange(0, 17)
BROW_R, BROW_L = np.arange(17, 22), np.arange(22, 27)
NOSE_BRIDGE, NOSTRILS = np.arange(27, 31), np.arange(31, 36)
EYE_R, EYE_L = np.arange(36, 42), np.arange(42, 48)
LIPS_OUTER, LIPS_INNER = np.arange(48, 60), np.arange(60, 68)
UPPER_LIDS = np.array([37, 38, 43, 44])
LOWER_LIDS = np.array([41, 40, 47, 46])  # paired index by index with UPPER_LIDS
UPPER_INNER_LIP = np.array([61, 62, 63])
LOWER_INNER_LIP = np.array([67, 66, 65])  # paired with UPPER_INNER_LIP


def _mean_shape() -> np.ndarray:
    theta = np.linspace(0.0, np.pi, 17)
    jaw = np.stack([-0.95 * np.cos(theta), -0.25 + 1.3 * np.sin(theta) ** 0.9], axis=1)
    brow_x = np.linspace(-0.80, -0.16, 5)
    brow_r = np.stack([brow_x, -0.56 - 0.09 * np.sin(np.linspace(0.25, np.pi - 0.6, 5))], axis=1)
    brow_l = brow_r[::-1] * [-1, 1]
    bridge = np.stack([np.zeros(4), np.linspace(-0.33, 0.22, 4)], axis=1)
    nostrils = np.array([[-0.18, 0.31], [-0.09, 0.35], [0.0, 0.37], [0.09, 0.35], [0.18, 0.31]])
    eye_r = np.array([[-0.60, -0.28], [-0.49, -0.345], [-0.35, -0.345], [-0.24, -0.28], [-0.35, -0.225], [-0.49, -0.225]])
    eye_l = eye_r[[3, 2, 1, 0, 5, 4]] * [-1, 1]
    lips_outer = np.array([
        [-0.32, 0.62], [-0.20, 0.565], [-0.08, 0.535], [0.0, 0.55], [0.08, 0.535], [0.20, 0.565],
        [0.32, 0.62], [0.20, 0.715], [0.08, 0.755], [0.0, 0.765], [-0.08, 0.755], [-0.20, 0.715],
    ])
    lips_inner = np.array([
        [-0.26, 0.62], [-0.08, 0.61], [0.0, 0.612], [0.08, 0.61],
        [0.26, 0.62], [0.08, 0.625], [0.0, 0.627], [-0.08, 0.625],
    ])
    return np.concatenate([jaw, brow_r, brow_l, bridge, nostrils, eye_r, eye_l, lips_outer, lips_inner]).astype(np.float64)


#: The neutral 68-point face, shape (68, 2).
MEAN_SHAPE: np.ndarray = _mean_shape()


def _depth() -> np.ndarray:
    """Rough depth (toward the viewer) per point, for yaw and pitch."""
    z = np.zeros(68)
    z[JAW] = 0.35 * np.sin(np.linspace(0.0, np.pi, 17)) - 0.25
    z[17:27] = 0.25
    z[NOSE_BRIDGE] = np.linspace(0.3, 0.6, 4)
    z[NOSTRILS] = [0.35, 0.45, 0.5, 0.45, 0.35]
    z[36:48] = 0.15
    z[48:68] = 0.35
    return z


DEPTH = _depth()


@dataclass(frozen=True)
class Identity:
    """Who the face is: proportions that stay fixed while expressions change."""

    width: float = 1.0        # face width scale
    length: float = 1.0       # face length scale
    eye_spacing: float = 1.0
    eye_size: float = 1.0
    mouth_width: float = 1.0
    nose_length: float = 1.0
    brow_height: float = 0.0  # face units, negative raises
    jaw_width: float = 1.0

    @staticmethod
    def sample(rng: np.random.Generator) -> "Identity":
        u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
        return Identity(u(0.88, 1.1), u(0.9, 1.1), u(0.92, 1.08), u(0.85, 1.15), u(0.88, 1.12),
                        u(0.9, 1.1), u(-0.04, 0.04), u(0.85, 1.08))


def neutral_face(identity: Identity) -> np.ndarray:
    """The identity's neutral expression, shape (68, 2), in face units."""
    pts = MEAN_SHAPE.copy()
    for eye in (EYE_R, EYE_L):
        centre = pts[eye].mean(axis=0)
        pts[eye] = centre * [identity.eye_spacing, 1] + (pts[eye] - centre) * identity.eye_size
    pts[17:27, 1] += identity.brow_height
    mouth_centre = pts[48:68].mean(axis=0)
    pts[48:68, 0] = mouth_centre[0] + (pts[48:68, 0] - mouth_centre[0]) * identity.mouth_width
    pts[31:36, 1] = 0.22 + (pts[31:36, 1] - 0.22) * identity.nose_length
    pts[28:31, 1] = -0.33 + (pts[28:31, 1] + 0.33) * identity.nose_length
    lower_jaw = pts[JAW, 1] > 0.2
    pts[JAW[lower_jaw], 0] *= identity.jaw_width
    return pts * [identity.width, identity.length]


@dataclass(frozen=True)
class Pose:
    yaw: float = 0.0     # radians, turning left/right
    pitch: float = 0.0   # radians, nodding
    roll: float = 0.0    # radians, in-plane rotation
    scale: float = 60.0  # pixels per face unit
    cx: float = 0.0      # face centre in pixels
    cy: float = 0.0

    @staticmethod
    def sample(rng: np.random.Generator, size: int) -> "Pose":
        return Pose(
            yaw=float(rng.uniform(-0.35, 0.35)),
            pitch=float(rng.uniform(-0.15, 0.15)),
            roll=float(np.deg2rad(rng.uniform(-15, 15))),
            scale=float(size * rng.uniform(0.25, 0.32)),
            cx=float(size * (0.5 + rng.uniform(-0.06, 0.06))),
            cy=float(size * (0.5 + rng.uniform(-0.05, 0.06))),
        )


def project(points: np.ndarray, pose: Pose, depth: np.ndarray | None = None) -> np.ndarray:
    """Face units -> image pixels: yaw and pitch about the face centre, then roll, scale, shift.

    ``points``: (N, 2); ``depth``: (N,) or None for the 68-point depth. Returns (N, 2).
    """
    z = DEPTH if depth is None else depth
    x, y = points[:, 0], points[:, 1]
    x, z = x * np.cos(pose.yaw) + z * np.sin(pose.yaw), -x * np.sin(pose.yaw) + z * np.cos(pose.yaw)
    y = y * np.cos(pose.pitch) - z * np.sin(pose.pitch)
    c, s = np.cos(pose.roll), np.sin(pose.roll)
    xr, yr = c * x - s * y, s * x + c * y
    return np.stack([pose.cx + pose.scale * xr, pose.cy + pose.scale * yr], axis=1)
