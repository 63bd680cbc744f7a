"""`benchmarks/gpu.py --dry-run`: the GPU benchmark's code, on a shrunken model, on CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_gpu_benchmark_runs_on_a_shrunken_model(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, "benchmarks/gpu.py", "--dry-run", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    inference = result["inference"]
    assert result["dry_run"] and result["device"] == "cpu"
    assert inference["ms_per_token_batch1"] > 0 and inference["hf_generate_unmerged_ms_per_token"] > 0
    assert [row["concurrency"] for row in inference["concurrent"]] == [2, 8]
    assert all(row["tokens_per_s"] > 0 for row in inference["concurrent"])
    assert [row["concurrency"] for row in inference["concurrent_eager_prefill"]] == [2]
    assert inference["evaluate"]["answers"] == 24
    assert set(inference["profile"]) >= {"decode_ms", "prefill_ms", "prefill_eager_ms"}
    training = result["training"]
    assert not training["failures"], training["failures"]
    ids = [row["id"] for row in training["variants"]]
    assert ids[:4] == ["published", "sparse", "fused", "compiled_all"] and "ds_zero2" in ids and "mixed_packed" in ids
    assert all(row["s_per_step"] > 0 and row["tokens_per_s"] > 0 for row in training["variants"])
    # The same model and batches: every variant starts from the same loss (packing and the levers change speed only).
    losses = {row["id"]: row["loss"] for row in training["variants"] if row["samples"] == "emotion"}
    assert max(losses.values()) - min(losses.values()) < 0.05, losses
    assert "engine, batch 1" in run.stdout and "wrote" in run.stdout
