"""On a GPU: every engine path against transformers' float32 forward, teacher-forced (the gate of
``benchmarks/gpu.py`` on a few-layer model of the ``emola-7b`` widths), and a CUDA-graph replay that reads a
stale buffer caught by it. Run: ``pytest -m gpu --noconftest tests/gpu`` (docs/performance.md)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu import models

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

#: The paths: the emola-7b setting (packed prompts, Triton decode rows) with CUDA graphs and eagerly, decode rows
#: through sdpa, the slot decoder (prompts padded and prefilled apart) with graphs and eagerly, the FP8 cache.
ENGINES = {"varlen": {}, "varlen eager": {"cuda_graphs": False}, "packed sdpa": {"decode_attention": "sdpa"},
           "slot": {"packed_prefill": False, "decode_attention": "sdpa"},
           "slot eager": {"packed_prefill": False, "decode_attention": "sdpa", "cuda_graphs": False},
           "fp8": {"kv_cache_dtype": "float8_e4m3fn"}}


def inference(**changes):
    from emola.config.schema import InferenceConfig

    base = dict(device="cuda", merge_lora=True, max_batch=64, max_context=2048, max_prefill_tokens=8192,
                length_bucket=128, cuda_graphs=True, overlap_steps=True, decode_attention="varlen",
                packed_prefill=True, kv_cache_dtype="auto", kernel_fallback=False, prefill_bucket=64)
    return InferenceConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def gate():
    model = models.build()
    s = models.shape(model.base_llava.config)
    return model, models.gpu_gate.Gate(model, s, models.make_prompt(s), print, requests=64)


def engine(model, **changes):
    from emola.engine import InferenceEngine

    built = InferenceEngine(model, inference(**changes), eos_token_id=models.EOS, pad_token_id=models.PAD)
    built.warm_up()
    return built


@pytest.mark.parametrize("name", list(ENGINES))
def test_each_engine_path_agrees_with_the_float32_reference(gate, name):
    model, checks = gate
    built = engine(model, **ENGINES[name])
    assert built.fallback is None
    rows = checks.check(built, name)   # raises GateFailed, every path's line printed
    assert len(rows) == 6 and all(row["passed"] for row in rows)
    assert min(row["agreement"] for row in rows) > 0.8   # near ties of random logits aside (decided ones fail above)


def test_a_cuda_graph_replay_that_reads_a_stale_buffer_fails_the_gate(gate, monkeypatch):
    from emola.engine import packed
    from emola.engine.graphs import ShapeGraphs

    class StaleGraphs(ShapeGraphs):
        """Replays a captured shape on the inputs it was captured with: the copy of new inputs is missing."""

        def __call__(self, *inputs, **static):
            key = (tuple((tuple(x.shape), x.dtype) for x in inputs), tuple(sorted(static.items())))
            captured = self._graphs.get(key)
            if captured is None:
                return super().__call__(*inputs, **static)
            captured.graph.replay()
            return captured.output

    monkeypatch.setattr(packed, "ShapeGraphs", StaleGraphs)
    model, checks = gate
    with pytest.raises(models.gpu_gate.GateFailed):
        checks.check(engine(model), "stale graphs")
