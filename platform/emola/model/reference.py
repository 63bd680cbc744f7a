"""Checkpoint references: a local folder or an MLflow URI, resolved to a local checkpoint folder.

Serving and evaluation accept either ``models/emola`` or ``models:/emola@champion``
(also ``models:/emola/3`` and ``runs:/<run id>/model``). MLflow URIs are downloaded
once into the MLflow artifact cache; what was resolved is reported in
:class:`ResolvedCheckpoint` so an endpoint can say which model version answers. A version
may hold an MLflow model (:mod:`emola.mlflow_model`: the checkpoint is its artifact) or,
when logged before MLflow models, the checkpoint folder itself: both resolve.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from emola.model.configuration import CONFIG_FILE

_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://")
_LOGGED_MODEL = re.compile(r"^models:/(?P<id>m-[0-9a-f]+)/?$")
_RUNS = re.compile(r"^runs:/(?P<run>[^/]+)/(?P<path>[^/].*?)/?$")
_REGISTRY = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    reference: str                  # what the user gave
    path: Path                      # local checkpoint folder
    registry_name: str | None = None
    registry_version: int | None = None
    training: dict = field(default_factory=dict)   # training.json of the checkpoint, when present
    checkpoint_sha256: str | None = None           # of a registered version's files, checked when loaded

    def describe(self) -> dict:
        """JSON-ready identity of the model: what ``/v1/models`` and responses report."""
        info = asdict(self)
        info["path"] = str(self.path)
        info["training_run"] = self.training.get("ray_run_name")
        info["mlflow_run_id"] = self.training.get("mlflow_run_id")
        del info["training"]
        return info


CHECKPOINT_ARTIFACT = "checkpoint"  # the artifact key of the checkpoint folder in a logged MLflow model
TRAINING_FILE = "training.json"   # written by the training driver beside an exported checkpoint
CHECKPOINT_SHA_TAG = "checkpoint_sha256"   # a registered version's tag: checkpoint_sha256 of the files evaluated


class CheckpointMismatch(ValueError):
    """A registered version whose files are not the ones that were evaluated and registered."""


def checkpoint_sha256(path: Path | str) -> str:
    """One SHA-256 over every file of the checkpoint folder ``path``: each file's path relative to it and its
    bytes' SHA-256, in path order (bytecode folders skipped). Equal files give equal digests wherever they lie."""
    import hashlib

    path = Path(path)
    total = hashlib.sha256()
    for file in sorted(f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts):
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        total.update(f"{file.relative_to(path).as_posix()}\0{digest.hexdigest()}\n".encode())
    return total.hexdigest()


def training_info(path: Path | str) -> dict:
    """The checkpoint's ``training.json`` (run names, steps, loss), or ``{}`` when it has none."""
    file = Path(path) / TRAINING_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def model_parts(path: Path | str) -> list[Path]:
    """The checkpoints of a trained model folder: the folder itself, or one per task.

    ``train.separate_models`` (the published layout: one model per task) exports
    ``train.output/<task>/``; a single model is exported to ``train.output`` itself.
    Raises ``FileNotFoundError`` when the folder holds neither, ``ValueError`` when two
    parts claim the same task.
    """
    from emola.model.configuration import EmolaModelConfig

    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return [path]
    parts = sorted(p for p in path.iterdir() if (p / CONFIG_FILE).is_file()) if path.is_dir() else []
    if not parts:
        raise FileNotFoundError(f"{path}: neither an EmoLA checkpoint nor a folder of per-task checkpoints "
                                f"({CONFIG_FILE} missing)")
    owner: dict[str, Path] = {}
    for part in parts:
        for task in EmolaModelConfig.load(part).tasks:
            if task in owner:
                raise ValueError(f"{path}: task {task!r} is in both {owner[task].name}/ and {part.name}/")
            owner[task] = part
    return parts


def serving_parts(checkpoint: str | Mapping[str, str]) -> dict[str, str]:
    """The models a deployment serves: part name -> checkpoint reference.

    A task mapping (``{emotion: models:/emola-emotion@champion, au: ...}``) is served as
    given; a local folder of per-task checkpoints (``train.separate_models``) gives one part
    per subfolder, named after it; anything else (one checkpoint folder, an MLflow URI, a
    path not there yet) is one part named ``""``.
    """
    if isinstance(checkpoint, Mapping):
        return {str(name): str(reference) for name, reference in checkpoint.items()}
    path = Path(checkpoint)
    if not is_mlflow_uri(checkpoint) and path.is_dir() and not (path / CONFIG_FILE).is_file():
        return {part.name: str(part) for part in model_parts(path)}
    return {"": checkpoint}


def checkpoint_in_model(folder: Path) -> Path | None:
    """The checkpoint folder inside a downloaded MLflow model (``None`` if ``folder`` is not one)."""
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        return None
    flavor = (yaml.safe_load(mlmodel.read_text()).get("flavors") or {}).get("python_function") or {}
    entry = (flavor.get("artifacts") or {}).get(CHECKPOINT_ARTIFACT)
    return folder / entry["path"] if entry else None


def run_model_source(client, run_id: str, artifact_path: str = "model") -> tuple[str, str | None]:
    """What to register for the model a run logged at ``artifact_path``: ``(source, model id)``.

    An MLflow model (``mlflow.pyfunc.log_model``, :mod:`emola.mlflow_model`) is registered
    by its ``models:/<model id>``, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve``
    load the version; a checkpoint logged as plain artifacts (before MLflow models) by its
    ``runs:/`` URI, which the platform's resolver still reads.
    """
    run = client.get_run(run_id)
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string=f"name = '{artifact_path}' AND source_run_id = '{run_id}'")
    if found:
        return f"models:/{found[-1].model_id}", found[-1].model_id
    return f"runs:/{run_id}/{artifact_path}", None


def pin_reference(reference: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` as the version the alias points to now (``models:/NAME/VERSION``); anything else as it
    is. A deployment pins once, so that every replica, started now or later, loads the same version."""
    match = _REGISTRY.match(reference)
    if not match or not match["alias"]:
        return reference
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    found = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(match["name"], match["alias"])
    return f"models:/{match['name']}/{found.version}"


def is_mlflow_uri(reference: str) -> bool:
    return reference.startswith(_MLFLOW_SCHEMES)


def resolve_checkpoint(reference: str, tracking_uri: str | None = None) -> ResolvedCheckpoint:
    """The local checkpoint folder of ``reference`` (downloading MLflow artifacts when needed).

    Raises ``FileNotFoundError`` naming the reference when it is not an EmoLA checkpoint, and
    :class:`CheckpointMismatch` when a registered version's files are not those it recorded
    (:data:`CHECKPOINT_SHA_TAG`): replaced or damaged since it was evaluated.
    """
    name = version = expected = None
    if is_mlflow_uri(reference):
        import mlflow
        from mlflow.tracking import MlflowClient

        uri = tracking_uri or mlflow.get_tracking_uri()
        artifact_uri = reference
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        if runs := _RUNS.match(reference):   # the MLflow model the run logged there, if it logged one
            artifact_uri = run_model_source(client, runs["run"], runs["path"])[0]
        if match := _REGISTRY.match(reference):
            name = match["name"]
            found = (client.get_model_version_by_alias(name, match["alias"]) if match["alias"]
                     else client.get_model_version(name, match["version"]))
            version, artifact_uri = int(found.version), found.source
            expected = (found.tags or {}).get(CHECKPOINT_SHA_TAG)
        if logged := _LOGGED_MODEL.match(artifact_uri):   # by its artifact location: in this tracking store
            artifact_uri = client.get_logged_model(logged["id"]).artifact_location
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, tracking_uri=uri))
        path = checkpoint_in_model(path) or path
    else:
        path = Path(reference)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{reference}: not an EmoLA checkpoint ({CONFIG_FILE} missing under {path}); "
                                "train one with `dvc repro train` or pass a checkpoint folder or models:/NAME@ALIAS")
    if expected is not None and (actual := checkpoint_sha256(path)) != expected:
        raise CheckpointMismatch(f"{reference}: version {version}'s files are not those it was registered with "
                                 f"(checkpoint_sha256 {actual[:12]}, recorded {expected[:12]}); refusing to load it")
    return ResolvedCheckpoint(reference, path, name, version, training_info(path), expected)
