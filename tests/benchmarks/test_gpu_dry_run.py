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
    assert result["dry_run"] and result["card"]["name"] == "cpu" and result["written_by"] == "benchmarks/gpu.py"
    assert set(result["versions"]) >= {"torch", "transformers", "triton", "deepspeed"} and result["commit"]
    # The gate ran on every engine before its timings: each path against the float32 reference.
    gate = result["gate"]
    assert gate["passed"] and gate["requests"] == 64
    assert {path["path"].split()[0] for path in gate["paths"]} == {"varlen", "fp8", "packed", "slot"}
    assert len(gate["paths"]) == 4 * 6 and all(path["passed"] for path in gate["paths"])
    assert inference["hf_generate_unmerged_ms_per_token"] > 0 and inference["engine_unmerged_ms_per_token"] > 0
    engines = inference["engines"]
    assert list(engines) == ["varlen", "fp8", "packed", "slot"]
    for name, engine in engines.items():
        assert engine["ms_per_token_batch1"] > 0, name
        assert [row["concurrency"] for row in engine["concurrent"]] == [1, 2, 8]
        assert all(row["tokens_per_s"] > 0 and row["ttft_ms"]["p50"] > 0 for row in engine["concurrent"])
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
    for other in ("packed", "slot", "fp8"):   # where two answers part, each token is in the other's top 5
        assert inference[f"same_tokens_varlen_{other}"]["close_by_top5"] == 4
    training = result["training"]
    assert not training["failures"], training["failures"]
    ids = [row["id"] for row in training["variants"]]
    assert ids[:5] == ["recipe", "published", "sparse", "fused", "compiled_all"] and "ds_zero2" in ids
    assert "mixed_packed" in ids and training["variants"][0]["engine"] == "deepspeed"
    assert all(row["useful_tflop_per_step"] > 0 and 0 <= row["mfu"] < 1 for row in training["variants"])
    assert all(row["s_per_step"] > 0 and row["tokens_per_s"] > 0 for row in training["variants"])
    # The same model and batches: every variant starts from the same loss (packing and the levers change speed only).
    losses = {row["id"]: row["loss"] for row in training["variants"] if row["samples"] == "emotion"}
    assert max(losses.values()) - min(losses.values()) < 0.05, losses
    assert "engine, batch 1" in run.stdout and "wrote" in run.stdout and "tok/s @8" in run.stdout
    assert "pass  varlen eager, 64 requests" in run.stdout and "FAIL" not in run.stdout
    assert "varlen, not ovl" in run.stdout and "slot, not ovl" not in run.stdout   # the first engine only


def test_a_path_made_wrong_fails_the_gate_and_no_timings_are_written(tmp_path, monkeypatch):
    """Decode rows 2% off when a step is four rows wide: the run exits 1 and its file holds the gate only."""
    import runpy

    from emola.engine import packed

    honest = packed.decode_attention_reference

    def off_at_four_rows(q, *args):
        out = honest(q, *args)
        return out * 1.02 if q.shape[0] == 4 else out

    monkeypatch.setattr(packed, "decode_attention_reference", off_at_four_rows)
    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--dry-run", "--gate-only", "--engines", "varlen,slot",
                                      "--out", str(out)])
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "benchmarks/gpu.py"), run_name="__main__")
    assert exit_.value.code == 1
    result = json.loads(out.read_text())
    assert "inference" not in result and "training" not in result
    assert not result["gate"]["passed"] and "varlen" in result["gate"]["error"]
    failed = [path for path in result["gate"]["paths"] if not path["passed"]]
    assert failed and all(path["path"].startswith("varlen") for path in failed)
    assert result["gate"]["paths"][0]["passed"]   # one request alone: one row wide, untouched


def test_the_summary_keeps_gated_runs_and_says_why_it_skips_the_others(tmp_path):
    """Built by code from the raw runs: a run whose gate passed (here a dry run, let in for the test), one whose
    gate failed and a hand-made file."""
    runs = tmp_path / "runs"
    runs.mkdir()
    dry = subprocess.run([sys.executable, "benchmarks/gpu.py", "--dry-run", "--part", "inference", "--engines",
                          "varlen", "--no-baseline", "--out", str(runs / "a.json")], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]
    failed = json.loads((runs / "a.json").read_text())
    failed.pop("inference")
    failed["gate"]["passed"] = False
    (runs / "b.json").write_text(json.dumps(failed))
    (runs / "c.json").write_text(json.dumps({"device": "NVIDIA H200", "inference": {}}))
    run = subprocess.run([sys.executable, "benchmarks/gpu_summary.py", "--runs", str(runs), "--out", str(tmp_path),
                          "--include-dry-runs"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["file"] for r in summary["runs"]] == ["a.json"]
    assert {s["file"]: s["reason"] for s in summary["skipped"]} == {
        "b.json": "its correctness gate did not pass", "c.json": "not written by benchmarks/gpu.py"}
    engine = summary["latest"]["engines"][0]
    assert engine["engine"] == "varlen" and engine["ms_per_token_batch1"] > 0
    assert set(engine["tokens_per_s_steady"]) == {"1", "2", "8"} and engine["ttft_ms_p50"]["1"] > 0
    assert engine["gate_max_logprob_diff"] < 1e-3
    assert "| varlen |" in (tmp_path / "summary.md").read_text()


def test_useful_flops_count_lora_causal_attention_and_the_head_on_answer_tokens_only(monkeypatch):
    """The MFU numerator at the emola-7b shape, term by term (the docstring of ``useful_flops``)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu

    s = {"llava": __import__("emola.model.builder", fromlist=["x"]).llava_1_5_7b_config()}
    text = s["llava"].text_config
    h, layers, vocab, inner = text.hidden_size, text.num_hidden_layers, text.vocab_size, text.intermediate_size
    flops = lambda lengths, answers=0, r=0: gpu.useful_flops(s, lengths, answers, r)  # noqa: E731
    one_image = flops([0])
    assert flops([697], answers=81) - flops([697], answers=80) == 4 * vocab * h        # the head: answers only
    per_token = 4 * layers * (4 * h * h + 3 * h * inner)                               # frozen linears, no weight grads
    attention = lambda n: layers * 6 * n * (n + 1) * h  # noqa: E731 - causal: n(n+1)/2 pairs, x2 backward
    assert flops([697]) - one_image == 697 * per_token + attention(697)
    lora = layers * 6 * 128 * (4 * (h + h) + 2 * (h + inner) + (inner + h))            # q,k,v,o; gate, up; down
    assert flops([697], r=128) - flops([697]) == 697 * lora
    assert 0.35e12 < one_image < 0.4e12   # CLIP-L/14-336 to its 23rd layer over 576 patches, the projector
