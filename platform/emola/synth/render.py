"""Drawing a face image from 68 points, AU intensities, pose and appearance (Pillow only).

Geometry comes from the landmarks; the appearance cues FACS coders also read (forehead
lines for AU1/AU2, the glabella furrow for AU4, crow's feet for AU6, nose wrinkles for
AU9, nasolabial folds, dimples, chin bumps, teeth) are drawn with strength proportional
to the AU intensity. Everything is drawn at ``SUPERSAMPLE`` times the output size and
downsampled, which anti-aliases thin lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from emola.synth.face_model import Pose, project

SUPERSAMPLE = 2
Color = tuple[int, int, int]

_SKIN = np.array([(255, 224, 196), (241, 194, 150), (224, 172, 125), (198, 134, 96), (141, 85, 56), (92, 56, 38)], float)
_HAIR = [(25, 20, 18), (60, 40, 25), (110, 75, 40), (190, 150, 90), (150, 60, 30), (150, 150, 150)]
_IRIS = [(70, 45, 25), (40, 90, 140), (60, 110, 70), (110, 85, 45), (30, 25, 20)]


@dataclass(frozen=True)
class Appearance:
    skin: Color
    hair: Color
    iris: Color
    lips: Color
    clothes: Color
    background: tuple[Color, Color]
    background_angle: float
    hairline: float          # face units (negative is up)
    long_hair: bool
    light_angle: float
    light_strength: float
    noise_sigma: float
    blur: float
    jpeg_quality: int

    @staticmethod
    def sample(rng: np.random.Generator) -> "Appearance":
        t = rng.uniform(0, len(_SKIN) - 1)
        lo = int(t)
        skin = _SKIN[lo] + (t - lo) * (_SKIN[min(lo + 1, len(_SKIN) - 1)] - _SKIN[lo]) + rng.normal(0, 6, 3)
        skin = np.clip(skin, 30, 255)
        lips = np.clip(skin * [0.82, 0.55, 0.55] + [25, 5, 10], 0, 255)
        colour = lambda: tuple(int(v) for v in rng.integers(20, 236, 3))  # noqa: E731
        return Appearance(
            skin=tuple(int(v) for v in skin),
            hair=_HAIR[int(rng.integers(len(_HAIR)))],
            iris=_IRIS[int(rng.integers(len(_IRIS)))],
            lips=tuple(int(v) for v in lips),
            clothes=colour(),
            background=(colour(), colour()),
            background_angle=float(rng.uniform(0, 2 * np.pi)),
            hairline=float(rng.uniform(-1.0, -0.82)),
            long_hair=bool(rng.random() < 0.4),
            light_angle=float(rng.uniform(0, 2 * np.pi)),
            light_strength=float(rng.uniform(0.0, 0.18)),
            noise_sigma=float(rng.uniform(1.0, 6.0)),
            blur=float(rng.uniform(0.0, 0.6)),
            jpeg_quality=int(rng.integers(82, 96)),
        )


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in color)


def _mix(a: Color, b: Color, t: float) -> Color:
    return tuple(int(round((1 - t) * x + t * y)) for x, y in zip(a, b))


def _gradient(size: int, a: Color, b: Color, angle: float) -> Image.Image:
    """A linear colour gradient; computed at 32 px and upscaled (it is smooth anyway)."""
    small = 32
    yy, xx = np.mgrid[0:small, 0:small] / (small - 1)
    t = np.clip((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    pixels = (1 - t) * np.array(a, float) + t * np.array(b, float)
    return Image.fromarray(pixels.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)


class _Canvas:
    """Draws shapes given in face units, projected with the face's pose."""

    def __init__(self, image: Image.Image, pose: Pose):
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.pose = pose
        self.px = pose.scale  # pixels per face unit

    def xy(self, pts: np.ndarray, depth: float | np.ndarray = 0.2) -> list[tuple[float, float]]:
        pts = np.asarray(pts, float).reshape(-1, 2)
        z = np.broadcast_to(np.asarray(depth, float), (len(pts),))
        return [tuple(p) for p in project(pts, self.pose, z)]

    def width(self, units: float) -> int:
        return max(1, int(round(units * self.px)))

    def polygon(self, pts, fill: Color, depth=0.2) -> None:
        self.draw.polygon(self.xy(pts, depth), fill=fill)

    def line(self, pts, fill: Color, width: float, depth=0.2) -> None:
        self.draw.line(self.xy(pts, depth), fill=fill, width=self.width(width), joint="curve")

    def ellipse(self, centre, rx: float, ry: float, fill: Color, depth=0.2, n: int = 24) -> None:
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        self.polygon(np.stack([centre[0] + rx * np.cos(t), centre[1] + ry * np.sin(t)], 1), fill, depth)


def _arc(x0: float, x1: float, y: float, bulge: float, n: int = 8) -> np.ndarray:
    x = np.linspace(x0, x1, n)
    return np.stack([x, y - bulge * np.sin(np.linspace(0, np.pi, n))], 1)


def _wrinkles(c: _Canvas, p: np.ndarray, au: Mapping[int, float], skin: Color) -> None:
    """Appearance changes of AUs, drawn as darker skin lines with intensity-scaled contrast."""
    crease = lambda v: _mix(skin, _shade(skin, 0.55), min(1.0, 0.35 + 0.65 * v))  # noqa: E731
    w = 0.018
    brow_top = min(p[17:27, 1]) - 0.1
    if au.get(1, 0) > 0.2 or au.get(2, 0) > 0.2:  # horizontal forehead lines
        inner, outer = au.get(1, 0), au.get(2, 0)
        x0, x1 = (-0.55, 0.55) if outer > 0.2 else (-0.3, 0.3)
        for k in range(2 if max(inner, outer) < 0.6 else 3):
            c.line(_arc(x0 + 0.05 * k, x1 - 0.05 * k, brow_top - 0.09 * k, 0.03), crease(max(inner, outer)), w)
    if au.get(4, 0) > 0.2:  # vertical furrows between the brows
        gx = (p[21, 0] + p[22, 0]) / 2
        for dx in (-0.04, 0.04):
            c.line([[gx + dx, p[21, 1] - 0.12], [gx + 0.6 * dx, p[21, 1] + 0.04]], crease(au[4]), w)
    if au.get(6, 0) > 0.2:  # crow's feet and raised cheeks
        for eye_corner, sgn in ((36, -1), (45, 1)):
            x, y = p[eye_corner]
            for dy in (-0.04, 0.0, 0.045):
                c.line([[x + sgn * 0.04, y + dy * 0.5], [x + sgn * 0.13, y + dy]], crease(au[6]), 0.014)
            c.line(_arc(x - sgn * 0.28 if sgn > 0 else x + 0.04, x - 0.04 if sgn > 0 else x + 0.28, p[41, 1] + 0.1, -0.03), crease(au[6]), 0.014)
    if au.get(9, 0) > 0.2:  # wrinkles across the nose bridge
        for k in range(3):
            y = p[28, 1] + 0.04 * k - 0.04
            c.line([[-0.07, y + 0.01], [0.0, y - 0.01], [0.07, y + 0.01]], crease(au[9]), 0.014)
    fold = max(au.get(6, 0), au.get(9, 0), au.get(10, 0), au.get(12, 0))
    if fold > 0.25:  # nasolabial folds from the nose wings past the mouth corners
        for wing, corner, sgn in ((31, 48, -1), (35, 54, 1)):
            a, b = p[wing], p[corner]
            c.line([[a[0] + sgn * 0.06, a[1] - 0.02], [b[0] + sgn * 0.08, (a[1] + b[1]) / 2], [b[0] + sgn * 0.06, b[1] + 0.04]], crease(fold), w)
    if au.get(14, 0) > 0.2:  # dimples beside the mouth corners
        for corner, sgn in ((48, -1), (54, 1)):
            x, y = p[corner]
            c.line([[x + sgn * 0.05, y - 0.04], [x + sgn * 0.07, y], [x + sgn * 0.05, y + 0.04]], crease(au[14]), 0.016)
    if au.get(17, 0) > 0.2:  # chin boss bumps and the mentolabial furrow
        c.line(_arc(p[59, 0], p[55, 0], p[57, 1] + 0.07, -0.02), crease(au[17]), w)
        for dx in (-0.06, 0.06):
            c.ellipse([dx, p[8, 1] - 0.15], 0.025, 0.018, crease(0.4 * au[17]))


def _eye(c: _Canvas, p: np.ndarray, idx: Sequence[int], a: Appearance, closed: float) -> None:
    eye = p[list(idx)]
    outline = _shade(a.skin, 0.35)
    if closed > 0.75:
        c.line(eye[[0, 1, 2, 3]], outline, 0.022, depth=0.15)
        return
    c.polygon(eye, (236, 236, 232), depth=0.15)
    centre = eye.mean(0)
    height = eye[[4, 5], 1].mean() - eye[[1, 2], 1].mean()
    radius = min(0.07, 0.62 * max(height, 0.02))
    # The iris is drawn on a crop around the eye and pasted through the eye's shape,
    # so it is clipped by the lids (a full-canvas layer would cost 10x more).
    outline_px = np.array(c.xy(eye, 0.15))
    x0, y0 = np.floor(outline_px.min(0)).astype(int) - 1
    x1, y1 = np.ceil(outline_px.max(0)).astype(int) + 1
    if x1 <= x0 or y1 <= y0:
        return
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in outline_px], fill=255)
    layer = c.image.crop((x0, y0, x1, y1))
    draw = ImageDraw.Draw(layer)
    ix, iy = c.xy([centre], 0.17)[0]
    ix, iy = ix - x0, iy - y0
    r = radius * c.px
    draw.ellipse([ix - r, iy - r, ix + r, iy + r], fill=a.iris)
    draw.ellipse([ix - 0.45 * r, iy - 0.45 * r, ix + 0.45 * r, iy + 0.45 * r], fill=(10, 10, 10))
    c.image.paste(layer, (x0, y0), mask)
    c.line(eye[[0, 1, 2, 3]], outline, 0.02, depth=0.15)
    c.line(eye[[3, 4, 5, 0]], _shade(a.skin, 0.7), 0.01, depth=0.15)


def _mouth(c: _Canvas, p: np.ndarray, a: Appearance) -> None:
    c.polygon(p[48:60], a.lips, depth=0.35)
    inner = p[60:68]
    opening = float(np.mean(p[[67, 66, 65], 1] - p[[61, 62, 63], 1]))
    if opening > 0.012:
        c.polygon(inner, (45, 12, 15), depth=0.33)
        upper = p[[60, 61, 62, 63, 64]]
        teeth_h = min(0.45 * opening, 0.05)
        c.polygon(np.concatenate([upper, upper[::-1] + [0, teeth_h]]) * [0.92, 1], (240, 238, 225), depth=0.33)
        if opening > 0.12:
            lower = p[[64, 65, 66, 67, 60]]
            c.polygon(np.concatenate([lower, lower[::-1] - [0, 0.035]]) * [0.85, 1], (230, 228, 215), depth=0.33)
    c.line(p[[60, 61, 62, 63, 64]], _shade(a.lips, 0.45), 0.012, depth=0.35)


def render_face(
    points: np.ndarray, intensities: Mapping[int, float], pose: Pose, appearance: Appearance,
    size: int, rng: np.random.Generator,
) -> Image.Image:
    """Render one face.

    ``points``: (68, 2) expression in face units; ``pose`` in output pixels. Returns an
    RGB ``size`` x ``size`` image.
    """
    a = appearance
    big = size * SUPERSAMPLE
    pose_big = Pose(pose.yaw, pose.pitch, pose.roll, pose.scale * SUPERSAMPLE, pose.cx * SUPERSAMPLE, pose.cy * SUPERSAMPLE)
    image = _gradient(big, *a.background, a.background_angle)
    c = _Canvas(image, pose_big)
    for _ in range(int(rng.integers(2, 5))):  # background clutter
        cx, cy = rng.uniform(-2.5, 2.5, 2)
        c.ellipse([cx, cy], rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.9), tuple(int(v) for v in rng.integers(0, 256, 3)), depth=-1.0)

    c.polygon([[-1.6, 3.5], [-1.5, 1.6], [-0.45, 1.25], [0.45, 1.25], [1.5, 1.6], [1.6, 3.5]], a.clothes, depth=-0.5)
    c.polygon([[-0.42, 0.7], [0.42, 0.7], [0.48, 1.45], [-0.48, 1.45]], _shade(a.skin, 0.85), depth=-0.3)
    if a.long_hair:
        c.ellipse([0.0, -0.05], 1.12, 1.15, _shade(a.hair, 0.9), depth=-0.4)
    for sgn in (-1, 1):
        c.ellipse([sgn * 0.96, -0.08], 0.09, 0.2, _shade(a.skin, 0.9), depth=-0.2)
    jaw = points[0:17]
    forehead = np.stack([0.95 * np.cos(np.linspace(np.pi, 2 * np.pi, 15)) * (abs(jaw[0, 0]) + abs(jaw[16, 0])) / 1.9,
                         -0.25 + 0.95 * np.sin(np.linspace(np.pi, 2 * np.pi, 15))], 1)
    c.polygon(np.concatenate([jaw, forehead[1:-1]]), a.skin, depth=0.15)
    cap = forehead[forehead[:, 1] < a.hairline + 0.05]
    hairline = _arc(cap[0, 0], cap[-1, 0], a.hairline, -0.08)
    c.polygon(np.concatenate([cap * 1.05, hairline[::-1]]), a.hair, depth=0.1)

    _wrinkles(c, points, intensities, a.skin)
    closed = intensities.get(43, 0.0)
    _eye(c, points, range(36, 42), a, closed)
    _eye(c, points, range(42, 48), a, closed)
    brow_w = 0.05
    c.line(points[17:22], _shade(a.hair, 0.8), brow_w, depth=0.25)
    c.line(points[22:27], _shade(a.hair, 0.8), brow_w, depth=0.25)
    nose_shadow = _shade(a.skin, 0.75)
    c.line(points[[27, 28, 29]] + [0.05, 0], nose_shadow, 0.012, depth=0.4)
    c.line(points[[31, 32, 33, 34, 35]], _shade(a.skin, 0.6), 0.016, depth=0.45)
    for i in (32, 34):
        c.ellipse(points[i] + [0, -0.005], 0.025, 0.014, _shade(a.skin, 0.35), depth=0.45)
    _mouth(c, points, a)

    image = image.resize((size, size), Image.Resampling.LANCZOS)
    if a.blur > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(a.blur))
    pixels = np.asarray(image, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    light = 1.0 + a.light_strength * (np.cos(a.light_angle) * xx + np.sin(a.light_angle) * yy) * 2
    pixels = pixels * light[..., None] + rng.normal(0, a.noise_sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
