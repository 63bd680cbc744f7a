"""The kernels' start-up checks: how errors are measured, where Triton runs, and what the engine does when a
check fails (the checks themselves run on a GPU, and in the interpreter: tests/engine/test_attention.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from emola.engine import InferenceEngine, KernelCheckFailed
from emola.engine.checks import KernelProblem, relative_error, tolerance, triton_runs_on
from tests.conftest import build_tiny


def test_relative_error_is_against_the_references_largest_value_and_nan_is_never_within_tolerance():
    want = torch.tensor([1.0, -4.0, 0.5])
    assert relative_error(want + torch.tensor([0.0, 0.04, 0.0]), want) == pytest.approx(0.01)
    assert relative_error(torch.tensor([1.0, float("nan"), 0.5]), want) == float("inf")
    assert tolerance(torch.float32) < tolerance(torch.float16) < tolerance(torch.bfloat16) <= 1e-2


def test_triton_runs_on_cuda_and_on_the_cpu_only_under_its_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert triton_runs_on(torch.device("cuda")) and not triton_runs_on(torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny(tiny_params, tiny_corpus):
    model, processor, _ = build_tiny(tiny_params, tiny_corpus)
    return model.eval(), processor


def _engine(tiny, tiny_params, **changes) -> InferenceEngine:
    model, processor = tiny
    cfg = tiny_params.inference.model_copy(update={"device": "cpu", **changes})
    return InferenceEngine(copy.deepcopy(model), cfg, eos_token_id=processor.tokenizer.eos_token_id,
                           pad_token_id=processor.tokenizer.pad_token_id, processor=processor)


def test_a_failed_check_stops_the_engine_with_the_reason_unless_a_fallback_is_allowed(tiny, tiny_params):
    problem = KernelProblem("the Triton decode kernel disagrees with the reference at 3 split(s)", wrong=True)
    strict = _engine(tiny, tiny_params)
    assert tiny_params.inference.kernel_fallback is False   # the default: fail loudly
    with pytest.raises(KernelCheckFailed, match="at 3 split.*kernel_fallback: true.*decode rows attend with sdpa"):
        strict._give_up(problem, "decode rows attend with sdpa")
    assert strict.fallback is None
    lenient = _engine(tiny, tiny_params, kernel_fallback=True)
    lenient._give_up(problem, "decode rows attend with sdpa")
    lenient._give_up(KernelProblem("the Triton RoPE kernel failed"), "RoPE and cache writes in PyTorch")
    assert lenient.fallback == ("the Triton decode kernel disagrees with the reference at 3 split(s); decode rows "
                                "attend with sdpa; the Triton RoPE kernel failed; RoPE and cache writes in PyTorch")


def test_forced_tokens_are_fed_whatever_the_model_prefers_and_are_checked(tiny, tiny_params):
    engine = _engine(tiny, tiny_params)
    processor = tiny[1]
    from tests.engine.test_engine import _greedy, _media

    images, priors = _media(1)
    request = engine.requests(["What emotions are conveyed by this face?"], images, priors, _greedy(5))[0]
    free = engine.generate([request])[0].token_ids
    forced = [7, 8, 9, 10, 11]
    assert forced != free
    request.forced_ids, request.stop_at_eos = forced, False
    assert engine.generate([request])[0].token_ids == forced
    request.forced_ids = [7, processor.tokenizer.vocab_size + 10**6]
    with pytest.raises(ValueError, match="forced_ids"):
        engine.generate([request])
