"""The `ray job submit` sequence of docs/ray-jobs.md (linked from the README), run as written against a local
head node: train, evaluate, tracking, and a wrong path that fails in the driver."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, VENV_BIN

pytestmark = pytest.mark.slow

# What the test adds to the guide's jobs: a short run of the small pipeline's model.
SHORT_TRAIN = "train.max_steps=6 train.micro_batch=4 train.checkpoint_every=1000 model.tiny.text_layers=1"
SHORT_EVAL = "evaluate.generation.max_new_tokens=8 evaluate.batch_size=16"


GUIDE = REPO / "docs" / "ray-jobs.md"


def test_the_readme_links_the_guide():
    assert "(docs/ray-jobs.md)" in (REPO / "README.md").read_text()


def guide_block() -> str:
    """The guide's code block that starts a head node and submits the jobs."""
    text = GUIDE.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    (block,) = [b for b in blocks if "ray get-auth-token --generate" in b and "ray job submit" in b]
    return block


def test_the_guide_ray_job_submit_sequence(small_pipeline, tmp_path):
    block = guide_block()
    paths = {"$PWD/data/manifests": small_pipeline["manifests"], "$PWD/data/landmarks": small_pipeline["landmarks"],
             "$PWD/runs/ray": tmp_path / "runs", "$PWD/models/emola": tmp_path / "model",
             "$PWD/reports": tmp_path / "reports", "$PWD/mlflow.db": tmp_path / "mlflow.db"}
    for placeholder in paths:
        assert placeholder in block, placeholder
    script = block
    for placeholder, path in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        script = script.replace(placeholder, str(path))
    script = script.replace("python -m jobs.train ", f"python -m jobs.train {SHORT_TRAIN} ")
    script = script.replace("python -m jobs.evaluate ", f"python -m jobs.evaluate {SHORT_EVAL} ")
    lines = script.strip().splitlines()
    assert lines[-1] == "ray stop"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(HOME=str(tmp_path / "home"), PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", PYTHONUNBUFFERED="1",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")   # the head node stays on loopback
    (tmp_path / "home").mkdir()
    bash = ["bash", "-euo", "pipefail", "-c"]
    try:
        run = subprocess.run([*bash, "\n".join(lines[:-1])], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=1500)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
        assert (tmp_path / "home/.ray/auth_token").is_file()
        assert run.stdout.count("succeeded") >= 2 and "step 6/6" in run.stdout
        assert json.loads((tmp_path / "model/training.json").read_text())["steps"] == 6
        assert set(json.loads((tmp_path / "reports/metrics.json").read_text())) == {"emotion", "au", "readout"}
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        for experiment in ("emola-train", "emola-eval"):
            found = client.get_experiment_by_name(experiment)
            assert found and client.search_runs([found.experiment_id]), experiment

        # A wrong manifest path: refused in the driver, in seconds, naming the path; no worker starts.
        submit = next(line for line in lines if line.startswith("ray job submit")).rstrip(" \\")
        started = time.perf_counter()
        assert lines[0] == "export RAY_AUTH_MODE=token"
        wrong = subprocess.run(
            [*bash, f"{lines[0]}\n{submit} --runtime-env-json '{{\"env_vars\": {{\"MLFLOW_TRACKING_URI\": "
                    f"\"sqlite:///{tmp_path / 'mlflow.db'}\"}}}}' -- python -m jobs.train "
                    f"data.manifests=/nowhere/manifests landmarks.cache={small_pipeline['landmarks']} "
                    f"train.storage_path={tmp_path / 'runs'} train.output={tmp_path / 'model2'}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        elapsed = time.perf_counter() - started
        output = wrong.stdout + wrong.stderr
        assert wrong.returncode != 0 and "failed" in output
        assert "training manifest /nowhere/manifests/train.jsonl not found" in output, output[-3000:]
        assert "RayTrainWorker" not in output and "Restarting" not in output
        assert elapsed < 60, f"{elapsed:.0f} s"
    finally:
        subprocess.run([*bash, lines[-1]], cwd=REPO, env=env, capture_output=True, timeout=120)
