"""On a GPU: the Triton kernels at full size against their references at every split count, the start-up checks
at the emola-7b shape, a kernel made wrong on purpose, and an engine that refuses to start on it."""

from __future__ import annotations

import pytest
import torch

from tests.gpu import models

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


def test_every_kernel_passes_its_start_up_check_at_the_emola_7b_shape():
    shape = {"device": "cuda", "dtype": torch.bfloat16, "llava": models.config(layers=32)}
    rows = models.gpu_gate.kernel_checks(shape, 2048, print)
    assert len(rows) == 6 and all(row["passed"] for row in rows), rows


@pytest.mark.parametrize("cache", [torch.bfloat16, torch.float8_e4m3fn])
def test_the_decode_kernel_at_full_size_matches_the_reference_at_every_split_count(cache):
    """64 rows of 32 heads over a 2,048-position cache, lengths spread from 1 to 2,048, in the autotuner's tile."""
    from emola.engine.checks import relative_error, tolerance
    from emola.engine.decode_kernel import check_splits, decode_attention, decode_attention_reference

    generator = torch.Generator(device="cpu").manual_seed(0)
    rows, heads, d, context = 64, 32, 128, 2048
    q = torch.randn(rows, heads, d, generator=generator).to(CUDA, torch.bfloat16)
    k = torch.randn(rows, heads, context, d, generator=generator).to(CUDA, cache)
    v = torch.randn(rows, heads, context, d, generator=generator).to(CUDA, cache)
    lengths = torch.randint(1, context + 1, (rows,), generator=generator, dtype=torch.int32)
    lengths[:3] = torch.tensor([1, 128, context], dtype=torch.int32)
    lengths = lengths.to(CUDA)
    want = decode_attention_reference(q, k, v, lengths, d ** -0.5)
    errors = {splits: relative_error(decode_attention(q, k, v, lengths, d ** -0.5, splits=splits), want)
              for splits in [None, *check_splits(context)]}
    print(errors)
    assert max(errors.values()) <= tolerance(torch.bfloat16), errors


def test_the_check_fails_a_decode_kernel_that_is_off_at_one_split_count(monkeypatch):
    from emola.engine import decode_kernel

    honest = decode_kernel.decode_attention

    def off_at_five(*args, splits=None, **kwargs):
        out = honest(*args, splits=splits, **kwargs)
        return out * 1.02 if splits == 5 else out

    monkeypatch.setattr(decode_kernel, "decode_attention", off_at_five)
    problem = decode_kernel.decode_kernel_problem(CUDA, torch.bfloat16, 32, 32, 128, context=2048)
    assert problem is not None and problem.wrong and "at 5 split(s)" in str(problem)


def test_an_engine_whose_kernel_fails_its_check_does_not_start_unless_a_fallback_is_allowed(monkeypatch):
    from emola.engine import InferenceEngine, KernelCheckFailed
    from emola.engine import engine as engine_module
    from emola.engine.checks import KernelProblem
    from tests.gpu.test_engine_gate import inference

    monkeypatch.setattr(engine_module, "decode_kernel_problem",
                        lambda *args, **kwargs: KernelProblem("the Triton decode kernel disagrees (test)", wrong=True))
    model = models.build(layers=1)
    with pytest.raises(KernelCheckFailed, match="kernel_fallback: true"):
        InferenceEngine(model, inference(), eos_token_id=models.EOS, pad_token_id=models.PAD)
    lenient = InferenceEngine(model, inference(kernel_fallback=True), eos_token_id=models.EOS,
                              pad_token_id=models.PAD)
    assert "disagrees (test)" in lenient.fallback and lenient.decoder.rows == "padded"


def test_a_shape_graph_replays_what_the_function_computes_for_each_new_input():
    from emola.engine.graphs import ShapeGraphs

    weight = torch.randn(64, 64, device=CUDA)
    graphs = ShapeGraphs(lambda x: torch.tanh(x @ weight), torch.cuda.graph_pool_handle())
    for seed in range(4):
        x = torch.randn(8, 64, device=CUDA, generator=torch.Generator(device=CUDA).manual_seed(seed))
        torch.testing.assert_close(graphs(x).clone(), torch.tanh(x @ weight))
    assert len(graphs) == 1
