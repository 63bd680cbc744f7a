"""The ``python_function`` model of EmoLA (what :mod:`emola.mlflow_model` logs): an Analyzer per
loaded model, ``predict`` over a DataFrame of images.

Input: a DataFrame with an ``image`` column (bytes, base64, a data URL, or a path readable
where the model runs) and optional ``task`` (``emotion`` | ``au``, default ``emotion``) and
``question`` columns. Output: one row per input row, the Analyzer's table
(``AnalysisResult.to_row``): a row that is not an image, or shows no face, comes back with its
``status`` and ``reason`` and never fails the batch. Generation settings are predict params
(the published sampling by default; ``temperature=0`` is greedy). Every row of one task is
generated in one continuous batch of the inference engine.
"""

from __future__ import annotations

import re
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


def image_of(value) -> bytes | Path:
    """The image a cell holds: bytes as they are; a data URL or base64 decoded; else a path that exists."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise RowProblem("bad_input", "no image (give bytes, base64, a data URL or a path)")
    text = value.strip()
    if match := _DATA_URL.match(text):
        text = text[match.end():]
    elif len(text) < 4096:
        try:
            if Path(text).is_file():
                return Path(text)
        except OSError:
            pass
    try:
        return decode_base64(text)
    except ValueError:
        pass
    if len(text) < 4096 and ("/" in text or "." in text):
        raise RowProblem("missing", f"no such image file: {text}")
    raise RowProblem("bad_input", "image is neither base64, a data URL nor a readable file")


def _cell(frame: pd.DataFrame, column: str, i: int):
    if column not in frame.columns:
        return None
    value = frame[column].iloc[i]
    return None if value is None or (isinstance(value, float) and value != value) else value


def predict_frame(analyzer, frame: pd.DataFrame, generation=None) -> pd.DataFrame:
    """The Analyzer's table for ``frame`` (see the module docstring), one row per input row, in order."""
    if "image" not in frame.columns:
        raise ValueError(f"the input needs an 'image' column; it has {list(frame.columns)}")
    if generation is not None:
        analyzer = _with_generation(analyzer, generation)
    rows: list[dict | None] = [None] * len(frame)
    by_task: dict[str, list[tuple[int, bytes | Path, str]]] = {}
    for i in range(len(frame)):
        task = _cell(frame, "task", i) or "emotion"
        question = _cell(frame, "question", i)
        try:
            if task not in EVAL_QUESTIONS:
                raise RowProblem("bad_input", f"task {task!r} is not one of {sorted(EVAL_QUESTIONS)}")
            if question is not None and not isinstance(question, str):
                raise RowProblem("bad_input", "question must be text")
            image = image_of(_cell(frame, "image", i))
        except RowProblem as err:
            rows[i] = {**dict.fromkeys(OUTPUT_COLUMNS), "task": task if isinstance(task, str) else str(task),
                       "status": err.status, "reason": f"row {i}: {err}"}
            continue
        by_task.setdefault(task, []).append((i, image, question or EVAL_QUESTIONS[task]))
    for task, items in by_task.items():
        results = analyzer.analyze_many([image for _, image, _ in items], task, [q for _, _, q in items])
        for (i, _, _), result in zip(items, results):
            rows[i] = result.to_row()
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
        return predict_frame(self.analyzer, model_input, generation)

