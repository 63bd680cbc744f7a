"""EmoLA as an MLflow model: a ``python_function`` flavor around the Analyzer.

A trained (or imported) checkpoint is logged with :func:`log_emola_model` as an MLflow model
whose artifact is the checkpoint folder itself, so one logged model serves every consumer:

- ``mlflow.pyfunc.load_model("models:/emola@champion").predict(df)`` and
  ``mlflow models serve -m models:/emola@champion`` run :class:`EmolaPyfunc`, which loads the
  checkpoint into an :class:`~emola.analyzer.Analyzer` (the inference engine every other
  caller uses) and answers a batch per task;
- the platform's own resolver (:func:`emola.model.reference.resolve_checkpoint`) finds the
  checkpoint inside the logged model (:func:`checkpoint_in_model`).

Input: a DataFrame with an ``image`` column (bytes, base64, a data URL, or a path readable
where the model runs) and optional ``task`` (``emotion`` | ``au``, default ``emotion``) and
``question`` columns. Output: one row per input row, the Analyzer's table (``AnalysisResult.to_row``):
a row that is not an image, or shows no face, comes back with its ``status`` and ``reason``
and never fails the batch. Generation settings are predict params (the published sampling
by default; ``temperature=0`` is greedy).
"""

from __future__ import annotations

import base64
import binascii
import re
from importlib import metadata
from pathlib import Path

import pandas as pd

from emola.data.labels import EVAL_QUESTIONS

CHECKPOINT_ARTIFACT = "checkpoint"      # the artifact key of the checkpoint folder in the logged model
MODEL_ARTIFACT_PATH = "model"           # where a run logs its model (``runs:/<run id>/model``)
_ENTRY = Path(__file__).with_name("pyfunc_entry.py")   # models-from-code: defines the model object
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w-]+=[^;,]*)*;base64,", re.IGNORECASE)

#: Output columns, as ``AnalysisResult.to_row`` writes them, and their MLflow types.
OUTPUT_COLUMNS = {"image": "string", "task": "string", "status": "string", "emotion": "string", "aus": "string",
                  "face_x0": "double", "face_y0": "double", "face_x1": "double", "face_y1": "double",
                  "description": "string", "reason": "string", "total_ms": "double"}


def signature():
    """The model signature: the input and output tables above and the generation params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from emola.engine import PUBLISHED_GENERATION as g

    inputs = Schema([ColSpec("string", "image"), ColSpec("string", "task", required=False),
                     ColSpec("string", "question", required=False)])
    outputs = Schema([ColSpec(kind, name, required=name in ("task", "status")) for name, kind in OUTPUT_COLUMNS.items()])
    params = ParamSchema([ParamSpec("temperature", "double", g.temperature), ParamSpec("top_p", "double", g.top_p),
                          ParamSpec("max_new_tokens", "long", g.max_new_tokens), ParamSpec("seed", "long", g.seed)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _requirements() -> list[str]:
    """What the model needs installed: the ``emola`` package (the platform's image) and its dependencies."""
    try:
        needs = metadata.requires("emola") or []
    except metadata.PackageNotFoundError:
        needs = []
    return [r for r in needs if "extra ==" not in r]


def log_emola_model(checkpoint: Path | str, example_image: Path | str | None = None) -> str:
    """Log ``checkpoint`` as an MLflow model named ``model`` in the active run; return its model URI.

    ``example_image`` (a face) becomes the input example. The model is not loaded here (a 7B
    checkpoint would not fit the driver); the tests load and serve what this logs.
    """
    import mlflow
    from mlflow.models import Model

    example = None
    if example_image is not None and Path(example_image).is_file():
        example = pd.DataFrame({"image": [base64.b64encode(Path(example_image).read_bytes()).decode()],
                                "task": ["emotion"]})
    # What mlflow.pyfunc.log_model does, less its check that loads the model to run the example.
    info = Model.log(artifact_path=None, name=MODEL_ARTIFACT_PATH, flavor=_PyfuncFlavor, python_model=str(_ENTRY),
                     artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)}, signature=signature(), input_example=example,
                     pip_requirements=_requirements(), validate_serving_input=False, flavor_name="pyfunc.ModelFromCode")
    return info.model_uri


class _PyfuncFlavor:
    """``mlflow.pyfunc`` as ``Model.log``'s flavor (a documented extension point: an object with
    ``save_model``), taking the ``validate_serving_input`` switch that ``pyfunc.save_model`` rejects."""

    @staticmethod
    def save_model(validate_serving_input: bool = True, **kwargs):
        import mlflow.pyfunc

        return mlflow.pyfunc.save_model(**kwargs)


def checkpoint_in_model(folder: Path) -> Path | None:
    """The checkpoint folder inside a downloaded MLflow model (``None`` if ``folder`` is not one)."""
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        return None
    flavor = (yaml.safe_load(mlmodel.read_text()).get("flavors") or {}).get("python_function") or {}
    entry = (flavor.get("artifacts") or {}).get(CHECKPOINT_ARTIFACT)
    return folder / entry["path"] if entry else None


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
        cleaned = re.sub(r"\s+", "", text)
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
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
                raise RowProblem("bad_input", f"row {i}: task {task!r} is not one of {sorted(EVAL_QUESTIONS)}")
            if question is not None and not isinstance(question, str):
                raise RowProblem("bad_input", f"row {i}: question must be text")
            image = image_of(_cell(frame, "image", i))
        except RowProblem as err:
            reason = str(err) if str(err).startswith("row ") else f"row {i}: {err}"
            rows[i] = {**dict.fromkeys(OUTPUT_COLUMNS), "task": task if isinstance(task, str) else str(task),
                       "status": err.status, "reason": reason}
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


try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; this keeps the module importable without it
    PythonModel = object


class EmolaPyfunc(PythonModel):
    """The ``python_function`` model: the checkpoint artifact in an Analyzer; ``predict`` per the module docstring."""

    def load_context(self, context) -> None:
        from emola.analyzer import Analyzer

        self.analyzer = Analyzer.from_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from emola.config.schema import GenerationConfig
        from emola.engine import PUBLISHED_GENERATION

        params = params or {}
        generation = PUBLISHED_GENERATION.model_copy(update={k: params[k] for k in
                                                             ("temperature", "top_p", "max_new_tokens", "seed")
                                                             if params.get(k) is not None})
        generation = GenerationConfig.model_validate(generation.model_dump())
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return predict_frame(self.analyzer, model_input, generation)

