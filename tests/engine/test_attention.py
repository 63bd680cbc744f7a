"""Packed variable-length attention: the reference's semantics, and the cache view the kernels read."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from emola.engine.attention import kernel_problem, reference_attention


def _naive(q, keys_per_sequence, values_per_sequence, counts, scale):
    """Each query of a sequence of n queries over m keys sees keys 0 .. m - n + j (end-aligned causal)."""
    out, start = [], 0
    for keys, values, n in zip(keys_per_sequence, values_per_sequence, counts):
        m = keys.shape[0]
        for j in range(n):
            seen = m - n + j + 1
            if seen <= 0:
                out.append(torch.zeros_like(q[start + j]))
                continue
            scores = torch.einsum("hd,khd->hk", q[start + j], keys[:seen]) * scale
            out.append(torch.einsum("hk,khd->hd", scores.softmax(-1), values[:seen]))
        start += n
    return torch.stack(out)


def test_reference_attention_is_end_aligned_causal_per_sequence():
    """One query over 6 keys, a prompt (4 over 4), an empty sequence, and a chunk (3 queries after a
    cached beginning: 7 keys), each sequence's keys from its own offset."""
    torch.manual_seed(0)
    heads, d, context = 2, 8, 10
    counts, used = [1, 4, 0, 3], [6, 4, 0, 7]
    k, v = torch.randn(4 * context, heads, d), torch.randn(4 * context, heads, d)
    q = torch.randn(sum(counts), heads, d)
    cu_q = torch.tensor([0, 1, 5, 5, 8])
    cu_k = torch.arange(0, 5 * context, context)
    got = reference_attention(q, k, v, cu_q, cu_k, torch.tensor(used), d ** -0.5)
    keys = [k[r * context:r * context + m] for r, m in enumerate(used)]       # (m, heads, d)
    values = [v[r * context:r * context + m] for r, m in enumerate(used)]
    want = _naive(q, keys, values, counts, d ** -0.5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_more_queries_than_keys_give_zeros_not_nan():
    q = torch.randn(3, 1, 4)
    k = v = torch.randn(8, 1, 4)
    out = reference_attention(q, k, v, torch.tensor([0, 3]), torch.tensor([0, 8]), torch.tensor([2]), 0.5)
    assert torch.isfinite(out).all() and torch.equal(out[0], torch.zeros(1, 4))


def test_kernels_are_checked_before_use():
    assert kernel_problem("reference", torch.device("cpu"), torch.float32, 4, 4, 32) is None
    assert "CUDA only" in str(kernel_problem("flash", torch.device("cpu"), torch.float32, 4, 4, 32))


# ------------------------------------------------------------------ decode rows
def test_decode_reference_reads_each_row_up_to_its_own_length():
    from emola.engine.decode_kernel import decode_attention_reference

    torch.manual_seed(1)
    heads, kv, d, context = 4, 2, 8, 12
    q = torch.randn(3, heads, d)
    k, v = torch.randn(4, kv, context, d), torch.randn(4, kv, context, d)   # one row more than the queries
    lengths = torch.tensor([12, 1, 5], dtype=torch.int32)
    got = decode_attention_reference(q, k, v, lengths, 0.3)
    for row, n in enumerate(lengths.tolist()):
        keys = k[row, :, :n].repeat_interleave(2, dim=0)          # (heads, n, d): two query heads per key head
        values = v[row, :, :n].repeat_interleave(2, dim=0)
        weights = (torch.einsum("hd,hnd->hn", q[row], keys) * 0.3).softmax(-1)
        torch.testing.assert_close(got[row].view(heads, d), torch.einsum("hn,hnd->hd", weights, values))
    k[1, :, 1:] = float("nan")   # beyond row 1's length: never read
    assert torch.isfinite(decode_attention_reference(q, k, v, lengths, 0.3)).all()


TRITON_CHECK = """
import torch
from emola.engine.decode_kernel import (INTERPRETER_TILES, MAX_SPLITS, TILES, check_splits, decode_attention,
                                        decode_attention_reference, splits_for)
torch.manual_seed(0)
# (heads, kv heads, rows, context, cache dtype): grouped heads, a row alone, an FP8 cache (widened as it is loaded),
# and the emola-7b head size over a 2,048-position cache, whose rows the engine splits 1 to 16 ways.
cases = ((4, 4, 3, 200, torch.float32), (4, 2, 2, 130, torch.float32), (2, 2, 1, 64, torch.float32),
         (4, 2, 3, 300, torch.float8_e4m3fn), (2, 1, 3, 2048, torch.float32))
blocks = sorted({(block, dot) for block, _, _, dot in TILES})   # every tile size the autotuner may choose
for heads, kv, rows, context, cache in cases:
    d = 128 if context == 2048 else 16
    fused = torch.randn(rows, heads + 2 * kv, d)
    q = fused[:, :heads]                                     # a strided view, as the decoder passes it
    k, v = torch.randn(rows + 1, kv, context, d).to(cache), torch.randn(rows + 1, kv, context, d).to(cache)
    lengths = torch.randint(1, context + 1, (rows,), dtype=torch.int32)
    lengths[0] = context
    want = decode_attention_reference(q, k, v, lengths, 0.25)
    runs = [(tile, None) for tile in INTERPRETER_TILES]     # on the CUDA cores and on the tensor cores
    if context == 2048:
        assert list(check_splits(context)) == list(range(1, MAX_SPLITS + 1))
        runs += [(INTERPRETER_TILES[0], splits) for splits in check_splits(context)]
        runs += [((block, 4, 1, dot), splits) for block, dot in blocks for splits in (1, MAX_SPLITS)]
    for tile, splits in runs:
        error = (decode_attention(q, k, v, lengths, 0.25, tile=tile, splits=splits) - want).abs().max()
        assert error < 1e-5, (heads, kv, rows, context, tile, splits, float(error))
    print("case", len(runs), "runs, splits", splits_for(rows, heads, context), "error", float(error))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (CPU wheels of PyTorch)")
def test_the_triton_decode_kernel_matches_the_reference_in_the_interpreter():
    """The kernel's own code (splits, the online softmax, grouped heads), run by Triton's interpreter on CPU: at
    the production head size, every split count and every tile size the autotuner chooses from."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("case") == 5


GATE_CHECK = """
import torch
from emola.engine import decode_kernel
cpu = torch.device("cpu")
assert decode_kernel.decode_kernel_problem(cpu, torch.float32, 2, 1, 128, context=2048) is None
print("passes")
kernel = decode_kernel.decode_attention
def off_at_three(*args, splits=None, **kwargs):   # a wrong scale at one split count only
    out = kernel(*args, splits=splits, **kwargs)
    return out * 1.02 if splits == 3 else out
decode_kernel.decode_attention = off_at_three
problem = decode_kernel.decode_kernel_problem(cpu, torch.float32, 2, 1, 128, context=2048)
assert problem is not None and problem.wrong and "at 3 split(s)" in str(problem), problem
print("caught:", problem)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (CPU wheels of PyTorch)")
def test_the_engines_decode_kernel_check_covers_every_split_count_and_catches_one_that_is_off():
    """The start-up check itself (what the engine runs on CUDA), in the interpreter: it passes the kernel at the
    production head size and context, and fails it when one split count is 2% off."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", GATE_CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "passes" in run.stdout and "caught: the Triton decode kernel disagrees" in run.stdout


ROPE_CHECK = """
import torch
from emola.engine.rope_kernel import rope_store, rope_store_reference
torch.manual_seed(0)
heads, kv, d, context, n = 4, 2, 16, 24, 5
qkv = torch.randn(n, (heads + 2 * kv) * d)
angles = torch.rand(context, d // 2) * 6.3
cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
positions, rows = torch.tensor([0, 5, 23, 5, 9]), torch.tensor([0, 1, 2, 3, 0])
for cache in (torch.float32, torch.bfloat16):   # a cache narrower than the model's: rounded as torch rounds
    got = [torch.zeros(4, kv, context, d, dtype=cache) for _ in range(2)]
    want = [torch.zeros(4, kv, context, d, dtype=cache) for _ in range(2)]
    out = rope_store(qkv, cos, sin, positions, rows, *got, heads, kv)
    ref = rope_store_reference(qkv, cos, sin, positions, rows, *want, heads, kv)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(got, want):   # the same entries written, nothing else
        mismatched = (a.float() - b.float()).abs() > 1e-5 + 1e-2 * b.float().abs()
        assert not mismatched.any(), (cache, int(mismatched.sum()))
    assert int((got[0].float() != 0).any(-1).sum()) == n * kv
    print("rope ok", cache)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (CPU wheels of PyTorch)")
def test_the_triton_rope_kernel_matches_the_reference_in_the_interpreter():
    """q and k rotated, k and v written at each token's cache row and position. An FP8 cache is checked on
    the GPU only (the engine's start-up check): the interpreter's float8 rounding is not the hardware's."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", ROPE_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("rope ok") == 2


def test_rope_reference_equals_the_decoders_rotation_and_store(lora_model_free_decoder):
    """The kernel's reference is the decoders' own PyTorch path (what the kernel replaces)."""
    decoder = lora_model_free_decoder
    from emola.engine.rope_kernel import rope_store_reference

    torch.manual_seed(2)
    n = 3
    width = (decoder.heads + 2 * decoder.kv_heads) * decoder.head_dim
    qkv = torch.randn(n, width)
    positions, rows = torch.tensor([0, 7, 3]), torch.tensor([1, 0, 2])
    q, k, v = decoder._rotate_store(1, qkv, positions, rows, decoder._step_rope(positions))
    caches = [torch.zeros_like(decoder.k_cache[1]), torch.zeros_like(decoder.v_cache[1])]
    want = rope_store_reference(qkv, decoder.cos, decoder.sin, positions, rows, *caches, decoder.heads,
                                decoder.kv_heads)
    for a, b in zip((q, k, v), want):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(decoder.k_cache[1][rows, :, positions], caches[0][rows, :, positions])
    torch.testing.assert_close(decoder.v_cache[1][rows, :, positions], caches[1][rows, :, positions])


@pytest.fixture(scope="module")
def lora_model_free_decoder():
    """A packed decoder over a small random Llama (float32, CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from emola.engine.packed import PackedDecoder

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    return PackedDecoder(model.model, model.lm_head, slots=3, context=16, cuda_graphs=False)


COMPILE_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from emola.engine.decode_kernel import TILES, _kernels
from emola.engine.rope_kernel import _kernel
hopper = GPUTarget("cuda", 90, 32)
ints = lambda *names: {name: "i32" for name in names}
for cache in ("*bf16", "*fp8e4nv"):
    signature = {"qkv_ptr": "*bf16", "cos_ptr": "*bf16", "sin_ptr": "*bf16", "positions_ptr": "*i64", "rows_ptr": "*i64",
                 "q_ptr": "*bf16", "k_ptr": "*bf16", "k_cache_ptr": cache, "v_cache_ptr": cache,
                 **ints("qkv_token", "heads", "kv_heads", "cache_row", "cache_head", "cache_pos"), "HALF": "constexpr"}
    triton.compile(ASTSource(_kernel(), signature, constexprs={"HALF": 64}), target=hopper)
    signature = {"q_ptr": "*bf16", "k_ptr": cache, "v_ptr": cache, "lengths_ptr": "*i32", "out_ptr": "*fp32",
                 "lse_ptr": "*fp32", **ints("q_row", "q_head", "k_row", "k_head", "k_pos", "heads", "groups", "splits"),
                 "scale": "fp32", "D": "constexpr", "BLOCK": "constexpr",
                 "DOT": "constexpr"}
    for block, warps, stages, dot in TILES:
        triton.compile(ASTSource(_kernels()[0], signature, constexprs={"D": 128, "BLOCK": block, "DOT": dot}),
                       target=hopper, options={"num_warps": warps, "num_stages": stages})
    print("compiled", cache)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (CPU wheels of PyTorch)")
def test_the_triton_kernels_compile_for_a_hopper_gpu():
    """Both kernels, every autotuned tile, over a bf16 and an FP8 cache, compiled for sm_90 without a GPU: the
    interpreter runs kernels as Python and misses what only the compiler rejects."""
    run = subprocess.run([sys.executable, "-c", COMPILE_CHECK], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("compiled") == 2
