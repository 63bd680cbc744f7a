"""Ray Train + DeepSpeed on CPU: a short run tracked in MLflow, a killed worker (ray job submit: tests/jobs)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors import safe_open

from tests.conftest import REPO, small_training_overrides

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["PYTHONUNBUFFERED"] = "1"
    # MLflow samples system metrics every 10 s by default and logs nothing for a run that ends sooner,
    # as a 12-step tiny run can; local Ray workers inherit this environment.
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    env.pop("RAY_ADDRESS", None)
    return env


def _mlflow_run(tmp_path: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.get_run(run_id)


def test_training_run_exports_a_checkpoint_and_tracks_it_in_mlflow(small_pipeline, tmp_path):
    overrides = small_training_overrides(small_pipeline, tmp_path, **{"train.task_weights": "{au: 2}",
                                                                        "train.readout_weight": 0.5})
    run = subprocess.run([sys.executable, "-m", "jobs.train", *overrides],
                         cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    terminal = run.stdout + run.stderr
    assert re.search(r"step 12/12 loss [\d.]+ lr .* samples/s .* tokens/s", terminal)
    # A quiet terminal: the job's own lines, the workers' progress relayed; no Ray, MLflow or DeepSpeed chatter.
    for noise in ("Reporting training result", "core_worker.cc", "Token authentication", "TrainController",
                  "RayTrainWorker", "INFO mlflow", "Setting accelerator to CPU", "SplitCoordinator"):
        assert noise not in terminal, noise
    others = [line for line in terminal.splitlines() if not line.startswith("step ")]
    assert len(others) <= 6, terminal   # the run, where its steps go, the end, the export and the summary

    from emola.model.checkpoint import load_checkpoint

    model, processor, config = load_checkpoint(tmp_path / "model")
    assert config.landmark_backend == "annotation@1-68"
    # The AU head is a training device: the export is the EmoLA model alone.
    saved = {k for f in (tmp_path / "model").rglob("*.safetensors") for k in safe_open(f, "pt").keys()}
    assert saved and not any(k.startswith("head.") or ".head." in k for k in saved)
    # The readout head is part of the model: trained with it and exported beside it.
    assert config.readout is not None and model.readout is not None and (tmp_path / "model/readout.safetensors").is_file()
    info = json.loads((tmp_path / "model/training.json").read_text())
    assert info["steps"] == 12

    client, mlrun = _mlflow_run(tmp_path, info["mlflow_run_id"])
    losses = [m.value for m in client.get_metric_history(mlrun.info.run_id, "loss")]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # the loss falls
    for metric in ("lr", "grad_norm", "samples_per_s", "tokens_per_s", "lm_loss", "aux_loss", "readout_loss"):
        assert len(client.get_metric_history(mlrun.info.run_id, metric)) == 12
    # tiny weighs AU-code tokens 5x: the weights reach the workers, so the loss exceeds its unweighted terms
    # whenever rank 0's batch holds an AU answer (aux_loss is NaN when it holds none).
    history = {m: [x.value for x in client.get_metric_history(mlrun.info.run_id, m)] for m in ("lm_loss", "aux_loss")}
    with_au = [(loss, lm, aux) for loss, lm, aux in zip(losses, history["lm_loss"], history["aux_loss"]) if aux == aux]
    assert with_au and all(loss > lm + aux + 1e-4 for loss, lm, aux in with_au)
    readout = [m.value for m in client.get_metric_history(mlrun.info.run_id, "readout_loss")]
    assert all(r == r and r > 0 for r in readout)
    params = mlrun.data.params
    tasks = [json.loads(line)["task"] for line in (small_pipeline["manifests"] / "train.jsonl").read_text().splitlines()]
    assert params["examples"] == str(tasks.count("emotion") + 2 * tasks.count("au"))  # train.task_weights {au: 2}
    assert params["train.zero_stage"] == "2" and params["profile"] == "tiny" and "git.commit" in params
    assert params["train.au_code_weight"] == "5.0"
    assert any(k.startswith("system/") for k in mlrun.data.metrics)  # system metrics
    # The model is logged as an MLflow model holding the checkpoint (emola.mlflow_model).
    from emola.model.reference import resolve_checkpoint, run_model_source

    import mlflow
    from mlflow.models import Model

    source, model_id = run_model_source(client, mlrun.info.run_id)
    assert model_id and source == f"models:/{model_id}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=client.get_logged_model(model_id).artifact_location,
                                                      tracking_uri=uri))
    assert Model.load(folder / "MLmodel").signature is not None
    logged = resolve_checkpoint(f"runs:/{mlrun.info.run_id}/model", tracking_uri=uri).path
    assert (logged / "emola_config.json").read_text() == (tmp_path / "model/emola_config.json").read_text()
    assert (tmp_path / "runs" / info["ray_run_name"] / "steps.log").read_text().count(" step ") == 12


def _train_worker_pids(job_pid: int) -> list[int]:
    """Ray Train worker processes of this job only (the job started its own local Ray)."""
    pids = []
    for proc in psutil.Process(job_pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                pids.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def _registered_checkpoints(runs: Path) -> list[str]:
    """Checkpoint folders that Ray Train has registered (and would resume from)."""
    names = []
    for snapshot in runs.glob("*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (json.JSONDecodeError, KeyError, OSError):
            continue  # being rewritten
        names += [r["checkpoint_dir_name"] for r in results]
    return names


def _weights(model: Path) -> dict[str, bytes]:
    """Every tensor of an exported model, as bytes (bit-for-bit comparisons)."""
    out = {}
    for path in sorted(model.rglob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for key in f.keys():
                out[f"{path.relative_to(model)}:{key}"] = f.get_tensor(key).numpy().tobytes()
    return out


@pytest.fixture(scope="module")
def uninterrupted(small_pipeline, tmp_path_factory) -> dict[str, bytes]:
    """The weights of a 24-step run that nothing interrupts."""
    out = tmp_path_factory.mktemp("uninterrupted")
    args = small_training_overrides(small_pipeline, out, **{"train.max_steps": 24})
    run = subprocess.run([sys.executable, "-m", "jobs.train", *args], cwd=REPO, env=_env(out), capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return _weights(out / "model")


def test_two_trainings_from_scratch_give_the_same_weights_bit_for_bit(small_pipeline, tmp_path, uninterrupted):
    """Two workers, DeepSpeed ZeRO-2, Ray Data's stream: the default pipeline's training is reproducible."""
    args = small_training_overrides(small_pipeline, tmp_path, **{"train.max_steps": 24})
    run = subprocess.run([sys.executable, "-m", "jobs.train", *args], cwd=REPO, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    again = _weights(tmp_path / "model")
    assert again.keys() == uninterrupted.keys() and len(again) > 10
    differing = [key for key in again if again[key] != uninterrupted[key]]
    assert not differing, differing[:5]


def test_a_killed_worker_resumes_from_its_last_checkpoint(small_pipeline, tmp_path, uninterrupted):
    # Steps take ~0.1 s here and Ray forwards worker logs with a lag, so the kill is triggered by Ray
    # Train's own record of a registered checkpoint (not a log line, nor the folder, which exists before
    # Ray has registered it), and the run is long enough to still be training then.
    args = small_training_overrides(small_pipeline, tmp_path, **{"train.max_steps": 24, "train.max_failures": 2})
    log = open(tmp_path / "train.log", "w")
    job = subprocess.Popen([sys.executable, "-m", "jobs.train", *args], cwd=REPO, env=_env(tmp_path),
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        killed = None
        while time.time() < deadline and job.poll() is None:
            if not killed and _registered_checkpoints(tmp_path / "runs"):
                pids = _train_worker_pids(job.pid)
                assert pids, "no Ray Train worker process found"
                killed = pids[-1]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.1)
        assert job.wait(timeout=max(1, deadline - time.time())) == 0, (tmp_path / "train.log").read_text()[-4000:]
    finally:
        if job.poll() is None:
            job.kill()
    text = (tmp_path / "train.log").read_text()
    assert killed, "the run ended before a worker could be killed"
    resumed = re.findall(r"resumed from step (\d+)", text)
    assert resumed and int(resumed[0]) >= 4, text[-3000:]
    assert "step 24/24" in text
    info = json.loads((tmp_path / "model/training.json").read_text())
    assert info["steps"] == 24  # the planned number of optimizer steps
    # The resumed run skipped the micro batches it had trained on, with the optimizer's state restored: it ends
    # with the weights of a run never interrupted, bit for bit.
    resumed_weights = _weights(tmp_path / "model")
    differing = [key for key in resumed_weights if resumed_weights[key] != uninterrupted.get(key)]
    assert resumed_weights.keys() == uninterrupted.keys() and not differing, differing[:5]
