"""The CPU benchmarks run on small inputs and write their results file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("name, args", [("synth", ["--train", "20", "--test", "10"]), ("evaluate", ["--n", "200"])])
def test_a_benchmark_prints_and_writes_its_results(name, args, tmp_path):
    out = tmp_path / f"{name}.json"
    run = subprocess.run([sys.executable, f"benchmarks/{name}.py", *args, "--out", str(out)], capture_output=True,
                         text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["benchmark"] == name and results["machine"]["cpus"] >= 1
    if name == "synth":
        assert results["images"] == 30 and results["validate_records"] > 0 and "speed-up" in run.stdout
    else:
        assert set(results) >= {"emotion", "au"} and results["au"]["ratio"] > 0 and "equal" in run.stdout


@pytest.mark.slow
def test_the_video_benchmarks_run_on_a_model_with_a_head(readout_checkpoint, tmp_path):
    """Per-frame analysis (benchmarks/video.py) and the video job in one process against Ray Data actors."""
    out = tmp_path / "video_batch.json"
    run = subprocess.run([sys.executable, "benchmarks/video_batch.py", "--clips", "2", "--actors", "2", "--size", "96",
                          "--seconds", "2", "--checkpoint", str(readout_checkpoint), "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"one_process", "ray_2_actors"} and runs["one_process"]["frames"] == 40
    assert all(r["same_tables"] and r["status"] == {"ok": 2} for r in runs.values()), runs
    out = tmp_path / "video.json"
    run = subprocess.run([sys.executable, "benchmarks/video.py", "--clips", "2", "--max-new-tokens", "4",
                          "--checkpoint", str(readout_checkpoint), "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["per_frame"]["frames_per_s"] > 0 and set(results["accuracy"]) == {"smoothing_1", "smoothing_3"}
