"""The public inference API: ``Analyzer.from_checkpoint(path).analyze(image, task=...)``.

An Analyzer loads a checkpoint into the inference engine (:mod:`emola.engine`) and the
landmark backend its prior vectors need, then turns images into typed results: the
description, the emotion class and AUs parsed from it with the REGE parsers, the face box
and landmarks, and timings.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel

from emola.config.schema import GenerationConfig, InferenceConfig
from emola.labels import EVAL_QUESTIONS
from emola.engine import DEFAULT_INFERENCE, PUBLISHED_GENERATION, InferenceEngine
from emola.landmarks.backend import FaceResult, LandmarkBackend
from emola.landmarks.registry import build_backend, inference_backend_name
from emola.imaging import ImageProblem, decode_image, read_image_file
from emola.metrics.rege_parsers import aus_of, emotion_of
from emola.model.configuration import EmolaModelConfig

ImageInput = str | Path | bytes | Image.Image | np.ndarray
Task = Literal["emotion", "au"]


class FaceInfo(BaseModel):
    box: list[float]
    score: float
    landmarks: list[list[float]]


class AnalysisResult(BaseModel):
    """One image's analysis; ``status`` other than ``ok`` means no description (see ``reason``)."""

    image: str | None = None
    task: Task
    question: str
    status: str
    reason: str = ""
    description: str | None = None
    emotion: str | None = None
    aus: list[int] | None = None
    face: FaceInfo | None = None
    landmark_backend: str | None = None
    timings_ms: dict[str, float] = {}

    def to_row(self) -> dict:
        """One flat table row (for CSV), like py-feat's detector output."""
        box = self.face.box if self.face else [None] * 4
        return {"image": self.image, "task": self.task, "status": self.status, "emotion": self.emotion,
                "aus": " ".join(f"AU{a}" for a in self.aus) if self.aus is not None else None,
                "face_x0": box[0], "face_y0": box[1], "face_x1": box[2], "face_y1": box[3],
                "description": self.description, "reason": self.reason,
                "total_ms": self.timings_ms.get("total")}


class Analyzer:
    def __init__(self, engine: InferenceEngine, config: EmolaModelConfig, backend: LandmarkBackend | None,
                 generation: GenerationConfig = PUBLISHED_GENERATION, max_pixels: int = 40_000_000):
        if config.prior == "landmarks" and (backend is None or backend.prior_dim != config.prior_dim):
            got = None if backend is None else backend.prior_dim
            raise ValueError(f"the checkpoint needs {config.prior_dim}-d prior vectors; the backend gives {got}")
        self.engine, self.processor, self.config = engine, engine.processor, config
        self.backend, self.generation, self.max_pixels = backend, generation, max_pixels

    @classmethod
    def from_checkpoint(cls, path: Path | str, *, backend: LandmarkBackend | None = None,
                        generation: GenerationConfig | None = None, landmarks_cfg=None,
                        inference: InferenceConfig = DEFAULT_INFERENCE) -> "Analyzer":
        """Load ``path`` into an engine; the landmark backend defaults to the one matching the checkpoint's priors."""
        engine = InferenceEngine.from_checkpoint(path, inference)
        config = EmolaModelConfig.load(path)
        if backend is None and (name := inference_backend_name(config.prior, config.landmark_backend,
                                                               config.prior_dim)):
            backend = build_backend(landmarks_cfg, name=name)
        return cls(engine, config, backend, generation or PUBLISHED_GENERATION)

    def _decode(self, image: ImageInput) -> Image.Image:
        if isinstance(image, (str, Path)):
            return read_image_file(Path(image), self.max_pixels)[0]
        if isinstance(image, bytes):
            return decode_image(image, self.max_pixels)
        if isinstance(image, np.ndarray):
            return Image.fromarray(image).convert("RGB")
        return image.convert("RGB")

    def analyze(self, image: ImageInput, task: Task = "emotion", question: str | None = None) -> AnalysisResult:
        return self.analyze_many([image], task, [question] if question else None)[0]

    def analyze_many(self, images: Sequence[ImageInput], task: Task = "emotion",
                     questions: Sequence[str] | None = None) -> list[AnalysisResult]:
        """Analyze a batch: images that decode and show a face are generated together."""
        if task not in EVAL_QUESTIONS:
            raise ValueError(f"unknown task {task!r} (emotion or au)")
        questions = list(questions) if questions else [EVAL_QUESTIONS[task]] * len(images)
        started = time.perf_counter()
        results: list[AnalysisResult] = []
        ready: list[tuple[int, Image.Image, FaceResult | None]] = []
        for i, (image, question) in enumerate(zip(images, questions)):
            name = str(image) if isinstance(image, (str, Path)) else None
            t0 = time.perf_counter()
            try:
                decoded = self._decode(image)
            except ImageProblem as err:
                results.append(AnalysisResult(image=name, task=task, question=question, reason=str(err),
                                              status=err.status))
                continue
            t1 = time.perf_counter()
            faces = self.backend.extract([np.asarray(decoded)])[0] if self.backend else None
            t2 = time.perf_counter()
            result = AnalysisResult(image=name, task=task, question=question, status="ok",
                                    landmark_backend=self.backend.key if self.backend else None,
                                    timings_ms={"decode": round(1e3 * (t1 - t0), 2), "landmarks": round(1e3 * (t2 - t1), 2)})
            if faces is not None:
                if faces.status != "ok":
                    result.status, result.reason = faces.status, faces.reason
                else:
                    face = faces.faces[0]
                    result.face = FaceInfo(box=list(face.box), score=face.score, landmarks=face.points.tolist())
            results.append(result)
            if result.status == "ok":
                ready.append((len(results) - 1, decoded, faces))
        if ready:
            t0 = time.perf_counter()
            texts = [c.text for c in self.engine.complete(
                [results[i].question for i, _, _ in ready],
                images=[im for _, im, _ in ready] if self.processor.use_image else None,
                priors=np.stack([f.prior for _, _, f in ready]) if self.processor.use_prior else None,
                generation=self.generation)]
            generate_ms = round(1e3 * (time.perf_counter() - t0) / len(ready), 2)
            for (i, _, _), text in zip(ready, texts):
                r = results[i]
                r.description = text
                if task == "emotion":
                    r.emotion = emotion_of(text)
                else:
                    r.aus = list(aus_of(text))
                r.timings_ms["generate"] = generate_ms
        total = round(1e3 * (time.perf_counter() - started) / max(len(images), 1), 2)
        for r in results:
            r.timings_ms["total"] = total
        return results
