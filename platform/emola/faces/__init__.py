"""Faces: landmark backends (the facial prior expert's input) and the landmark cache."""

from emola.faces.backend import Face, FaceResult, LandmarkBackend
from emola.faces.registry import build_backend

__all__ = ["Face", "FaceResult", "LandmarkBackend", "build_backend"]
