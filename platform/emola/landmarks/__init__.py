"""The landmarks stage: landmark backends (the facial prior expert's input), the landmark cache, the Ray Data job."""

from emola.landmarks.backend import Face, FaceResult, LandmarkBackend
from emola.landmarks.registry import build_backend

__all__ = ["Face", "FaceResult", "LandmarkBackend", "build_backend"]
