"""The evaluation job on the small pipeline: reports, DVC plot files, MLflow run, registry."""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from emola.config import load_config
from emola.evaluate.job import MODEL, PRIOR_OFF, run_evaluation, score, score_variants
from tests.conftest import REPO, copy_as_task_part

pytestmark = pytest.mark.slow


def _evaluation_params(small_pipeline, tmp_path, *, register_as: str, max_new_tokens: int):
    """Params for the small pipeline, reports under ``tmp_path``, short generations."""
    return load_config(REPO / "params.yaml", {
        "data.manifests": str(small_pipeline["manifests"]), "landmarks.cache": str(small_pipeline["landmarks"]),
        "evaluate.reports": str(tmp_path / "reports"), "evaluate.generation.max_new_tokens": max_new_tokens,
        "evaluate.batch_size": 8, "evaluate.register_as": register_as})


def test_evaluation_reports_tracks_and_registers(small_pipeline, tiny_checkpoint, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    checkpoint = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, checkpoint)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("emola-train")
    with mlflow.start_run() as train_run:  # stands in for the training run that produced the model
        for step, loss in enumerate([3.0, 2.0, 1.5], 1):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_artifacts(str(checkpoint), artifact_path="model")
    (checkpoint / "training.json").write_text(json.dumps({"mlflow_run_id": train_run.info.run_id, "steps": 3}))

    cfg = _evaluation_params(small_pipeline, tmp_path, register_as="emola-e2e", max_new_tokens=12)
    summary = run_evaluation(cfg, checkpoint=checkpoint, repo_root=tmp_path, log=print)
    assert list(summary["phases"]) == ["generate", "score", "report", "track"]
    assert sum(summary["phases"].values()) <= summary["seconds"] + 0.5

    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert set(metrics) == {"emotion", "au"}
    for task in metrics.values():
        assert set(task) >= {"S_re", "S_ge", "S_rege"}
        assert task["S_rege"] == pytest.approx(task["S_re"] + task["S_ge"], abs=1e-2)
    baselines = json.loads((tmp_path / "reports/baselines.json").read_text())
    assert set(baselines["prior_off"]) == {"emotion", "au"}  # the prior-token ablation beside the model
    lines = (tmp_path / "reports/predictions.jsonl").read_text().splitlines()
    assert len(lines) == sum(m["n"] for m in metrics.values())
    assert {"prediction", "reference", "label"} <= set(json.loads(lines[0]))
    confusion = (tmp_path / "reports/plots/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == metrics["emotion"]["n"] + 1
    assert (tmp_path / "reports/plots/per_au_f1.csv").read_text().startswith("au,f1")
    assert (tmp_path / "reports/plots/train_loss.csv").read_text().splitlines()[1:] == ["1,3.00000", "2,2.00000", "3,1.50000"]

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(summary["eval_run_id"])
    assert run.data.tags["training_run_id"] == train_run.info.run_id
    assert run.data.metrics["emotion.S_rege"] == pytest.approx(metrics["emotion"]["S_rege"])
    artifacts = {a.path for a in client.list_artifacts(summary["eval_run_id"], "plots")}
    assert {"plots/confusion_matrix.png", "plots/per_au_f1.png", "plots/train_loss.png"} <= artifacts
    assert summary["registry"]["version"] == 1 and summary["registry"]["champion"]
    assert int(client.get_model_version_by_alias("emola-e2e", "champion").version) == 1


def test_one_model_per_task_is_scored_together_and_registered_per_part(small_pipeline, tiny_checkpoint, tmp_path,
                                                                        monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("emola-train")
    model = tmp_path / "model"
    runs = {}
    for task, losses in (("emotion", [2.0, 1.0]), ("au", [4.0, 3.0, 2.5])):
        copy_as_task_part(tiny_checkpoint, model / task, task)
        if task == "au":   # this part has a readout head: its probabilities are scored beside REGE
            _add_readout_head(model / task)
        with mlflow.start_run() as run:
            for step, loss in enumerate(losses, 1):
                mlflow.log_metric("loss", loss, step=step)
            mlflow.log_artifacts(str(model / task), artifact_path="model")
        runs[task] = run.info.run_id
        (model / task / "training.json").write_text(json.dumps({"mlflow_run_id": run.info.run_id, "tasks": [task]}))

    cfg = _evaluation_params(small_pipeline, tmp_path, register_as="emola-split", max_new_tokens=8)
    summary = run_evaluation(cfg, checkpoint=model, repo_root=tmp_path, log=print)

    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert set(metrics) == {"emotion", "au", "readout"}
    assert set(metrics["readout"]) == {"au_macro_f1"} and 0 <= metrics["readout"]["au_macro_f1"] <= 100
    records = [json.loads(line) for line in (tmp_path / "reports/predictions.jsonl").read_text().splitlines()]
    assert len(records) == metrics["emotion"]["n"] + metrics["au"]["n"]
    assert {r["task"] for r in records} == {"emotion", "au"}
    assert all(("readout" in r) == (r["task"] == "au") for r in records)
    details = json.loads((tmp_path / "reports/details.json").read_text())
    assert details["readout"]["au"]["n"] == metrics["au"]["n"] and details["readout"]["au"]["per_au"]
    baselines = json.loads((tmp_path / "reports/baselines.json").read_text())
    assert set(baselines["prior_off"]) == {"emotion", "au"}
    loss_lines = (tmp_path / "reports/plots/train_loss.csv").read_text().splitlines()
    assert loss_lines[0] == "step,loss,model" and "1,2.00000,emotion" in loss_lines and "3,2.50000,au" in loss_lines

    client = MlflowClient(tracking_uri=uri)
    tags = client.get_run(summary["eval_run_id"]).data.tags
    assert tags["training_run_id.emotion"] == runs["emotion"] and tags["training_run_id.au"] == runs["au"]
    for task in ("emotion", "au"):
        entry = summary["registry"][task]
        assert entry["name"] == f"emola-split-{task}" and entry["champion"]
        version = client.get_model_version_by_alias(f"emola-split-{task}", "champion")
        assert version.run_id == runs[task]
        assert float(version.tags["S_rege_total"]) == pytest.approx(metrics[task]["S_rege"], abs=1e-3)


def _add_readout_head(part):
    import torch

    from emola.model.checkpoint import load_checkpoint, save_checkpoint
    from emola.model.readout import ReadoutHead

    model, processor, config = load_checkpoint(part)
    torch.manual_seed(0)
    model.readout = ReadoutHead(model.base_llava.config.text_config.hidden_size)
    save_checkpoint(model, processor, config, part)


def test_scoring_by_variant_and_task_equals_scoring_each_variant_whole():
    """One Ray task per (variant, task) gives each variant what scoring its records together gives, the extras
    (per class, per AU, rouge-score) for the evaluated model only."""
    emotions = ["happiness", "sadness", "neutral", "anger"]
    texts = ["The person looks happy, with a broad smile and raised cheeks.",
             "The brows are drawn together and lowered; the lips press into a thin line. It reads as anger.",
             "A neutral face: the mouth rests closed and the eyes are open at rest.",
             "The inner brows rise and the lip corners are pulled down, which suggests sadness."]
    aus = ["1, 4, 15", "6, 12", "4, 7, 23", "1, 2, 26"]

    def records(shift: int) -> list[dict]:
        out = []
        for i in range(12):
            out.append({"task": "emotion", "prediction": texts[(i + shift) % 4], "reference": texts[i % 4],
                        "label": emotions[i % 4]})
            out.append({"task": "au", "prediction": f"AU{aus[(i + shift) % 4].split(', ')[0]} is active. "
                        + texts[(i + shift) % 4], "reference": texts[i % 4], "label": aus[i % 4]})
        return out

    predictions = {"untrained": records(3), MODEL: records(0), PRIOR_OFF: records(1), "emotion_only":
                   [r for r in records(2) if r["task"] == "emotion"]}
    scored = score_variants(predictions, "FABA")
    assert list(scored) == list(predictions)
    for name, records_ in predictions.items():
        whole = score(records_, "FABA", extras=name == MODEL)
        assert list(scored[name]) == list(whole)
        assert {t: r.to_dict() for t, r in scored[name].items()} == {t: r.to_dict() for t, r in whole.items()}
        assert all(bool(r.extras) == (name == MODEL) for r in scored[name].values())
    assert list(scored["emotion_only"]) == ["emotion"]
