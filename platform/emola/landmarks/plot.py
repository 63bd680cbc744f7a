"""Drawing faces on their image: boxes, points, and the detector score."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from emola.landmarks.backend import FaceResult


def draw_faces(image: Image.Image, result: FaceResult) -> Image.Image:
    """A copy of ``image`` with each face's box (green, the selected one thicker) and points (red)."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    radius = max(1.0, min(canvas.size) / 250)
    for i, face in enumerate(result.faces):
        draw.rectangle(face.box, outline=(0, 220, 0), width=3 if i == 0 else 1)
        for x, y in face.points:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 40, 40))
        draw.text((face.box[0] + 2, face.box[1] + 2), f"{face.score:.2f}", fill=(0, 220, 0))
    return canvas


def save_plot(image: Image.Image, result: FaceResult, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_faces(image, result).save(path)
    return path
