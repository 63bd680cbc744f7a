"""A job's driver checks (emola.preflight): inputs it cannot read, outputs and tracking that would be lost."""

from __future__ import annotations

import json
import time

import pytest

from emola import preflight
from emola.data.manifest import read_manifest

SUBMITTED = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {}})


def test_a_submitted_job_is_recognized_by_its_runtime_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert preflight.submitted_working_dir() is None
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", SUBMITTED)
    assert preflight.submitted_working_dir() == tmp_path


def test_outputs_and_tracking_must_outlive_a_submitted_job(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    preflight.require_output("models/emola", "train.output")   # a local run writes where it stands
    preflight.require_tracking()
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", SUBMITTED)
    with pytest.raises(preflight.JobInputError, match=r"train\.output=models/emola would be written into Ray's "
                                                      r"temporary copy.*e\.g\. train\.output=\$PWD/models/emola"):
        preflight.require_output("models/emola", "train.output")
    preflight.require_output(tmp_path / "out", "train.output")
    preflight.require_output("s3://bucket/runs", "train.storage_path")
    with pytest.raises(preflight.JobInputError, match="MLFLOW_TRACKING_URI"):
        preflight.require_tracking()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    preflight.require_tracking()
    with pytest.raises(preflight.JobInputError, match=r"training manifest data/manifests/train\.jsonl not found .*"
                                                      r"pass absolute paths .* data\.manifests=\$PWD/data/manifests"):
        preflight.require_file("data/manifests/train.jsonl", "data.manifests", "training manifest")


def test_the_train_job_refuses_a_missing_manifest_before_starting_ray(small_pipeline, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "jobs.train", f"data.manifests={tmp_path / 'nowhere'}",
                          f"landmarks.cache={small_pipeline['landmarks']}", f"train.storage_path={tmp_path / 'runs'}",
                          f"train.output={tmp_path / 'model'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and time.perf_counter() - started < 20
    assert f"training manifest {tmp_path / 'nowhere' / 'train.jsonl'} not found" in run.stderr
    assert "Ray" not in run.stdout + run.stderr.split("train: error:")[0]   # no Ray instance was started


def test_missing_images_are_named_before_training(small_pipeline, tmp_path):
    import shutil

    manifests = tmp_path / "manifests"
    shutil.copytree(small_pipeline["manifests"], manifests)
    rows = list(read_manifest(manifests / "train.jsonl"))
    moved = [json.loads(line) for line in (manifests / "train.jsonl").read_text().splitlines()]
    for row in moved[:2]:
        row["image"] = "images/train/missing.jpg"
    (manifests / "train.jsonl").write_text("\n".join(json.dumps(r) for r in moved) + "\n")
    with pytest.raises(preflight.JobInputError, match=r"2 image file\(s\) not found, e\.g\. .*missing\.jpg"):
        preflight.require_images(read_manifest(manifests / "train.jsonl"), manifests / "train.jsonl")
    preflight.require_images(rows, manifests / "train.jsonl")
