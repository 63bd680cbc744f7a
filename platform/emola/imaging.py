"""Safe image decoding shared by every stage: size caps, truncation, modes, EXIF rotation."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError


class ImageProblem(ValueError):
    """An image that cannot be used; the message says why in a few words.

    ``code`` classifies it: ``missing``, ``empty``, ``not_image``, ``corrupt`` or ``too_large``.
    """

    def __init__(self, message: str, code: str = "corrupt"):
        super().__init__(message)
        self.code = code

    @property
    def status(self) -> str:
        """The result status every stage reports for it: ``too_large`` or ``unreadable``."""
        return "too_large" if self.code == "too_large" else "unreadable"


def decode_base64(text: str) -> bytes:
    """Strict base64 (standard alphabet, padding optional, whitespace ignored); ``ValueError`` otherwise."""
    cleaned = re.sub(r"\s+", "", text)
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except binascii.Error as err:
        raise ValueError(f"not valid base64: {err}") from None


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of the bytes: the content key of an image across stages."""
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes into an RGB image, upright per its EXIF orientation.

    Raises :class:`ImageProblem` for empty, non-image, truncated or over-large inputs.
    The pixel count is checked from the header, before any pixel is decoded, so a
    decompression bomb costs nothing.
    """
    if not data:
        raise ImageProblem("empty file", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageProblem(f"{width}x{height} exceeds the cap of {max_pixels} pixels", "too_large")
            image.load()
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem("not a readable image", "not_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageProblem(f"decompression bomb: {err}", "too_large") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageProblem(f"corrupt or truncated image: {err}") from None
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        # Alpha is composited on white (not black) so transparent margins stay neutral.
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            image = canvas
        else:
            image = image.convert("RGB")
    return image


def read_image_file(path: Path, max_pixels: int) -> tuple[Image.Image, str]:
    """Read and decode an image file; returns the image and the SHA-256 of its bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageProblem("file not found", "missing") from None
    except IsADirectoryError:
        raise ImageProblem("is a directory", "missing") from None
    except OSError as err:
        raise ImageProblem(f"cannot read: {err.strerror or err}", "missing") from None
    return decode_image(data, max_pixels), sha256_bytes(data)
