"""``python -m jobs.data`` with job-argument overrides."""

import json
import subprocess
import sys


def test_job_overrides_and_bad_params(repo_root, tmp_path):
    release, manifests = tmp_path / "release", tmp_path / "manifests"
    run = subprocess.run(
        [sys.executable, "-m", "jobs.data", "data.synth.train=14", "data.synth.test=7", "data.synth.image_size=64",
         "data.synth.workers=1", f"data.release={release}", f"data.manifests={manifests}"],
        cwd=repo_root, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((release / "synth.json").read_text())["images"] == {"train": 14, "test": 7}
    summary = json.loads((manifests / "summary.json").read_text())
    assert summary["images"] == 21 and summary["rejected"] == 0
    assert "rendered 21 images" in run.stdout

    bad = subprocess.run([sys.executable, "-m", "jobs.data", "data.synth.train=lots"], cwd=repo_root,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "data.synth.train: Input should be a valid integer" in bad.stderr
