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


def _registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("registry-race")
    return uri, MlflowClient(tracking_uri=uri)


def _logged(tmp_path, name: str, content: str) -> tuple[str, object]:
    """A run that logged a checkpoint folder (``emola_config.json`` with ``content``) as its model."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "emola_config.json").write_text(content)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="model")
    return run.info.run_id, folder


class _PausedClient(MlflowClient):
    """A real client whose first alias move waits until ``go`` is set (a promotion caught between its check and
    its write)."""

    def __init__(self, uri, reached, go):
        super().__init__(tracking_uri=uri)
        self.reached, self.go, self.paused = reached, go, False

    def set_registered_model_alias(self, name, alias, version):
        if not self.paused:
            self.paused = True
            self.reached.set()
            assert self.go.wait(30)
        return super().set_registered_model_alias(name, alias, version)


def test_two_promotions_interleaved_leave_the_better_model_champion(tmp_path, monkeypatch):
    """The worse model checks the champion, the better one is promoted meanwhile, then the worse one's write lands:
    the better model must still end as champion (the old read-compare-set left the worse one)."""
    import threading

    uri, client = _registry(tmp_path, monkeypatch)
    base, base_dir = _logged(tmp_path, "base", '{"v": 0}')
    assert register_and_maybe_promote(client, "race", base, 10.0, "T", {}, checkpoint=base_dir)["champion"]
    worse, worse_dir = _logged(tmp_path, "worse", '{"v": 1}')
    better, better_dir = _logged(tmp_path, "better", '{"v": 2}')
    reached, go = threading.Event(), threading.Event()
    results = {}
    slow = threading.Thread(target=lambda: results.update(worse=register_and_maybe_promote(
        _PausedClient(uri, reached, go), "race", worse, 12.0, "T", {}, checkpoint=worse_dir)))
    slow.start()
    assert reached.wait(60)            # the worse one decided to promote and is about to write
    results["better"] = register_and_maybe_promote(client, "race", better, 14.0, "T", {}, checkpoint=better_dir)
    go.set()                           # now its write lands, after the better one's
    slow.join(60)
    champion = client.get_model_version_by_alias("race", "champion")
    assert int(champion.version) == results["better"]["version"] and champion.tags["S_rege_total"] == "14.000000"
    assert results["better"]["champion"] and not results["worse"]["champion"]
    assert "beats it" in results["worse"]["reason"], results["worse"]
    # A loser that reads the better champion first leaves the alias alone and says so.
    loser, loser_dir = _logged(tmp_path, "loser", '{"v": 3}')
    out = register_and_maybe_promote(client, "race", loser, 13.0, "T", {}, checkpoint=loser_dir)
    assert not out["champion"] and "left alone" in out["reason"]
    assert client.get_model_version_by_alias("race", "champion").version == champion.version


def test_registration_is_idempotent_by_content_and_loading_checks_the_files(tmp_path, monkeypatch):
    from emola.model.reference import CheckpointMismatch, checkpoint_sha256, pin_reference, resolve_checkpoint

    uri, client = _registry(tmp_path, monkeypatch)
    run, folder = _logged(tmp_path, "model", '{"v": 1}')
    first = register_and_maybe_promote(client, "same", run, 10.0, "T", {}, checkpoint=folder)
    again = register_and_maybe_promote(client, "same", run, 10.0, "T", {}, checkpoint=folder)
    assert again["version"] == first["version"] and again["already_registered"] and again["champion"]
    assert len(client.search_model_versions("name = 'same'")) == 1
    version = client.get_model_version("same", first["version"])
    assert version.tags["checkpoint_sha256"] == checkpoint_sha256(folder) == first["checkpoint_sha256"]
    # Loading checks the files against the version's record: a replaced artifact is refused.
    assert resolve_checkpoint("models:/same@champion").checkpoint_sha256 == first["checkpoint_sha256"]
    client.set_model_version_tag("same", first["version"], "checkpoint_sha256", "0" * 64)
    try:
        resolve_checkpoint("models:/same/1")
        raise AssertionError("a version whose files differ from its record loaded")
    except CheckpointMismatch as err:
        assert "not those it was registered with" in str(err)
    # A deployment pins the alias to the version it points to now.
    assert pin_reference("models:/same@champion") == f"models:/same/{first['version']}"
    assert pin_reference("models/emola") == "models/emola"
