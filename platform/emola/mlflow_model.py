"""EmoLA as an MLflow model: what a run logs, and how it is registered and found again.

A trained (or imported) checkpoint is logged with :func:`log_emola_model` as an MLflow model
(``python_function`` flavor, models-from-code) whose artifact is the checkpoint folder itself,
so one logged model serves every consumer:

- ``mlflow.pyfunc.load_model("models:/emola@champion").predict(df)`` and
  ``mlflow models serve -m models:/emola@champion`` run :class:`emola.pyfunc.EmolaPyfunc`, which
  loads the checkpoint into an Analyzer (the inference engine every other caller uses);
- the platform's own resolver (:func:`emola.model.reference.resolve_checkpoint`) finds the
  checkpoint inside the logged model (:func:`~emola.model.reference.checkpoint_in_model`).

The signature (:func:`signature`) describes :mod:`emola.pyfunc`'s input and output tables
and its generation params.
"""

from __future__ import annotations

import base64
import json
from importlib import metadata
from pathlib import Path

import pandas as pd

from emola.model.reference import CHECKPOINT_ARTIFACT

MODEL_ARTIFACT_PATH = "model"           # where a run logs its model (``runs:/<run id>/model``)
_ENTRY = Path(__file__).with_name("mlflow_model_entry.py")   # models-from-code: defines the model object

#: Output columns, as ``AnalysisResult.to_row`` writes them, and their MLflow types.
OUTPUT_COLUMNS = {"image": "string", "task": "string", "status": "string", "emotion": "string", "aus": "string",
                  "face_x0": "double", "face_y0": "double", "face_x1": "double", "face_y1": "double",
                  "description": "string", "reason": "string", "total_ms": "double"}


def signature():
    """The model signature: the input and output tables above and the generation params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from emola.config.schema import PUBLISHED_GENERATION as g

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


def track_import(checkpoint: Path | str, repo_root: Path | str = ".") -> str:
    """Log an imported checkpoint as an MLflow run (experiment ``emola-import``; the checkpoint as the
    ``model`` MLflow model (this module), the provenance as params) and write its ``training.json``, so the evaluate
    stage treats it as it treats a trained model: scored, then registered (``emola-<task>`` for a
    folder of per-task parts). Returns the run id."""
    import mlflow

    from emola import tracking
    from emola.model.importing import PROVENANCE_FILE
    from emola.model.reference import TRAINING_FILE

    checkpoint = Path(checkpoint)
    provenance = json.loads((checkpoint / PROVENANCE_FILE).read_text())
    uri = tracking.configure(repo_root)
    mlflow.set_experiment("emola-import")
    with mlflow.start_run(run_name=f"import-{provenance['task']}", tags={"source": "emola-release",
                                                                           "tasks": provenance["task"]}) as run:
        mlflow.log_params({"source": provenance["source"], "base": provenance["base"], "task": provenance["task"],
                           **{f"sha256.{name}": digest for name, digest in provenance["files"].items()}})
        (checkpoint / TRAINING_FILE).write_text(json.dumps({
            "mlflow_run_id": run.info.run_id, "tracking_uri": uri, "ray_run_name": None, "steps": 0,
            "final_loss": None, "tasks": [provenance["task"]], "imported_from": provenance["source"]}, indent=2) + "\n")
        log_emola_model(checkpoint)
    return run.info.run_id
