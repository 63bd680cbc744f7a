"""Checkpoint references: local folders and MLflow registry URIs resolve to the same checkpoint."""

from __future__ import annotations

import json

import pytest

from emola.model.reference import resolve_checkpoint


def test_local_folder_and_missing_checkpoint(tiny_checkpoint, tmp_path):
    resolved = resolve_checkpoint(str(tiny_checkpoint))
    assert resolved.path == tiny_checkpoint and resolved.registry_version is None
    with pytest.raises(FileNotFoundError, match="not an EmoLA checkpoint"):
        resolve_checkpoint(str(tmp_path))


def test_models_alias_and_version_uris_from_the_registry(tiny_checkpoint, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from emola.evaluate.registry import register_and_maybe_promote

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tiny_checkpoint / "training.json").write_text(json.dumps({"ray_run_name": "emola-tiny-x"}))
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("reference-test")
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(tiny_checkpoint), artifact_path="model")
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        register_and_maybe_promote(client, "emola", run.info.run_id, 10.0, "t", {})
    finally:
        (tiny_checkpoint / "training.json").unlink()
    champion = resolve_checkpoint("models:/emola@champion", tracking_uri=uri)
    assert (champion.registry_name, champion.registry_version) == ("emola", 1)
    assert (champion.path / "emola_config.json").read_text() == (tiny_checkpoint / "emola_config.json").read_text()
    assert champion.describe()["training_run"] == "emola-tiny-x"
    assert resolve_checkpoint("models:/emola/1", tracking_uri=uri).registry_version == 1


def test_model_parts_reads_one_checkpoint_or_one_per_task(tiny_checkpoint, tmp_path):
    import shutil

    from emola.model.reference import model_parts
    from tests.conftest import copy_as_task_part

    assert model_parts(tiny_checkpoint) == [tiny_checkpoint]
    split = tmp_path / "split"
    for task in ("emotion", "au"):
        copy_as_task_part(tiny_checkpoint, split / task, task)
    (split / "notes").mkdir()  # not a checkpoint: ignored
    assert model_parts(split) == [split / "au", split / "emotion"]

    with pytest.raises(FileNotFoundError, match="neither an EmoLA checkpoint"):
        model_parts(tmp_path / "missing")
    clash = tmp_path / "clash"
    shutil.copytree(tiny_checkpoint, clash / "a")
    shutil.copytree(tiny_checkpoint, clash / "b")
    with pytest.raises(ValueError, match="is in both a/ and b/"):
        model_parts(clash)


def test_serving_parts_of_a_mapping_a_parts_folder_and_a_single_reference(tiny_checkpoint, tmp_path):
    from emola.model.reference import serving_parts
    from tests.conftest import copy_as_task_part

    mapping = {"emotion": "models:/emola-emotion@champion", "au": "models:/emola-au@champion"}
    assert serving_parts(mapping) == mapping
    copy_as_task_part(tiny_checkpoint, tmp_path / "split/emotion", "emotion")
    copy_as_task_part(tiny_checkpoint, tmp_path / "split/au", "au")
    assert serving_parts(str(tmp_path / "split")) == {"au": str(tmp_path / "split/au"),
                                                       "emotion": str(tmp_path / "split/emotion")}
    for single in (str(tiny_checkpoint), "models:/emola@champion", str(tmp_path / "not-trained-yet")):
        assert serving_parts(single) == {"": single}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither an EmoLA checkpoint"):
        serving_parts(str(tmp_path / "empty"))
