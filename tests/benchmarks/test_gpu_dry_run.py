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
    assert inference["hf_generate_unmerged_ms_per_token"] > 0 and inference["engine_unmerged_ms_per_token"] > 0
    engines = inference["engines"]
    assert list(engines) == ["varlen", "fp8", "packed", "slot"]
    for name, engine in engines.items():
        assert engine["ms_per_token_batch1"] > 0, name
        assert [row["concurrency"] for row in engine["concurrent"]] == [2, 8]
        assert all(row["tokens_per_s"] > 0 for row in engine["concurrent"])
        assert engine["evaluate"]["answers"] == 24
        if name == "varlen":   # the first engine: the same measurements with steps read one at a time
            other = engine["without_overlap"]
            assert other["ms_per_token_batch1"] > 0 and other["evaluate"]["answers"] == 24
            assert [row["concurrency"] for row in other["concurrent"]] == [8]
            assert other["concurrent"][0]["tokens_per_s"] > 0
        else:
            assert "without_overlap" not in engine, name
        assert engine["host_syncs"] == {}   # counted on CUDA only
        assert set(engine["profile"]) >= {"decode_ms", "prefill_ms", "rope_store_ms"} | ({"mixed_ms"} if engine["packed"]
                                                                                         else set())
        assert engine["profile"]["rope_store_ms"][str(1)]["torch"] > 0   # CPU: PyTorch's path only
    assert [engines[name]["packed"] for name in engines] == [True, True, True, False]
    assert engines["fp8"]["config"]["kv_cache_dtype"] == "float8_e4m3fn"
    attention = inference["row_attention"]
    for lengths in ("equal", "spread"):
        assert attention[lengths]["sdpa_padded_ms_per_step"] > 0 and attention[lengths]["kernel_fp8_ms_per_step"] > 0
        assert 0 < attention[lengths]["fp8_error"] < 0.3   # rounded, not broken
    mixed = engines["packed"]["profile"]["mixed_ms"]
    assert set(mixed) == {"decode_rows", "prompt", "both", "apart"}
    # The engines answer alike (float32 on CPU: token for token).
    for other in ("packed", "slot"):   # (fp8 rounds the cache: compared on the GPU, not asserted)
        assert inference[f"same_tokens_varlen_{other}"]["identical_answers"] == 4
    training = result["training"]
    assert not training["failures"], training["failures"]
    ids = [row["id"] for row in training["variants"]]
    assert ids[:4] == ["published", "sparse", "fused", "compiled_all"] and "ds_zero2" in ids and "mixed_packed" in ids
    assert all(row["s_per_step"] > 0 and row["tokens_per_s"] > 0 for row in training["variants"])
    # The same model and batches: every variant starts from the same loss (packing and the levers change speed only).
    losses = {row["id"]: row["loss"] for row in training["variants"] if row["samples"] == "emotion"}
    assert max(losses.values()) - min(losses.values()) < 0.05, losses
    assert "engine, batch 1" in run.stdout and "wrote" in run.stdout and "tok/s @8" in run.stdout
    assert "varlen, not ovl" in run.stdout and "slot, not ovl" not in run.stdout   # the first engine only
