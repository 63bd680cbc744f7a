"""The champion alias moves only to a version that beats it on the same test set."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from emola.evaluate.registry import register_and_maybe_promote


def test_champion_moves_only_on_a_better_score_on_the_same_test_set(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; monkeypatch restores it afterwards.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("registry-test")  # not an experiment another test left active elsewhere
    client = MlflowClient(tracking_uri=uri)
    with mlflow.start_run() as run:
        (tmp_path / "model").mkdir()
        (tmp_path / "model/emola_config.json").write_text("{}")
        mlflow.log_artifacts(str(tmp_path / "model"), artifact_path="model")
    steps = [(100.0, "A", True), (90.0, "A", False), (120.0, "A", True), (500.0, "B", False), (120.0, "A", False)]
    for score, test_set, promoted in steps:
        out = register_and_maybe_promote(client, "emola-test", run.info.run_id, score, test_set, {})
        assert out["champion"] is promoted, out
    champion = client.get_model_version_by_alias("emola-test", "champion")
    assert int(champion.version) == 3 and champion.tags["S_rege_total"] == "120.000000"
    assert "another test set" in register_and_maybe_promote(client, "emola-test", run.info.run_id, 1.0, "B", {})["reason"]
