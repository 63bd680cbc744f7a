"""`benchmarks/gpu_ray_train.py --dry-run` on the trimmed Ray wheel of `scripts/device_ray.sh`: what the GPU machine
runs (the training job's Ray Train step, a worker killed after the first checkpoint, the resume), on the CPU, with
the Ray that travels there (built here for this machine's Python)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_ray_train_resumes_after_a_kill_on_the_trimmed_ray_wheel(tmp_path):
    carry, site = tmp_path / "carry", tmp_path / "site"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    build = subprocess.run(["bash", "scripts/device_ray.sh", python, str(carry)], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = {p.name.split("-")[0] for p in (carry / "whl").glob("*.whl")}
    assert {"ray", "click", "msgpack", "protobuf", "jsonschema"} <= wheels
    assert sum(p.stat().st_size for p in carry.rglob("*") if p.is_file()) < 45 * 2**20   # fits one call's carry
    install = subprocess.run(["bash", str(carry / "install.sh"), str(site)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    ray = site / "ray"
    assert not (ray / "jars").exists() and not (ray / "rllib").exists() and (ray / "train").is_dir()
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "platform"), str(REPO)])}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, "benchmarks/gpu_ray_train.py", "--dry-run", "--steps", "12",
                          "--work", str(tmp_path / "work"), "--out", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["worker_killed"] and result["resumed_from_step"] and result["resumed_from_step"][0] >= 5
    assert result["finished"] and result["final_step"] == result["steps_planned"] == 12
    check = subprocess.run([sys.executable, "-c", "import ray; print(ray.__file__)"], env=env, capture_output=True,
                           text=True, cwd=tmp_path)
    assert check.stdout.startswith(str(site))   # the trimmed Ray ran, not the environment's
