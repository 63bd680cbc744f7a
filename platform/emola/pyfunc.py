"""The ``python_function`` model of EmoLA (what :mod:`emola.mlflow_model` logs): an Analyzer per
loaded model, ``predict`` over a DataFrame of images.

Input: a DataFrame with an ``image`` column (bytes, base64 or a data URL) and optional
``task`` (``emotion`` | ``au``, default ``emotion``) and ``question`` columns. Output: one row
per input row, the Analyzer's table (``AnalysisResult.to_row``): a row that is not an image,
or shows no face, comes back with its ``status`` and ``reason`` and never fails the batch.
Generation settings are predict params (the published sampling by default; ``temperature=0``
is greedy). Every row of one task is generated in one continuous batch of the inference engine.

A served model takes its input from strangers (``mlflow models serve``), so a cell never
makes the server open a file it names: paths are taken only when the environment variable
``EMOLA_PYFUNC_IMAGE_ROOT`` names a folder, and then only files inside it (resolved, links
included). Every image is at most ``EMOLA_PYFUNC_MAX_IMAGE_BYTES`` bytes (20 MiB by default),
counted on what is read. MLflow calls ``predict`` from concurrent threads: one at a time uses
the engine. An unexpected failure answers every row of the batch with status ``error`` and an
incident id; the traceback goes to the server's log, never to the caller.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.pyfunc import PythonModel

from emola.imaging import decode_base64
from emola.labels import EVAL_QUESTIONS
from emola.mlflow_model import OUTPUT_COLUMNS
from emola.model.reference import CHECKPOINT_ARTIFACT

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w-]+=[^;,]*)*;base64,", re.IGNORECASE)


class RowProblem(ValueError):
    """An input row that cannot be analyzed: answered as a row with ``status`` and ``reason``."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


ROOT_ENV = "EMOLA_PYFUNC_IMAGE_ROOT"
MAX_BYTES_ENV = "EMOLA_PYFUNC_MAX_IMAGE_BYTES"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagePolicy:
    """Where a cell's image may come from: ``root``, the only folder paths may name (None: no paths at all), and
    ``max_bytes`` per image."""

    root: Path | None = None
    max_bytes: int = 20 * 2**20

    @classmethod
    def from_env(cls) -> "ImagePolicy":
        root = os.environ.get(ROOT_ENV) or None
        return cls(Path(root).resolve() if root else None, int(os.environ.get(MAX_BYTES_ENV) or cls.max_bytes))


def image_of(value, policy: ImagePolicy = ImagePolicy()) -> tuple[bytes, str | None]:
    """The image bytes a cell holds, and the path it named (if any): bytes as they are; a data URL or base64
    decoded; a path only inside ``policy.root``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _capped(bytes(value), policy), None
    if not isinstance(value, str) or not value.strip():
        raise RowProblem("bad_input", "no image (give bytes, base64 or a data URL)")
    text = value.strip()
    if match := _DATA_URL.match(text):
        text = text[match.end():]
    elif policy.root is not None and len(text) < 4096 and (path := _inside(text, policy.root)) is not None \
            and path.is_file():
        return _read(path, text, policy), text
    if len(text) > 4 * policy.max_bytes // 3 + 8:
        raise RowProblem("too_large", f"image over the limit of {policy.max_bytes} bytes")
    try:
        return _capped(decode_base64(text), policy), None
    except ValueError:
        pass
    if policy.root is not None and len(text) < 4096 and ("/" in text or "." in text):
        raise RowProblem("missing", f"no such image file under the image root: {text}")
    raise RowProblem("bad_input", "image is neither base64 nor a data URL" +
                     ("" if policy.root is None else ", nor a file under the image root"))


def _capped(data: bytes, policy: ImagePolicy) -> bytes:
    if len(data) > policy.max_bytes:
        raise RowProblem("too_large", f"image over the limit of {policy.max_bytes} bytes")
    return data


def _inside(text: str, root: Path) -> Path | None:
    """``text`` as a path resolved inside ``root`` (links followed), or None when it points outside."""
    try:
        path = (root / text).resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    return path if path.is_relative_to(root) else None


def _read(path: Path, text: str, policy: ImagePolicy) -> bytes:
    """At most ``policy.max_bytes`` of a file under the root (read, not trusted from its size)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(policy.max_bytes + 1)
    except OSError:
        raise RowProblem("missing", f"cannot read the image file under the image root: {text}") from None
    return _capped(data, policy)


def _cell(frame: pd.DataFrame, column: str, i: int):
    if column not in frame.columns:
        return None
    value = frame[column].iloc[i]
    return None if value is None or (isinstance(value, float) and value != value) else value


def predict_frame(analyzer, frame: pd.DataFrame, generation=None, policy: ImagePolicy = ImagePolicy()) -> pd.DataFrame:
    """The Analyzer's table for ``frame`` (see the module docstring), one row per input row, in order; ``policy``:
    where images may come from."""
    if "image" not in frame.columns:
        raise ValueError(f"the input needs an 'image' column; it has {list(frame.columns)}")
    if generation is not None:
        analyzer = _with_generation(analyzer, generation)
    rows: list[dict | None] = [None] * len(frame)
    by_task: dict[str, list[tuple[int, bytes, str]]] = {}
    names: dict[int, str] = {}
    for i in range(len(frame)):
        task = _cell(frame, "task", i) or "emotion"
        question = _cell(frame, "question", i)
        try:
            if task not in EVAL_QUESTIONS:
                raise RowProblem("bad_input", f"task {task!r} is not one of {sorted(EVAL_QUESTIONS)}")
            if question is not None and not isinstance(question, str):
                raise RowProblem("bad_input", "question must be text")
            image, name = image_of(_cell(frame, "image", i), policy)
        except RowProblem as err:
            rows[i] = {**dict.fromkeys(OUTPUT_COLUMNS), "task": task if isinstance(task, str) else str(task),
                       "status": err.status, "reason": f"row {i}: {err}"}
            continue
        if name is not None:
            names[i] = name
        by_task.setdefault(task, []).append((i, image, question or EVAL_QUESTIONS[task]))
    for task, items in by_task.items():
        results = analyzer.analyze_many([image for _, image, _ in items], task, [q for _, _, q in items])
        for (i, _, _), result in zip(items, results):
            rows[i] = {**result.to_row(), "image": names.get(i)}
    return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def _with_generation(analyzer, generation):
    """A view of ``analyzer`` that generates with ``generation`` (same engine, no reload)."""
    from emola.analyzer import Analyzer

    return Analyzer(analyzer.engine, analyzer.config, analyzer.backend, generation, analyzer.max_pixels)


class EmolaPyfunc(PythonModel):
    """The ``python_function`` model: the checkpoint artifact in an Analyzer; ``predict`` per the module docstring."""

    def load_context(self, context) -> None:
        from emola.analyzer import Analyzer

        self.analyzer = Analyzer.from_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])
        self.policy = ImagePolicy.from_env()
        self.lock = threading.Lock()   # MLflow's server calls predict from several threads; the engine is one

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from emola.config.schema import GenerationConfig
        from emola.config.schema import PUBLISHED_GENERATION

        params = params or {}
        generation = PUBLISHED_GENERATION.model_copy(update={k: params[k] for k in
                                                             ("temperature", "top_p", "max_new_tokens", "seed")
                                                             if params.get(k) is not None})
        generation = GenerationConfig.model_validate(generation.model_dump())
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        try:
            with self.lock:
                return predict_frame(self.analyzer, model_input, generation, getattr(self, "policy", ImagePolicy()))
        except Exception as err:  # noqa: BLE001 - a caller gets a status and an incident id, the log the traceback
            incident = uuid.uuid4().hex[:12]
            logger.error("predict failed (incident %s)", incident, exc_info=err)
            return pd.DataFrame([{**dict.fromkeys(OUTPUT_COLUMNS), "status": "error",
                                  "task": str(_cell(model_input, "task", i) or "emotion")[:20],
                                  "reason": f"row {i}: internal error (incident {incident})"}
                                 for i in range(len(model_input))], columns=list(OUTPUT_COLUMNS))
