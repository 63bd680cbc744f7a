"""Decode attention that reads each row's own length: a Triton flash-decoding kernel.

A decode step has one query per running request. Batched kernels over the slot cache
(``scaled_dot_product_attention`` with a mask) read every row up to the longest row's
length bucket; PyTorch's variable-length kernels read each row's own length but work in
tiles of 64-128 queries, so one query per row wastes most of their arithmetic (measured
slower than the masked batched kernel at the ``emola-7b`` shape). :func:`decode_attention`
reads row ``b``'s cache positions ``0 .. lengths[b]-1`` and nothing more, one query at a
time, with the online softmax of FlashAttention. Each row's keys are split over several
programs (flash-decoding: the row's own length divided among them) whose partial results a
second kernel combines, so that a step of few rows still keeps the GPU's memory system busy.

The cache is the slot decoder's, one layer ``(rows, kv_heads, context, d)``, in the model's
dtype or in FP8 (``float8_e4m3fn``, :data:`CACHE_DTYPES`): half the bytes per position, each
entry widened as it is loaded. The kernels take no host-side decisions from tensor values:
a step can be captured in a CUDA graph.

Each program works in one of two forms: on the CUDA cores (each key dotted with the query
and the values weighted, in float32) or on the tensor cores (the query as row 0 of a
16-row matrix product). The form and the tile (keys per block, warps, pipeline stages:
:data:`TILES`) are chosen on CUDA by Triton's autotuner the first time each problem (head
size, keys per split, dtypes) is met, that is in the engine's warm-up, each tile timed
from a CUDA graph; :func:`tuned_tiles` reports the choices. Triton's interpreter
(``TRITON_INTERPRET=1``, the CPU test) runs the tile it is given. Triton is imported
lazily: machines without it (CPU wheels of PyTorch) never call here.
"""

from __future__ import annotations

import functools
import os

import torch

from emola.engine.checks import KernelProblem, relative_error, tolerance, triton_runs_on

#: Programs per step to aim for: splits are added until rows x heads x splits reaches this.
TARGET_PROGRAMS = 2048
MAX_SPLITS = 16
#: Splits per row are capped at the context's blocks of this many positions (each row's own keys are shared by
#: its splits in whole tiles).
BLOCK_N = 128
#: The tiles the autotuner tries: (keys per block, warps, pipeline stages, on the tensor cores). Chosen on an
#: H200 at 32 rows: the tensor-core form (64 keys, 4 warps) over a bf16 cache, the CUDA-core form (64 keys,
#: 2 warps) over FP8; at fewer rows, whose rows are split more finely, small CUDA-core tiles.
TILES = ((16, 1, 2, False), (32, 1, 2, False), (32, 2, 2, False), (32, 2, 3, False), (32, 4, 3, False),
         (64, 2, 3, False), (64, 4, 3, False), (64, 4, 4, False), (128, 4, 3, False), (128, 4, 4, False),
         (128, 8, 3, False), (256, 8, 3, False),
         (32, 4, 3, True), (64, 4, 2, True), (64, 4, 3, True), (64, 4, 4, True), (128, 4, 3, True),
         (128, 8, 3, True), (128, 8, 4, True))
#: The interpreter's tiles (both forms are tested there; the first is used).
INTERPRETER_TILES = ((64, 4, 1, False), (32, 4, 1, True))
#: Cache dtypes the kernel reads besides the model's own.
CACHE_DTYPES = {"float8_e4m3fn": torch.float8_e4m3fn}


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    def part(q_ptr, k_ptr, v_ptr, lengths_ptr, out_ptr, lse_ptr, q_row, q_head, k_row, k_head, k_pos,
             heads, groups, splits, scale, D: tl.constexpr, BLOCK: tl.constexpr, DOT: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)
        split = tl.program_id(2)
        length = tl.load(lengths_ptr + row)
        # The row's own keys shared by its splits, in whole tiles: a row shorter than the context keeps every
        # split busy (splits of the context left those past the row's end idle).
        chunk = tl.cdiv(tl.cdiv(length, splits), BLOCK) * BLOCK
        start = split * chunk
        end = tl.minimum(start + chunk, length)
        d = tl.arange(0, D)
        base = row * k_row + (head // groups) * k_head
        if DOT:
            # On the tensor cores: the query as row 0 of a 16-row tile (the smallest a matrix product takes;
            # rows 1-15 are zeros, their softmax harmless), keys and values widened to the query's dtype.
            lanes = tl.arange(0, 16)
            q16 = tl.load(q_ptr + row * q_row + head * q_head + lanes[:, None] * 0 + d[None, :],
                          mask=lanes[:, None] == 0, other=0.0)
            best16 = tl.full((16,), float("-inf"), tl.float32)
            total16 = tl.zeros((16,), tl.float32)
            acc16 = tl.zeros((16, D), tl.float32)
            for n in range(start, end, BLOCK):
                keys = n + tl.arange(0, BLOCK)
                inside = keys < end
                offsets = base + keys[:, None] * k_pos + d[None, :]
                k = tl.load(k_ptr + offsets, mask=inside[:, None], other=0.0).to(q16.dtype)
                scores = tl.dot(q16, tl.trans(k)) * scale                                  # (16, BLOCK)
                scores = tl.where(inside[None, :], scores, float("-inf"))
                new_best = tl.maximum(best16, tl.max(scores, axis=1))
                rescale = tl.exp(best16 - new_best)
                p = tl.exp(scores - new_best[:, None])
                v = tl.load(v_ptr + offsets, mask=inside[:, None], other=0.0).to(q16.dtype)
                acc16 = acc16 * rescale[:, None] + tl.dot(p.to(q16.dtype), v)
                total16 = total16 * rescale + tl.sum(p, axis=1)
                best16 = new_best
            first = lanes == 0
            acc = tl.sum(tl.where(first[:, None], acc16, 0.0), axis=0)
            total = tl.sum(tl.where(first, total16, 0.0), axis=0)
            best = tl.max(tl.where(first, best16, float("-inf")), axis=0)
        else:
            # On the CUDA cores: each key dotted with the query, the values weighted, all in float32.
            q = tl.load(q_ptr + row * q_row + head * q_head + d).to(tl.float32) * scale
            best = tl.max(tl.full((BLOCK,), float("-inf"), tl.float32), axis=0)
            total = tl.sum(tl.zeros((BLOCK,), tl.float32), axis=0)
            acc = tl.zeros((D,), tl.float32)
            for n in range(start, end, BLOCK):
                keys = n + tl.arange(0, BLOCK)
                inside = keys < end
                offsets = base + keys[:, None] * k_pos + d[None, :]
                k = tl.load(k_ptr + offsets, mask=inside[:, None], other=0.0).to(tl.float32)
                scores = tl.where(inside, tl.sum(k * q[None, :], axis=1), float("-inf"))
                new_best = tl.maximum(best, tl.max(scores, axis=0))
                rescale = tl.exp(best - new_best)
                p = tl.exp(scores - new_best)
                v = tl.load(v_ptr + offsets, mask=inside[:, None], other=0.0).to(tl.float32)
                acc = acc * rescale + tl.sum(p[:, None] * v, axis=0)
                total = total * rescale + tl.sum(p, axis=0)
                best = new_best
        slot = (row * heads + head) * splits + split
        seen = total > 0
        tl.store(out_ptr + slot * D + d, tl.where(seen, acc / tl.where(seen, total, 1.0), 0.0))
        tl.store(lse_ptr + slot, tl.where(seen, best + tl.log(tl.where(seen, total, 1.0)), float("-inf")))

    @triton.jit
    def combine(parts_ptr, lse_ptr, out_ptr, o_row, o_head, heads, splits, D: tl.constexpr, SPLITS: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)
        s = tl.arange(0, SPLITS)
        d = tl.arange(0, D)
        used = s < splits
        first = (row * heads + head) * splits
        lse = tl.load(lse_ptr + first + s, mask=used, other=float("-inf"))
        best = tl.max(lse, axis=0)
        weights = tl.where(lse > float("-inf"), tl.exp(lse - best), 0.0)
        parts = tl.load(parts_ptr + (first + s)[:, None] * D + d[None, :], mask=used[:, None], other=0.0)
        out = tl.sum(weights[:, None] * parts, axis=0) / tl.sum(weights, axis=0)
        tl.store(out_ptr + row * o_row + head * o_head + d, out.to(out_ptr.dtype.element_ty))

    part = triton.jit(part)
    tuned = None
    if os.environ.get("TRITON_INTERPRET") != "1":   # the autotuner times configs on a GPU
        configs = [triton.Config({"BLOCK": block, "DOT": dot}, num_warps=warps, num_stages=stages)
                   for block, warps, stages, dot in TILES]
        # Timed from CUDA graphs: a small step's kernel is shorter than its launch from Python, so timed
        # launch by launch every tile would measure alike and the choice would be noise.
        from triton.testing import do_bench_cudagraph

        def graph_bench(kernel_call, quantiles):
            return do_bench_cudagraph(kernel_call, rep=20, quantiles=quantiles)

        try:
            tuned = triton.autotune(configs=configs, key=["D", "splits"], do_bench=graph_bench)(part)   # + the dtypes
        except TypeError:   # a Triton before autotune's do_bench: launch by launch
            tuned = triton.autotune(configs=configs, key=["D", "splits"])(part)
    return part, tuned, combine


def tuned_tiles() -> dict[str, str]:
    """The tile the autotuner chose for each problem met so far, e.g. ``"D=128 splits=2 torch.bfloat16"``
    -> ``"BLOCK=64 warps=4 stages=3"`` (empty before the first CUDA call, and under the interpreter)."""
    _, tuned, _ = _kernels()
    chosen = {}
    for key, config in (getattr(tuned, "cache", None) or {}).items():
        d, splits, *dtypes = key
        cache_dtype = dtypes[1] if len(dtypes) > 1 else "?"   # q, then the key cache
        chosen[f"D={d} splits={splits} {cache_dtype}"] = (
            f"BLOCK={config.kwargs['BLOCK']} warps={config.num_warps} stages={config.num_stages}"
            + (" tensor cores" if config.kwargs.get("DOT") else ""))
    return chosen


def most_splits(context: int) -> int:
    """The most programs that share one row's keys over a cache of ``context`` positions: ``MAX_SPLITS``, and no more
    than the context's ``BLOCK_N``-key blocks."""
    return max(1, min(MAX_SPLITS, -(-context // BLOCK_N)))


def splits_for(rows: int, heads: int, context: int) -> int:
    """How many programs share one row's keys: enough programs in all, never more than :func:`most_splits`."""
    wanted = -(-TARGET_PROGRAMS // max(1, rows * heads))
    return max(1, min(wanted, most_splits(context)))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                     scale: float, tile: tuple[int, int, int, bool] | None = None,
                     splits: int | None = None) -> torch.Tensor:
    """One query per row over its own cache positions.

    ``q`` ``(rows, heads, d)`` (last dimension contiguous); ``k_cache``, ``v_cache`` one layer
    ``(>= rows, kv_heads, context, d)``, contiguous, in ``q``'s dtype or FP8; ``lengths`` ``(rows,)`` int32, each at least 1:
    row ``b`` attends over positions ``0 .. lengths[b]-1`` of cache row ``b``. Returns
    ``(rows, heads * d)`` in ``q``'s dtype. ``tile``: the tile to run, one of :data:`TILES` (default: the
    autotuner's choice on CUDA, the first of :data:`INTERPRETER_TILES` under the interpreter). ``splits``: programs
    per row, 1 .. :data:`MAX_SPLITS` (default :func:`splits_for`; the checks run every count).
    """
    part, tuned, combine = _kernels()
    rows, heads, d = q.shape
    _, kv_heads, context, _ = k_cache.shape
    splits = splits or splits_for(rows, heads, context)
    if not 1 <= splits <= MAX_SPLITS:
        raise ValueError(f"splits {splits}: 1 to {MAX_SPLITS}")
    parts = torch.empty(rows * heads * splits, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(rows * heads * splits, dtype=torch.float32, device=q.device)
    args = (q, k_cache, v_cache, lengths, parts, lse, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
            k_cache.stride(2), heads, heads // kv_heads, splits, scale)
    if tuned is not None and tile is None:
        tuned[(rows, heads, splits)](*args, D=d)
    else:
        block, warps, stages, dot = tile or INTERPRETER_TILES[0]
        part[(rows, heads, splits)](*args, D=d, BLOCK=block, DOT=dot, num_warps=warps, num_stages=stages)
    out = torch.empty(rows, heads, d, dtype=q.dtype, device=q.device)
    combine[(rows, heads)](parts, lse, out, out.stride(0), out.stride(1), heads, splits, D=d,
                           SPLITS=max(2, 1 << (splits - 1).bit_length()))
    return out.reshape(rows, heads * d)


def decode_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """:func:`decode_attention` with PyTorch operations (float32 scores): the check and the CPU path."""
    rows, heads, d = q.shape
    kv_heads = k_cache.shape[1]
    span = int(lengths.max())
    keys = k_cache[:rows, :, :span].float().repeat_interleave(heads // kv_heads, dim=1)   # (rows, heads, span, d)
    values = v_cache[:rows, :, :span].float().repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.einsum("bhd,bhkd->bhk", q.float(), keys) * scale
    visible = torch.arange(span, device=q.device)[None, :] < lengths[:, None].to(q.device)
    weights = scores.masked_fill(~visible[:, None, :], float("-inf")).softmax(-1)
    return torch.einsum("bhk,bhkd->bhd", weights, values).to(q.dtype).reshape(rows, heads * d)


def check_splits(context: int) -> range:
    """Every split count :func:`splits_for` can choose for a cache of ``context`` positions."""
    return range(1, most_splits(context) + 1)


def decode_kernel_problem(device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int,
                          head_dim: int, cache_dtype: torch.dtype | None = None,
                          context: int = 2048) -> KernelProblem | None:
    """Why :func:`decode_attention` cannot serve here (None: it can).

    Triton must compile it for ``device`` and, in every tile the autotuner may choose (on CUDA; under the
    interpreter its tiles) and at every split count the engine may choose for ``context``, it must agree with
    :func:`decode_attention_reference` within :func:`~emola.engine.checks.tolerance` of ``dtype`` on five rows of
    different lengths (one position, a block boundary either side, the whole context) and on one row alone, over
    a cache of ``cache_dtype`` (default ``dtype``): the reference reads the same cache, rounded or not.
    """
    if not triton_runs_on(device):
        return KernelProblem("the Triton decode kernel runs on CUDA only")
    try:
        generator = torch.Generator(device="cpu").manual_seed(0)
        rows = 5
        fused = torch.randn(rows, heads + 2 * kv_heads, head_dim, generator=generator).to(device, dtype)
        q = fused[:, :heads]                                  # a view, as the decoder passes it
        k = torch.randn(rows + 1, kv_heads, context, head_dim, generator=generator).to(device, cache_dtype or dtype)
        v = torch.randn(rows + 1, kv_heads, context, head_dim, generator=generator).to(device, cache_dtype or dtype)
        edges = [1, min(context, BLOCK_N - 1), min(context, BLOCK_N), min(context, BLOCK_N + 1), context]
        lengths = torch.tensor(edges, dtype=torch.int32, device=device)
        scale = head_dim ** -0.5
        limit = tolerance(dtype)
        tiles = TILES if device.type == "cuda" else INTERPRETER_TILES
        for n in (rows, 1):
            used = lengths if n == rows else lengths[-1:].contiguous()
            want = decode_attention_reference(q[:n], k, v, used, scale)
            for splits in check_splits(context):
                for tile in tiles:
                    error = relative_error(decode_attention(q[:n], k, v, used, scale, tile=tile, splits=splits), want)
                    if not error <= limit:
                        return KernelProblem(
                            f"the Triton decode kernel disagrees with the reference in tile {tile} at {splits} "
                            f"split(s), {n} row(s) (relative error {error:.3g} > {limit:g})", wrong=True)
    except Exception as err:  # noqa: BLE001 - any failure means: attend another way
        return KernelProblem(f"the Triton decode kernel failed: {type(err).__name__}: {err}"[:500])
    return None
