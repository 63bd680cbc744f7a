"""Packed variable-length attention: the reference's semantics, and the cache view the kernels read."""

from __future__ import annotations

import torch

from emola.engine.attention import flat_cache, kernel_problem, reference_attention


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


def test_flat_cache_is_a_view_that_finds_every_row_head_and_position():
    cache = torch.randn(3, 2, 5, 4)   # (rows, kv heads, context, d)
    flat = flat_cache(cache)
    assert flat.data_ptr() == cache.data_ptr() and flat.shape == (2 * 2 * 5 + 5, 2, 4)
    for row in range(3):
        for head in range(2):
            for position in range(5):
                assert torch.equal(flat[row * 2 * 5 + position, head], cache[row, head, position])


def test_reference_attention_is_end_aligned_causal_per_sequence_from_the_cache():
    """A decode row (1 query over its 6 cached keys), a prompt (4 over 4), an empty sequence, and a chunk
    (3 queries after a cached beginning: 7 keys), read from a (rows, kv, context, d) cache."""
    torch.manual_seed(0)
    heads, d, context = 2, 8, 10
    counts, used = [1, 4, 0, 3], [6, 4, 0, 7]
    k_cache, v_cache = torch.randn(4, heads, context, d), torch.randn(4, heads, context, d)
    q = torch.randn(sum(counts), heads, d)
    cu_q = torch.tensor([0, 1, 5, 5, 8])
    cu_k = torch.arange(0, 5 * heads * context, heads * context)
    got = reference_attention(q, flat_cache(k_cache), flat_cache(v_cache), cu_q, cu_k, torch.tensor(used), d ** -0.5)
    keys = [k_cache[r].transpose(0, 1)[:m] for r, m in enumerate(used)]       # (m, heads, d)
    values = [v_cache[r].transpose(0, 1)[:m] for r, m in enumerate(used)]
    want = _naive(q, keys, values, counts, d ** -0.5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_more_queries_than_keys_give_zeros_not_nan():
    q = torch.randn(3, 1, 4)
    k = v = torch.randn(8, 1, 4)
    out = reference_attention(q, k, v, torch.tensor([0, 3]), torch.tensor([0, 8]), torch.tensor([2]), 0.5)
    assert torch.isfinite(out).all() and torch.equal(out[0], torch.zeros(1, 4))


def test_kernels_are_checked_before_use():
    assert kernel_problem("reference", torch.device("cpu"), torch.float32, 4, 4, 32) is None
    assert "CUDA only" in kernel_problem("flash", torch.device("cpu"), torch.float32, 4, 4, 32)
