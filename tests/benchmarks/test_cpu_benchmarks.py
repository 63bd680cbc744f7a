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
