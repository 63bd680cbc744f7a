"""Request inputs: images from uploads, base64 and data URLs, and chat messages, with 4xx errors.

Everything a client can get wrong raises :class:`RequestError` with the HTTP status and
a machine-readable code, so the ingress answers a JSON 4xx and never a 500 for bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from emola.imaging import ImageProblem, decode_base64, decode_image, sha256_bytes
from emola.video.decode import FPS_RANGE

#: ImageProblem codes -> HTTP status. A too-large image is 413 like a too-large body.
_IMAGE_STATUS = {"empty": 400, "not_image": 415, "corrupt": 422, "too_large": 413, "missing": 400}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$",
                       re.DOTALL)


class RequestError(Exception):
    """An error answered as JSON: ``status`` (a 4xx, or a 5xx the client may retry), ``code`` (short,
    stable), a message naming the problem, and optional response ``headers`` (``Retry-After``)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def to_json(self) -> dict:
        # OpenAI's error shape, so OpenAI clients surface the message.
        return {"error": {"message": self.message, "type": "invalid_request_error" if self.status != 401
                          else "authentication_error", "code": self.code}}


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray     # (H, W, 3) uint8 RGB
    sha256: str            # of the bytes received: the landmark cache key
    data: bytes = b""      # the encoded bytes received

    @property
    def wire(self) -> bytes | np.ndarray:
        """What the ingress sends the face and model replicas: the encoded bytes when they are smaller than
        the pixels (a FABA-Synth JPEG: 10 kB against 110 kB, which Ray would put in its object store rather
        than in the call), else the pixels. :func:`pixels_of` turns either into pixels."""
        return self.data if self.data and len(self.data) < self.pixels.nbytes else self.pixels


def pixels_of(image: bytes | np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels of :attr:`DecodedImage.wire` (bytes the ingress already decoded once and
    checked, so no size cap here)."""
    if isinstance(image, np.ndarray):
        return image
    return np.asarray(decode_image(image, max_pixels=2**62))


def decode_upload(data: bytes, max_pixels: int, what: str = "image") -> DecodedImage:
    """Decode uploaded bytes; ``what`` names the input in error messages."""
    try:
        image = decode_image(data, max_pixels)
    except ImageProblem as err:
        raise RequestError(_IMAGE_STATUS.get(err.code, 422), f"image_{err.code}", f"{what}: {err}") from None
    return DecodedImage(np.asarray(image), sha256_bytes(data), data)


def b64_bytes(text: str, what: str = "image") -> bytes:
    """Strict base64 (standard alphabet, padding optional; whitespace ignored)."""
    try:
        return decode_base64(text)
    except ValueError:
        raise RequestError(400, "bad_base64", f"{what}: not valid base64") from None


def image_url_bytes(url: str, *, allow_remote: bool, max_bytes: int, timeout_s: float) -> bytes:
    """Bytes of an OpenAI ``image_url``: a data URL, or (only when enabled) an http(s) URL."""
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if not match or not match["b64"]:
            raise RequestError(400, "bad_data_url", "image_url: expected data:image/...;base64,<data>")
        if match["mime"] and not match["mime"].startswith("image/"):
            raise RequestError(415, "not_image", f"image_url: media type {match['mime']} is not an image")
        return b64_bytes(match["data"], "image_url")
    if url.startswith(("http://", "https://")):
        if not allow_remote:
            raise RequestError(400, "remote_images_disabled",
                               "image_url: remote URLs are disabled on this server (serve.allow_remote_images); "
                               "send a data URL")
        return _fetch(url, max_bytes, timeout_s)
    raise RequestError(400, "bad_image_url", "image_url: must be a data: URL (or http(s) when enabled)")


def _fetch(url: str, max_bytes: int, timeout_s: float) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as response:
            if response.status_code != 200:
                raise RequestError(400, "remote_image_failed", f"image_url: {url} answered {response.status_code}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise RequestError(413, "remote_image_too_large", f"image_url: {url} exceeds {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as err:
        raise RequestError(400, "remote_image_failed", f"image_url: could not fetch {url}: {err}") from None


#: VideoProblem codes -> HTTP status, as for images.
VIDEO_STATUS = {"empty": 400, "missing": 400, "not_video": 415, "corrupt": 422, "too_large": 413, "cancelled": 499}


def video_error(code: str, message: str) -> RequestError:
    """The 4xx of a :class:`~emola.video.VideoProblem` (its ``code`` and message)."""
    return RequestError(VIDEO_STATUS.get(code, 422), f"video_{code}", f"video: {message}")


def video_options(fields, defaults: dict) -> dict:
    """``fps``, ``smoothing`` and ``describe`` of a video request (form fields or JSON), over ``defaults``.

    Strings from a form are parsed; each value is checked: ``fps`` a number in
    :data:`~emola.video.FPS_RANGE` (0.1 to 60)
    (or null/"all": every frame), ``smoothing`` an integer from 1 to 31, ``describe`` a boolean.
    """
    options = dict(defaults)
    if (fps := fields.get("fps")) is not None and fps != "":
        if fps in ("all", "null"):
            options["fps"] = None
        else:
            try:
                value = float(fps)
            except (TypeError, ValueError):
                value = float("nan")
            low, high = FPS_RANGE
            if isinstance(fps, bool) or not low <= value <= high:
                raise RequestError(400, "invalid_fps", f"fps: a number from {low:g} to {high:g}, or 'all'; "
                                                       f"got {str(fps)[:40]!r}")
            options["fps"] = value
    if (smoothing := fields.get("smoothing")) is not None and smoothing != "":
        try:
            value = int(smoothing) if not isinstance(smoothing, (bool, float)) else -1
        except (TypeError, ValueError):
            value = -1
        if not 1 <= value <= 31:
            raise RequestError(400, "invalid_smoothing", f"smoothing: an integer from 1 to 31; got {str(smoothing)[:40]!r}")
        options["smoothing"] = value
    if (describe := fields.get("describe")) is not None and describe != "":
        flags = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        value = describe if isinstance(describe, bool) else flags.get(str(describe).lower())
        if value is None:
            raise RequestError(400, "invalid_describe", f"describe: true or false; got {str(describe)[:40]!r}")
        options["describe"] = value
    return options


@dataclass(frozen=True)
class ChatTurn:
    question: str
    image_url: str


def last_user_turn(messages: list[dict]) -> ChatTurn:
    """The question and the image of the last user message (EmoLA answers one image per turn).

    ``content`` is a string or a list of ``{"type": "text"}`` and ``{"type": "image_url"}``
    parts. Earlier turns are accepted and not used: the published template is single-turn.
    """
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise RequestError(400, "no_user_message", "messages: no message with role 'user'")
    content = users[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise RequestError(400, "bad_content", "messages[-1].content: expected a string or a list of parts")
    texts, images = [], []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise RequestError(400, "bad_content", f"content[{i}].image_url.url: expected a string")
            images.append(url)
        else:
            raise RequestError(400, "bad_content", f"content[{i}]: expected a text or image_url part")
    if len(images) != 1:
        raise RequestError(400, "one_image_needed",
                           f"the last user message has {len(images)} images; EmoLA needs exactly one face image")
    question = " ".join(t.strip() for t in texts if t.strip())
    if not question:
        raise RequestError(400, "no_question", "the last user message has no text question")
    return ChatTurn(question, images[0])
