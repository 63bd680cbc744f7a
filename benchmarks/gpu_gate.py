"""The correctness gate of ``benchmarks/gpu.py``: no timing is kept unless the engine computes the model.

Two parts, both before an engine's timings:

1. **Kernels at the shapes production runs** (CUDA): the Triton decode kernel at the model's head
   count and head size over a cache of the profile's context, at every split count and in every
   autotuned tile, over a cache in the model's dtype and in FP8; the Triton RoPE kernel; the
   prompts' variable-length kernels (FlashAttention-2, CUTLASS). These are the engine's own
   start-up checks (:mod:`emola.engine.checks`), run here to report and to fail the run.
2. **Teacher-forced agreement** of every engine with transformers' eager float32 forward of the
   same weights (:mod:`emola.engine.gate`): ``emola-7b`` shape, random bf16 weights, LoRA moved
   off its start and merged; requests with mixed prompt and answer lengths at 1, 8, 32 and 64
   at once, steps overlapped and not, the serving scheduler full, CUDA-graph replay and eager.

The tolerance is a multiple of what transformers' own bf16 forward differs from the float32
reference on the same requests (:data:`~emola.engine.gate.SAME_DTYPE`; an FP8 cache:
:data:`~emola.engine.gate.FP8_CACHE`); a disagreement where the reference's choice is clear
always fails.
"""

from __future__ import annotations

import gc

import numpy as np
import torch


class GateFailed(RuntimeError):
    """A kernel or an engine path disagreed with its reference; ``report``: the gate's numbers so far."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def merge_random_lora(model, seed: int = 0):
    """Move every LoRA matrix off its start (B starts at zero: the adapter would change nothing) and merge."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_((0.02 * torch.randn(p.shape, generator=generator)).to(p.device, p.dtype))
    model.llava = model.llava.merge_and_unload()
    return model.eval()


def kernel_checks(s: dict, context: int, log) -> list[dict]:
    """The engine's start-up checks at this shape (CUDA only: on the CPU the references run)."""
    if s["device"] != "cuda":
        return []
    from emola.engine.attention import kernel_problem
    from emola.engine.decode_kernel import decode_kernel_problem
    from emola.engine.decoder import attention_shape
    from emola.engine.rope_kernel import rope_kernel_problem

    device, dtype = torch.device("cuda"), s["dtype"]
    shape = attention_shape(s["llava"].text_config)
    fp8 = torch.float8_e4m3fn
    checks = {
        "decode attention (Triton), bf16 cache": lambda: decode_kernel_problem(device, dtype, *shape, context=context),
        "decode attention (Triton), FP8 cache": lambda: decode_kernel_problem(device, dtype, *shape, cache_dtype=fp8,
                                                                              context=context),
        "RoPE and cache write (Triton), bf16 cache": lambda: rope_kernel_problem(device, dtype, *shape,
                                                                                 context=context),
        "RoPE and cache write (Triton), FP8 cache": lambda: rope_kernel_problem(device, dtype, *shape,
                                                                                cache_dtype=fp8, context=context),
        "prompt attention (FlashAttention-2)": lambda: kernel_problem("flash", device, dtype, *shape),
        "prompt attention (CUTLASS)": lambda: kernel_problem("efficient", device, dtype, *shape),
    }
    rows = []
    for name, run in checks.items():
        problem = run()
        rows.append({"kernel": name, "passed": problem is None, "problem": None if problem is None else str(problem)})
        log(f"{'pass' if problem is None else 'FAIL'}  kernel check: {name}" + (f": {problem}" if problem else ""))
    return rows


def gate_requests(s: dict, n: int, make_prompt, seed: int = 11):
    """``n`` requests with mixed prompt lengths and forced answers of mixed lengths (no end token)."""
    from emola.engine import GenerationRequest

    rng = np.random.default_rng(seed)
    pixels = torch.Generator().manual_seed(seed)
    v = s["llava"].vision_config
    vocab = min(s["llava"].text_config.vocab_size, s["llava"].image_token_index) - 1
    lo, hi = s["gate_answer"]
    out = []
    for _ in range(n):
        answer = rng.integers(3, vocab, int(rng.integers(lo, hi + 1))).tolist()
        out.append(GenerationRequest(prompt_ids=make_prompt(rng),
                                     pixel_values=torch.randn(3, v.image_size, v.image_size, generator=pixels),
                                     prior=rng.normal(size=s["prior_dim"]).astype(np.float32),
                                     max_new_tokens=len(answer), forced_ids=answer, stop_at_eos=False))
    return out


class Gate:
    """The reference log-probabilities of one set of requests, computed once (the float32 copy is dropped before
    any engine is built), and the checks of each engine against them."""

    def __init__(self, model, s: dict, make_prompt, log, requests: int = 64):
        from emola.engine.gate import calibrate, float32_reference, reference_logprobs

        self.log, self.s = log, s
        self.requests = gate_requests(s, requests, make_prompt)
        reference = float32_reference(model)
        self.references = reference_logprobs(reference, self.requests)
        del reference
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.native = calibrate(model, self.requests, self.references)
        log(f"gate: {len(self.requests)} teacher-forced requests, "
            f"{sum(len(r) for r in self.references)} answer positions; transformers' own forward in "
            f"{s['dtype']} differs from the float32 reference by at most {self.native:.3g} in log-probability")
        self.report: dict = {"requests": len(self.requests), "native_max_logprob_diff": round(self.native, 6),
                             "paths": []}

    def check(self, engine, name: str) -> list[dict]:
        """Every path of ``engine`` (:func:`emola.engine.gate.check_engine`); raises :class:`GateFailed` when one
        fails (after logging them all)."""
        from emola.engine.gate import FP8_CACHE, SAME_DTYPE, check_engine

        tolerance = FP8_CACHE if engine.cfg.kv_cache_dtype != "auto" else SAME_DTYPE
        sizes = [n for n in (1, 8, 32, 64) if n <= len(self.requests)]
        checks = check_engine(engine, self.requests, self.references, tolerance.bound(self.native), name, sizes)
        rows = [c.to_json() for c in checks]
        for c in checks:
            self.log(c.line())
        self.report["paths"] += rows
        failed = [c.path for c in checks if not c.passed]
        if failed:
            raise GateFailed(f"the engine disagrees with the reference on: {', '.join(failed)}", self.report)
        return rows
