"""GPU benchmarks at the ``emola-7b`` shape: the inference engine and the training step.

    python benchmarks/gpu.py [--part inference|training|all] [--gate-only] [--dry-run] [--out FILE]

The model is the project's own (``build_random`` of ``llava_1_5_7b_config``: CLIP
ViT-L/14-336, Vicuna-7B, the prior projector, LoRA r=128 on all seven decoder linears),
with random weights built directly on the GPU in bf16: nothing is downloaded. Everything
runs through the code the platform runs: :class:`emola.engine.InferenceEngine` and
:class:`emola.train.step.TrainStep` (without Ray, as a Ray Train worker calls it).

Inference, with the ``emola-7b`` profile's ``inference`` settings: ms per token of one request
(prompt of ~620 tokens: 40 text, 576 image, 1 prior, the question), tokens/s and time to first
token with 1, 8, 32 and (where the slots hold them) 64 requests in flight (a closed loop: a
finished request is replaced at once; prompts and answer lengths mixed as in FABA-Bench:
half emotion-like answers of 48-128 tokens, half AU-like of 200-384), and the evaluate
stage's answers/s (128 requests through ``generate``, with the published sampling). Each
engine runs with its steps overlapped (``inference.overlap_steps``, the setting) and counts
where the host waits for the device; the first engine runs again with each step's tokens
read before the next is launched (batch 1, 32 in flight, the evaluate stage; every engine
with ``--overlap-ab all``). The old path (transformers' ``generate`` with LoRA unmerged) is
timed beside it at batch 1. A GPU run compares ``varlen`` (the ``emola-7b`` setting),
``slot`` (its fallback) and ``fp8`` unless ``--engines`` says otherwise (about 4 minutes on
one H200).

Training: the micro-batch step (micro batch 16; emotion-length samples of 697 tokens,
AU-length 917, and a mix) with each lever on and off: sparse logits, fused AdamW,
``torch.compile`` of the decoder layers, activation checkpointing (all, selective,
every other layer, none), DeepSpeed ZeRO-2 and ZeRO-3 against the plain loop, packing.
MFU counts useful work over the dense bf16 peak of 989 TFLOP/s (:func:`useful_flops`: the frozen
linears' forward and input gradients, LoRA's forward and both gradients, causal attention, the LM
head on the answer tokens only, the vision tower's forward); recomputation does not count.
``recipe`` is the step as training runs it: the ``emola-7b`` profile's ``train`` section as it is
(DeepSpeed ZeRO-2, its checkpointing and levers), through :class:`emola.train.step.TrainStep`, the
function Ray Train's workers call.

Before any timing, the correctness gate (``gpu_gate``): the kernels' checks at the production
shapes and every engine teacher-forced against transformers' float32 forward; a failure exits 1
and the run's file holds the gate's numbers only. ``--gate-only``: the gate alone.

``--dry-run`` runs the same code on a shrunken model on the CPU (the test suite does) and writes
``build/benchmarks/gpu-dry-run.json``. A GPU run writes one raw file in
``benchmarks/results/gpu/runs/`` (date, commit, card, versions, the gate, every number);
``benchmarks/gpu_summary.py`` builds the summary the README quotes.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform as sysplatform
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gpu_gate import Gate, GateFailed, kernel_checks, merge_random_lora  # noqa: E402

PEAK_FLOPS = 989e12        # dense bf16, H100/H200 SXM
EOS, PAD, BOS = 2, 0, 1
H100_BYTES = 76 * 2**30    # what fits an H100's 80 GB with room to spare


# --------------------------------------------------------------------------- shapes
def shape(dry_run: bool) -> dict:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from emola.model.builder import llava_1_5_7b_config

    if not dry_run:
        from emola.config import load_config

        profile = load_config(ROOT / "params.yaml", {"profile": "emola-7b"}).inference
        return {"context": profile.max_context, "max_batch": profile.max_batch, "inference": profile,
                "llava": llava_1_5_7b_config(), "prior_dim": 212, "text": 40, "question": (8, 24),
                "emotion_answer": (48, 128), "au_answer": (200, 384), "train_answer": {"emotion": 80, "au": 300},
                "gate_answer": (8, 40), "device": "cuda", "dtype": torch.bfloat16, "micro_batch": 16, "requests": 128,
                "steps": (2, 3), "concurrency": (1, 8, 32, 64)}
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=64)
    text = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=PAD)
    llava = LlavaConfig(vision_config=vision, text_config=text, image_token_index=1000, image_seq_length=16,
                        vision_feature_layer=-2, vision_feature_select_strategy="default")
    return {"llava": llava, "prior_dim": 136, "text": 12, "question": (4, 10), "emotion_answer": (8, 24),
            "au_answer": (24, 48), "train_answer": {"emotion": 20, "au": 60}, "gate_answer": (3, 10), "device": "cpu",
            "dtype": torch.float32, "micro_batch": 4, "requests": 24, "steps": (1, 2),
            "context": 160, "max_batch": 8, "concurrency": (1, 2, 8)}


def lora_config(dry_run: bool):
    from emola.config.schema import LoraConfig

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return LoraConfig(r=8 if dry_run else 128, alpha=16 if dry_run else 256, dropout=0.05, targets=targets,
                      modules_to_save=[])


def build(s: dict, dry_run: bool):
    from emola.model.builder import build_random
    from emola.model.lora import apply_lora

    torch.manual_seed(0)
    model = build_random(s["llava"], s["prior_dim"], dtype=s["dtype"], device=s["device"])
    return apply_lora(model, lora_config(dry_run))


def image_tokens(s: dict) -> int:
    v = s["llava"].vision_config
    return (v.image_size // v.patch_size) ** 2


def prompt_ids(s: dict, rng: np.random.Generator) -> list[int]:
    vocab = s["llava"].text_config.vocab_size
    llava = s["llava"]
    words = lambda n: rng.integers(3, min(vocab, llava.image_token_index) - 1, n).tolist()  # noqa: E731
    return ([BOS] + words(s["text"] - 1) + [llava.image_token_index] * image_tokens(s)
            + [llava.image_token_index + 2] + words(int(rng.integers(*s["question"]))))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def clear() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------------ inference
def request_mix(s: dict, n: int, seed: int, engine_cls):
    """``n`` requests: prompts of varying question length, half emotion-like and half AU-like answers."""
    rng = np.random.default_rng(seed)
    pixels = torch.Generator().manual_seed(seed)   # the same requests for every engine
    v = s["llava"].vision_config
    out = []
    for i in range(n):
        lo, hi = s["emotion_answer"] if i % 2 == 0 else s["au_answer"]
        out.append(engine_cls(prompt_ids=prompt_ids(s, rng),
                              pixel_values=torch.randn(3, v.image_size, v.image_size, generator=pixels),
                              prior=rng.normal(size=s["prior_dim"]).astype(np.float32),
                              max_new_tokens=int(rng.integers(lo, hi + 1)), stop_at_eos=False))
    return out


def closed_loop(engine, requests, concurrency: int) -> dict:
    """Keep ``concurrency`` requests in flight until all are submitted, then drain.

    ``tokens_per_s`` is the steady state: tokens generated between the first replacement
    (the first ``concurrency`` requests all started) and the last submission, while
    ``concurrency`` requests were in flight; ``overall_tokens_per_s`` includes the ramp and
    the drain, when fewer are. ``ttft_ms``: from a request's submission to its first token (its prompt's
    prefill, and waiting for a step), median and 95th percentile.
    """
    from emola.engine import Listener

    done = threading.Semaphore(0)
    finished: list = []
    stamps: list[float] = []
    ttft: list[float] = []   # seconds from submission to the first token, per request

    class Done(Listener):
        def __init__(self):
            self.submitted = time.perf_counter()
            self.first = None

        def on_token(self, token_id):
            now = time.perf_counter()
            stamps.append(now)
            if self.first is None:
                self.first = now
                ttft.append(now - self.submitted)

        def on_finish(self, result, error):
            finished.append(error if error is not None else result)
            done.release()

    pending = list(requests)
    prefills, steps = engine.prefills, engine.steps
    sync()
    started = time.perf_counter()
    for _ in range(min(concurrency, len(pending))):
        engine.submit(pending.pop(0), Done())
    first_replacement = last_submission = None
    for _ in range(len(requests)):
        done.acquire()
        if pending:
            now = time.perf_counter()
            first_replacement = first_replacement or now
            engine.submit(pending.pop(0), Done())
            last_submission = now
    sync()
    elapsed = time.perf_counter() - started
    errors = [f for f in finished if isinstance(f, BaseException)]
    if errors:
        raise errors[0]
    tokens = sum(len(f.token_ids) for f in finished)
    row = {"concurrency": concurrency, "requests": len(requests), "tokens": tokens, "seconds": round(elapsed, 3),
           "overall_tokens_per_s": round(tokens / elapsed, 1), "prefills": engine.prefills - prefills,
           "decode_steps": engine.steps - steps,
           "ttft_ms": {"p50": round(1e3 * float(np.percentile(ttft, 50)), 2),
                       "p95": round(1e3 * float(np.percentile(ttft, 95)), 2)}}
    if first_replacement and last_submission and last_submission > first_replacement:
        window = [t for t in stamps if first_replacement <= t <= last_submission]
        row["steady_seconds"] = round(last_submission - first_replacement, 3)
        row["tokens_per_s"] = round(len(window) / (last_submission - first_replacement), 1)
    else:
        row["tokens_per_s"] = row["overall_tokens_per_s"]
    return row


def mean_ms(run, repeats: int) -> float:
    """Milliseconds per call of ``run`` over ``repeats`` calls after one untimed call (which captures graphs)."""
    run()
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    sync()
    return round(1e3 * (time.perf_counter() - started) / repeats, 3)


def decode_profile(engine, sizes, span: int) -> dict:
    """Milliseconds per decode-only step (graph replay on CUDA) for each batch size, every row at position
    ``span - 1``: the slot decoder's step as the engine calls it, or the packed decoder's whole ``step``
    (its host-side description and embedding included)."""
    decoder = engine.decoder
    out = {}
    for rows in sizes:
        decoder.tokens[:rows] = 5   # each row's last token, where the engine's sampling leaves it
        if engine.packed:
            def run():
                decoder.step(None, [span - 1] * rows, [])
        else:
            decoder.positions[:rows] = span - 1

            def run():
                decoder.decode(rows, span)
        out[rows] = mean_ms(run, 20)
    return out


def rope_profile(engine, sizes) -> dict:
    """Milliseconds per decode step (every layer) of rotating q and k and writing the cache, for each row count:
    PyTorch's operations against the Triton kernel (:mod:`emola.engine.rope_kernel`), each replayed from a CUDA
    graph as in a step (on the CPU: eagerly, PyTorch only). Writes junk to idle cache rows."""
    from emola.engine.graphs import ShapeGraphs

    decoder = engine.decoder
    own = decoder.rope_kernel
    width = (decoder.heads + 2 * decoder.kv_heads) * decoder.head_dim
    modes = {"torch": False, "kernel": True} if decoder.device.type == "cuda" else {"torch": False}
    out: dict = {}
    try:
        for rows in sizes:
            qkv = torch.randn(rows, width, dtype=decoder.dtype, device=decoder.device)
            positions = (torch.arange(rows, device=decoder.device) + 700) % decoder.context
            cache_rows = torch.arange(rows, device=decoder.device) % decoder.slots
            for name, kernel in modes.items():
                decoder.rope_kernel = kernel

                def layers(qkv, positions, cache_rows):
                    rope = decoder._step_rope(positions)   # once per step, as the decoders do
                    for index in range(len(decoder.layers)):
                        q, _, _ = decoder._rotate_store(index, qkv, positions, cache_rows, rope)
                    return q

                run = ShapeGraphs(layers, None) if decoder.device.type == "cuda" else layers
                out.setdefault(rows, {})[name] = mean_ms(lambda: run(qkv, positions, cache_rows), 20)
    finally:
        decoder.rope_kernel = own
    return out


def mixed_profile(engine, s: dict, rows: int, span: int) -> dict:
    """The packed decoder's claim: ``rows`` decode rows and one arriving prompt in one pass cost about what
    the prompt alone costs. Milliseconds of each, and of the two apart."""
    decoder = engine.decoder
    hidden = s["llava"].text_config.hidden_size
    prompt = torch.zeros(len(prompt_ids(s, np.random.default_rng(0))), hidden, dtype=s["dtype"], device=s["device"])
    decoder.tokens[:rows] = 5
    cases = {"decode_rows": (None, [span - 1] * rows, []), "prompt": (None, [], [prompt]),
             "both": (None, [span - 1] * rows, [prompt])}
    out = {name: mean_ms(lambda case=case: decoder.step(*case), 10) for name, case in cases.items()}
    out["apart"] = round(out["decode_rows"] + out["prompt"], 3)
    return out


def row_attention_profile(s: dict, rows: int, log) -> dict:
    """One layer's decode-row attention at the ``emola-7b`` shape, outside the engine: milliseconds per call
    (x layers: per step) of the slot decoder's masked sdpa over the longest row's length bucket, and of the
    Triton kernel over each row's own length, over a cache in the model's dtype and in FP8; for rows all at
    one length (the bytes alike) and at lengths spread as in a running batch (prompt ~620 + 0..400 answer
    tokens). ``fp8_error``: the FP8 cache's largest difference in the output against the model-dtype one,
    relative to the output's largest value (random keys and values: a kernel check, not a quality measure).
    On the CPU (dry run) the reference stands in for the kernel."""
    from emola.engine.decode_kernel import decode_attention, decode_attention_reference
    from emola.engine.decoder import attention_shape, round_up

    heads, kv_heads, d = attention_shape(s["llava"].text_config)
    context, device, dtype = s["context"], s["device"], s["dtype"]
    layers = s["llava"].text_config.num_hidden_layers
    kernel = decode_attention if device == "cuda" else decode_attention_reference
    generator = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(rows, heads, d, generator=generator).to(device, dtype)
    k = torch.randn(rows, kv_heads, context, d, generator=generator).to(device, dtype)
    v = torch.randn(rows, kv_heads, context, d, generator=generator).to(device, dtype)
    k8, v8 = k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn)
    prompt = len(prompt_ids(s, np.random.default_rng(0)))
    rng = np.random.default_rng(rows)
    spread = np.minimum(context, prompt + rng.integers(0, min(400, context - prompt) + 1, rows))
    out: dict = {"rows": rows, "layers": layers}
    for name, lengths in (("equal", np.full(rows, min(context, 768))), ("spread", spread)):
        lengths_t = torch.tensor(lengths, dtype=torch.int32, device=device)
        span = min(context, round_up(int(lengths.max()), 128))
        visible = torch.arange(span, device=device)[None, :] < lengths_t[:, None]
        mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, float("-inf"))[:, None, None]
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(   # noqa: E731
            q[:, :, None], k[:, :, :span], v[:, :, :span], attn_mask=mask, scale=d ** -0.5, enable_gqa=heads != kv_heads)
        triton_bf16 = lambda: kernel(q, k, v, lengths_t, d ** -0.5)   # noqa: E731
        triton_fp8 = lambda: kernel(q, k8, v8, lengths_t, d ** -0.5)   # noqa: E731
        row = {"mean_length": round(float(lengths.mean()), 1), "span": span}
        for label, run in (("sdpa_padded", sdpa), ("kernel", triton_bf16), ("kernel_fp8", triton_fp8)):
            row[f"{label}_ms_per_step"] = round(layers * mean_ms(run, 50), 3)
        reference = triton_bf16().float()
        row["fp8_error"] = round(float((triton_fp8().float() - reference).abs().max() / reference.abs().max()), 4)
        if device == "cuda" and name == "spread":   # every tile the autotuner chooses from, in both cache dtypes
            from emola.engine.decode_kernel import TILES

            row["tiles_ms_per_step"] = {
                label: {" ".join(map(str, tile)): round(layers * mean_ms(
                    lambda keys=keys, values=values, tile=tile: kernel(q, keys, values, lengths_t, d ** -0.5, tile=tile),
                    20), 3) for tile in TILES}
                for label, keys, values in (("model", k, v), ("fp8", k8, v8))}
        out[name] = row
        log(f"decode-row attention, {rows} rows, {name} lengths (mean {row['mean_length']}, bucket {span}), ms per "
            f"step: sdpa over the bucket {row['sdpa_padded_ms_per_step']}, kernel {row['kernel_ms_per_step']}, "
            f"kernel over FP8 {row['kernel_fp8_ms_per_step']} (FP8 output error {row['fp8_error']})")
    return out


def prefill_ms(engine, s: dict, n: int) -> float:
    from emola.engine import GenerationRequest

    requests = request_mix(s, n, seed=n, engine_cls=GenerationRequest)
    for r in requests:
        r.max_new_tokens = 1
    engine.generate(requests)   # warm-up
    sync()
    started = time.perf_counter()
    engine.generate(requests)
    sync()
    return round(1e3 * (time.perf_counter() - started), 2)


def hf_generate_ms_per_token(model, s: dict, tokens: int) -> float:
    """transformers' ``generate`` with LoRA unmerged (the path before the engine), batch 1."""
    rng = np.random.default_rng(1)
    ids = torch.tensor([prompt_ids(s, rng)], device=s["device"])
    v = s["llava"].vision_config
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                  pixel_values=torch.randn(1, 3, v.image_size, v.image_size, device=s["device"], dtype=s["dtype"]),
                  prior=torch.randn(1, s["prior_dim"], device=s["device"]), do_sample=False, pad_token_id=PAD)
    model.eval()
    model.generate(**kwargs, max_new_tokens=2, min_new_tokens=2)   # warm-up
    times = []
    for n in (1, tokens):
        sync()
        started = time.perf_counter()
        model.generate(**kwargs, max_new_tokens=n, min_new_tokens=n)
        sync()
        times.append(time.perf_counter() - started)
    return 1e3 * (times[1] - times[0]) / (tokens - 1)


def engine_ms_per_token(engine, s: dict, tokens: int) -> float:
    from emola.engine import GenerationRequest

    rng = np.random.default_rng(2)
    v = s["llava"].vision_config
    base = dict(prompt_ids=prompt_ids(s, rng), pixel_values=torch.randn(3, v.image_size, v.image_size),
                prior=np.zeros(s["prior_dim"], np.float32), stop_at_eos=False)
    engine.generate([GenerationRequest(**base, max_new_tokens=tokens)])   # warm-up
    times = []
    for n in (1, tokens, 1, tokens):
        sync()
        started = time.perf_counter()
        engine.generate([GenerationRequest(**base, max_new_tokens=n)])
        sync()
        times.append(time.perf_counter() - started)
    return 1e3 * min(times[1] - times[0], times[3] - times[2]) / (tokens - 1)


def host_syncs(engine, requests) -> dict:
    """The calls that make the host wait for the device while ``engine.generate(requests)`` runs (PyTorch's
    CUDA sync debug mode), by source line, against the steps run: with ``overlap_steps`` a decode step should
    wait only where it reads the step before it (CUDA only; empty on the CPU)."""
    if not torch.cuda.is_available():
        return {}
    import warnings
    from collections import Counter

    steps, prefills = engine.steps, engine.prefills
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            engine.generate(requests)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return {"steps": engine.steps - steps, "prefills": engine.prefills - prefills, "waits": sum(where.values()),
            "by_line": dict(where.most_common(12))}


def warm_up(engine, log) -> dict:
    """Capture the engine's graphs; a capture that fails leaves that part eager (and says so)."""
    errors = {}
    for _ in range(3):
        try:
            return {**engine.warm_up(), **errors}
        except Exception as err:  # noqa: BLE001 - measure what works rather than nothing
            message = f"{type(err).__name__}: {err}"[:1000]
            torch.cuda.synchronize()
            decoder = engine.decoder
            if engine._image_graphs is not None:
                errors["vision_graphs_error"], engine._image_graphs = message, None
            elif engine.packed:
                errors["packed_graphs_error"], decoder._graphs = message, None
            elif decoder._prefill_graphs is not None:
                errors["prefill_graphs_error"], decoder._prefill_graphs = message, None
            else:
                errors["decode_graphs_error"] = message
                decoder.use_graphs, decoder._graphs = False, {}
            log(f"graph capture FAILED ({message[:200]}): that part stays eager")
    return errors


#: The engines compared: the packed decoder (arrivals' prompts in the running rows' pass) with each decode row
#: attending over its own length (``varlen``: the Triton kernel) or as the slot decoder's (``packed``: masked
#: sdpa up to the longest row's length bucket), the same over an FP8 KV cache (``fp8``), and the slot decoder
#: (prefill apart, prompts padded to 64-token steps, graphs per shape).
#: Each is the ``emola-7b`` profile's ``inference`` section with these changes; the FP8 cache, half the bytes, holds
#: 64 requests of the profile's context where the model-dtype cache holds 32 beside the weights on an 80 GB card.
ENGINES = {"varlen": {"packed_prefill": True, "decode_attention": "varlen"},
           "fp8": {"packed_prefill": True, "decode_attention": "varlen", "kv_cache_dtype": "float8_e4m3fn",
                   "max_batch": 64},
           "packed": {"packed_prefill": True, "decode_attention": "sdpa"},
           "slot": {"packed_prefill": False, "decode_attention": "sdpa", "prefill_bucket": 64}}
#: What a GPU run compares unless told: the emola-7b setting first, its fallback (no kernel), the FP8 cache.
DEFAULT_ENGINES = ("varlen", "slot", "fp8")


def engine_run(model, s: dict, cfg, name: str, log, dry_run: bool, overlap_ab: bool = True, gate=None,
               gate_only: bool = False) -> dict:
    """One engine on ``model``: graphs, where a step's time goes, batch 1, the closed loops, the evaluate stage
    (each again without overlapped steps, under ``without_overlap``, when ``overlap_ab``)."""
    from emola.engine import PUBLISHED_GENERATION, GenerationRequest, InferenceEngine

    result: dict = {"config": {k: getattr(cfg, k) for k in ("packed_prefill", "decode_attention", "kv_cache_dtype",
                                                           "prefill_bucket", "max_batch", "max_context",
                                                           "max_prefill_tokens")}}
    started = time.perf_counter()
    engine = InferenceEngine(model, cfg, eos_token_id=EOS, pad_token_id=PAD)
    result["load_merge_s"] = round(time.perf_counter() - started, 2)
    result["packed"] = engine.packed
    if engine.packed:
        result["prompt_kernel"], result["rows"] = engine.decoder.kernel, engine.decoder.rows
    if engine.fallback:
        result["fallback"] = engine.fallback
        log(f"[{name}] FELL BACK: {engine.fallback}")
    started = time.perf_counter()
    result["graphs"] = warm_up(engine, log)
    result["warm_up_s"] = round(time.perf_counter() - started, 2)
    log(f"[{name}] merge {result['load_merge_s']} s, graphs {result['graphs']} captured in {result['warm_up_s']} s")
    if gate is not None:   # before any of this engine's timings; a failure ends the run with no timings written
        gate.check(engine, name)
    if gate_only:
        del engine
        clear()
        return result
    span = min(s["context"], 768)
    sizes = [n for n in ([1, 8, 32, 64] if not dry_run else [1, 8]) if n <= cfg.max_batch]
    profile = {"span": span, "decode_ms": decode_profile(engine, sizes, span),
               "prefill_ms": {n: prefill_ms(engine, s, n) for n in (1, 8)}}
    if engine.packed:
        profile["mixed_ms"] = mixed_profile(engine, s, min(31, cfg.max_batch - 1), span)
    try:
        profile["rope_store_ms"] = rope_profile(engine, [1, min(32, cfg.max_batch)])
    except Exception as err:  # noqa: BLE001 - a side measurement: the engine's own numbers still come
        profile["rope_store_ms"] = {"error": f"{type(err).__name__}: {err}"[:300]}
        if dry_run:
            raise
    result["rope_kernel"] = engine.decoder.rope_kernel
    result["profile"] = profile
    log(f"[{name}] decode step ms at position {span - 1}: {profile['decode_ms']}; prefill ms (1 and 8 prompts, "
        f"vision included): {profile['prefill_ms']}" + (f"; mixed step ms: {profile['mixed_ms']}" if engine.packed
                                                        else "")
        + f"; RoPE and cache writes, ms per step (kernel in use: {result['rope_kernel']}): {profile['rope_store_ms']}")
    from emola.engine.gate import TopTokens

    sample = request_mix(s, 4, seed=99, engine_cls=GenerationRequest)
    for r in sample:
        r.max_new_tokens = 12
    engine.logits_probe = top = TopTokens(5)
    try:   # greedy, with each position's five best tokens: compared across engines (vLLM's rule)
        result["sample_tokens"] = [g.token_ids for g in engine.generate(sample)]
    finally:
        engine.logits_probe = None
    result["sample_top"] = [top.of(r) for r in sample]
    # Each measurement with the engine's steps overlapped (the setting) and read one at a time, back to back:
    # the second set under "without_overlap".
    modes = [(True, result)] + ([(False, result.setdefault("without_overlap", {}))] if overlap_ab else [])
    for overlap, into in modes:
        engine.overlap = overlap
        into["ms_per_token_batch1"] = round(engine_ms_per_token(engine, s, 64 if not dry_run else 16), 3)
        log(f"[{name}] engine, batch 1{'' if overlap else ', steps not overlapped'}: "
            f"{into['ms_per_token_batch1']:.2f} ms/token")
    engine.overlap = True
    result["host_syncs"] = host_syncs(engine, request_mix(s, 8, seed=5, engine_cls=GenerationRequest))
    if result["host_syncs"]:
        log(f"[{name}] the host waited for the device {result['host_syncs']['waits']} times in "
            f"{result['host_syncs']['steps']} steps ({result['host_syncs']['prefills']} with arrivals): "
            f"{result['host_syncs']['by_line']}")
    engine.start()
    for overlap, into in modes:
        into["concurrent"] = []
    loads = [c for c in s["concurrency"] if c <= cfg.max_batch]   # what the engine's slots hold in flight
    target = max(c for c in loads if c <= 32)
    for c in loads:   # not overlapped: at the target's load only (the run stays within minutes)
        for overlap, into in modes if c == target else modes[:1]:
            engine.overlap = overlap
            row = closed_loop(engine, request_mix(s, 4 * c, seed=c, engine_cls=GenerationRequest), c)
            log(f"[{name}] {c:3d} requests in flight{'' if overlap else ', not overlapped'}: "
                f"{row['tokens_per_s']:8.0f} tokens/s steady ({row['overall_tokens_per_s']:.0f} with ramp and drain; "
                f"time to first token {row['ttft_ms']['p50']} ms median, {row['ttft_ms']['p95']} p95; "
                f"{row['requests']} requests, {row['tokens']} tokens, {row['seconds']} s, {row['prefills']} prefills, "
                f"{row['decode_steps']} steps)")
            into["concurrent"].append(row)
    engine.stop()   # back to the offline path for the evaluate-stage run
    requests = request_mix(s, s["requests"], seed=7, engine_cls=GenerationRequest)
    for r in requests:   # the stage's published sampling (on CUDA, overlapped: every row through the draw)
        r.temperature, r.top_p = PUBLISHED_GENERATION.temperature, PUBLISHED_GENERATION.top_p
    for overlap, into in modes:
        engine.overlap = overlap
        sync()
        started = time.perf_counter()
        outputs = engine.generate(requests)
        sync()
        elapsed = time.perf_counter() - started
        into["evaluate"] = {"answers": len(outputs), "tokens": sum(len(o.token_ids) for o in outputs),
                            "seconds": round(elapsed, 2), "answers_per_s": round(len(outputs) / elapsed, 2),
                            "tokens_per_s": round(sum(len(o.token_ids) for o in outputs) / elapsed, 1),
                            "max_batch": cfg.max_batch, "graphs_after": engine.decoder.graphs
                            if engine.packed else len(engine.decoder._graphs)}
        log(f"[{name}] evaluate stage (generate, {len(outputs)} answers, max batch {cfg.max_batch}"
            f"{'' if overlap else ', not overlapped'}): {into['evaluate']['answers_per_s']:.2f} answers/s, "
            f"{into['evaluate']['tokens_per_s']:.0f} tokens/s")
    engine.overlap = True
    if torch.cuda.is_available():
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if engine.packed and engine.decoder.rows == "varlen" and torch.cuda.is_available():
        from emola.engine.decode_kernel import tuned_tiles

        result["decode_tiles"] = tuned_tiles()   # the autotuner's choices so far (all varlen engines)
    del engine, outputs
    clear()
    return result


def inference(dry_run: bool, log, baseline: bool = True, engines: tuple[str, ...] = tuple(ENGINES),
              overlap_ab: str = "first", gate_only: bool = False) -> dict:
    """Every engine of ``engines`` on one model, side by side, each through the correctness gate before its
    timings (``gpu_gate``; ``gate_only``: no timings); the first (``overlap_ab`` "first") or every one ("all")
    also without overlapped steps. Raises :class:`gpu_gate.GateFailed` when the gate fails."""
    from emola.config.schema import InferenceConfig
    from emola.engine import InferenceEngine

    s = shape(dry_run)
    result: dict = {"engines": {}}
    model = build(s, dry_run)
    tokens = 16 if dry_run else 32
    if baseline and not gate_only:
        result["hf_generate_unmerged_ms_per_token"] = round(hf_generate_ms_per_token(model, s, tokens), 3)
        log(f"old path (transformers generate, LoRA unmerged), batch 1: "
            f"{result['hf_generate_unmerged_ms_per_token']:.1f} ms/token")
    if dry_run:
        cfg = InferenceConfig(device=s["device"], merge_lora=True, max_batch=s["max_batch"], max_context=s["context"],
                              max_prefill_tokens=8192, length_bucket=32, cuda_graphs=True, overlap_steps=True,
                              decode_attention="sdpa", packed_prefill=False, kv_cache_dtype="auto",
                              kernel_fallback=False, prefill_bucket=None)
    else:
        cfg = s["inference"].model_copy(update={"device": "cuda", "kernel_fallback": False})
    if dry_run and not gate_only:   # the merge alone: the same engine without merging
        unmerged = InferenceEngine(build(s, dry_run), cfg.model_copy(update={"merge_lora": False}), eos_token_id=EOS,
                                   pad_token_id=PAD)
        result["engine_unmerged_ms_per_token"] = round(engine_ms_per_token(unmerged, s, tokens), 3)
        log(f"engine with LoRA unmerged, batch 1: {result['engine_unmerged_ms_per_token']:.2f} ms/token")
        del unmerged
    model = merge_random_lora(model)
    checks = kernel_checks(s, s["context"], log)
    gate = Gate(model, s, lambda rng: prompt_ids(s, rng), log)
    gate.report["kernel_checks"] = checks
    result["gate"] = gate.report
    if any(not row["passed"] for row in checks):
        raise GateFailed("a kernel failed its check at the production shape", gate.report)
    if s["device"] == "cuda":   # CUDA-graph replay against eager: the first engine without graphs
        eager = InferenceEngine(model, cfg.model_copy(update={**ENGINES[engines[0]], "cuda_graphs": False}),
                                eos_token_id=EOS, pad_token_id=PAD)
        gate.check(eager, f"{engines[0]} (no CUDA graphs)")
        del eager
        clear()
    if not gate_only and any(ENGINES[name].get("decode_attention") == "varlen" for name in engines):
        rows = min(32, max(s["concurrency"]))
        try:
            result["row_attention"] = row_attention_profile(s, rows, log)
        except Exception as err:  # noqa: BLE001 - the engines still run
            result["row_attention"] = {"error": f"{type(err).__name__}: {err}"}
            log(f"decode-row attention profile FAILED: {type(err).__name__}: {err}")
            if dry_run:
                raise
    for name in engines:
        update = dict(ENGINES[name])
        if dry_run and update.get("prefill_bucket"):
            update["prefill_bucket"] = 16
        if dry_run:
            update.pop("max_batch", None)
        try:
            result["engines"][name] = engine_run(model, s, cfg.model_copy(update=update), name, log, dry_run,
                                                 overlap_ab=overlap_ab == "all" or name == engines[0], gate=gate,
                                                 gate_only=gate_only)
        except GateFailed:
            raise
        except Exception as err:  # noqa: BLE001 - the other engines still run; the error is in the file
            result["engines"][name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-4000:]}
            log(f"[{name}] FAILED: {type(err).__name__}: {err}")
            if dry_run:
                raise
            clear()
    rows = [(name, r) for name, r in result["engines"].items() if "sample_tokens" in r]
    if len(rows) > 1:   # greedy answers of each engine against the first's (bf16 rounding may flip a near tie)
        from emola.engine.gate import greedy_close

        first = rows[0][1]
        for name, r in rows[1:]:
            same = [a == b for a, b in zip(first["sample_tokens"], r["sample_tokens"])]
            compared = [greedy_close(a, a_top, b, b_top) for a, a_top, b, b_top in zip(
                first["sample_tokens"], first["sample_top"], r["sample_tokens"], r["sample_top"])]
            result[f"same_tokens_{rows[0][0]}_{name}"] = {
                "identical_answers": sum(same), "of": len(same), "agreeing_prefix": [n for _, n in compared],
                "close_by_top5": sum(ok for ok, _ in compared)}
            log(f"greedy answers of {rows[0][0]} and {name}: {sum(same)} of {len(same)} identical, "
                f"{sum(ok for ok, _ in compared)} close (where they part, each token in the other's top 5; tokens "
                f"before: {[n for _, n in compared]})")
    if rows:
        log("engine          | ms/token, 1 | " + " | ".join(f"tok/s @{c}" for c in s["concurrency"])
            + " | evaluate answers/s")
        for name, r in rows:
            for label, into in ((name, r), (f"{name}, not ovl", r.get("without_overlap"))):
                if into:
                    rate = {row["concurrency"]: f"{row['tokens_per_s']:9.0f}" for row in into["concurrent"]}
                    log(f"{label:15s} | {into['ms_per_token_batch1']:11.2f} | "
                        + " | ".join(rate.get(c, " " * 9) for c in s["concurrency"])
                        + f" | {into['evaluate']['answers_per_s']:.2f}")
    del model
    clear()
    return result


# ------------------------------------------------------------------------- training
def train_batch(s: dict, kind: str, packing: bool, seed: int):
    """One collated micro batch of synthetic samples: ``kind`` emotion, au (fixed answer lengths) or mixed."""
    from emola.model.processing import IGNORE_INDEX
    from emola.train.examples import collate

    rng = np.random.default_rng(seed)
    v = s["llava"].vision_config
    llava = s["llava"]
    vocab = min(llava.text_config.vocab_size, llava.image_token_index) - 1
    ids, labels = [], []
    for i in range(s["micro_batch"]):
        if kind == "mixed":
            answer = int(rng.integers(*(s["emotion_answer"] if i % 2 else s["au_answer"])))
        else:
            answer = s["train_answer"][kind]
        prompt = ([BOS] + rng.integers(3, vocab, s["text"] - 1).tolist() + [llava.image_token_index] * image_tokens(s)
                  + [llava.image_token_index + 2])
        reply = rng.integers(3, vocab, answer).tolist()
        ids.append(np.array(prompt + reply))
        labels.append(np.array([IGNORE_INDEX] * len(prompt) + reply))
    holder = lambda xs: np.array(xs + [None], dtype=object)[:-1]  # noqa: E731 - ragged object array
    batch = {"input_ids": holder(ids), "labels": holder(labels),
             "pixel_values": rng.normal(size=(s["micro_batch"], 3, v.image_size, v.image_size)).astype(np.float32),
             "prior": rng.normal(size=(s["micro_batch"], s["prior_dim"])).astype(np.float32)}
    return collate(batch, PAD, 2048 if packing else None)


def useful_flops(s: dict, lengths: list[int], answer_tokens: int, lora_r: int) -> float:
    """The MFU numerator of one micro batch: the work a LoRA step must do, nothing recomputed or wasted.

    Per token of every sample, the frozen decoder's linears forward and their input gradients (no weight
    gradients): 4 x N_linear; the LoRA adapters forward, input and weight gradients: 6 x r x (d_in + d_out)
    per adapted linear. Causal attention per layer and sample of n tokens: QK^T and PV over the n(n+1)/2
    visible pairs, forward and input gradients (twice the forward): 3 x 2 x 2 x n(n+1)/2 x hidden. The LM
    head forward and input gradient on the answer tokens only (the others carry no loss): 4 x vocab x hidden
    each. The frozen vision tower (up to the layer LLaVA reads) and projector forward, per image: 2 x N_vision
    per patch token and its attention, 2 x 2 x tokens^2 x width per layer."""
    text, vision = s["llava"].text_config, s["llava"].vision_config
    hidden, layers, inner = text.hidden_size, text.num_hidden_layers, text.intermediate_size
    head_dim = hidden // text.num_attention_heads
    kv = text.num_key_value_heads * head_dim
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),   # q, k, v, o
              (hidden, inner), (hidden, inner), (inner, hidden)]                 # gate, up, down
    n_linear = layers * sum(a * b for a, b in shapes)
    lora = layers * sum(6 * lora_r * (a + b) for a, b in shapes)
    width, tokens = vision.hidden_size, image_tokens(s)
    feature = s["llava"].vision_feature_layer   # the layer LLaVA reads (-2: the ones after it are not needed)
    used = feature + 1 if feature >= 0 else vision.num_hidden_layers + feature + 1
    n_vision = used * (4 * width ** 2 + 2 * width * vision.intermediate_size)
    n_projector = width * hidden + hidden * hidden
    per_image = 2 * (n_vision + n_projector) * tokens + used * 4 * tokens ** 2 * width
    flops = sum(n * (4 * n_linear + lora) + layers * 6 * n * (n + 1) * hidden for n in lengths)
    return flops + answer_tokens * 4 * text.vocab_size * hidden + len(lengths) * per_image


def train_config(s: dict, dry_run: bool, overrides: dict):
    from emola.config import load_config

    cfg = load_config(ROOT / "params.yaml", {"profile": "tiny" if dry_run else "emola-7b"}).train
    base = {"micro_batch": s["micro_batch"], "grad_accum": 1, "use_gpu": not dry_run, "au_code_weight": 1.0,
            "prior_aux_weight": 0.0, "readout_weight": 0.0, "precision": "fp32" if dry_run else "bf16",
            "zero_stage": 2}
    return cfg.model_copy(update={**base, **overrides})


def run_variant(s: dict, dry_run: bool, name: str, overrides: dict, engine: str, kind: str, log) -> dict:
    from emola.train.step import TrainStep

    clear()   # compiled layer code is kept across variants: the same layer graph compiles once
    held = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    cfg = train_config(s, dry_run, overrides)
    model = build(s, dry_run)
    step = TrainStep(model, cfg, total_steps=1000, engine=engine)
    batches = [train_batch(s, kind, cfg.packing, seed) for seed in range(3)]
    warm, timed = s["steps"]
    started = time.perf_counter()
    for i in range(warm):
        step(batches[i % 3])
    sync()
    first = time.perf_counter() - started
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    peaks = []   # after each step: checkpointing auto resets the peak at every micro batch
    for i in range(timed):
        metrics = step(batches[i % 3])
        if torch.cuda.is_available():
            peaks.append(torch.cuda.max_memory_allocated())
    sync()
    per_step = (time.perf_counter() - started) / timed
    tokens = float(np.mean([int(b["num_tokens"]) for b in batches]))
    from emola.model.processing import IGNORE_INDEX

    flops = float(np.mean([useful_flops(s, _sample_lengths(b), int((b["labels"] != IGNORE_INDEX).sum()),
                                        lora_config(dry_run).r) for b in batches]))
    row = {"variant": name, "engine": engine, "samples": kind, **{k: v for k, v in overrides.items()},
           "s_per_step": round(per_step, 3), "tokens_per_s": round(tokens / per_step),
           "useful_tflop_per_step": round(flops / 1e12, 6), "mfu": round(flops / per_step / PEAK_FLOPS, 4),
           "first_steps_s": round(first, 1), "loss": round(metrics.loss, 4),
           "rows_x_width": list(batches[0]["input_ids"].shape)}
    if torch.cuda.is_available():
        row["peak_memory_gib"] = round(max(peaks) / 2**30, 1)
        row["fits_80gb_card"] = max(peaks) <= H100_BYTES
        row["held_at_start_gib"] = round(held, 1)   # left by earlier variants: counted in the peak
    if step.memory is not None:
        m = step.memory
        row["auto"] = {"intervals": {str(k): v for k, v in step.intervals.items()},
                       "per_layer_kib_per_token": round(m.per_layer / 1024, 1),
                       "other_kib_per_token": round(m.other / 1024, 1), "correction": round(m.correction, 3),
                       "budget_gib": round(m.budget / 2**30, 1) if m.budget != float("inf") else None}
    log(f"{name:58s} {row['s_per_step']:7.3f} s/step {row['tokens_per_s']:8d} tokens/s  MFU {100 * row['mfu']:5.1f}%"
        + (f"  peak {row['peak_memory_gib']:6.1f} GiB" if "peak_memory_gib" in row else "")
        + f"  (first {warm} steps {row['first_steps_s']} s)")
    if step.engine is not None and hasattr(step.engine, "destroy"):
        step.engine.destroy()   # DeepSpeed's engine keeps its buffers past del: later variants' peaks would count them
    del step, model, batches
    clear()
    return row


def _sample_lengths(batch) -> list[int]:
    """Per-sample token counts of a collated batch (padded rows or packed rows)."""
    if "attention_mask" in batch:
        return batch["attention_mask"].sum(1).tolist()
    lengths = []
    for row in batch["position_ids"].tolist():
        starts = [i for i, p in enumerate(row) if p == 0] + [len(row)]
        lengths += [b - a for a, b in zip(starts, starts[1:])]
    # the padding after a row's last sample is a segment of its own: drop it by the real token count
    real = int(batch["num_tokens"])
    lengths.sort(reverse=True)
    while sum(lengths) > real:
        lengths.pop()
    return lengths


def training(dry_run: bool, log, budget_s: float, only: set[str] | None = None) -> dict:
    s = shape(dry_run)
    torch._dynamo.config.recompile_limit = 64   # variants differ in checkpointing: several graphs per layer code
    if not dry_run:
        from emola.train.step import init_single_process_group

        init_single_process_group("nccl")
    else:
        import os

        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from emola.train.step import init_single_process_group

        init_single_process_group("gloo")
    published = {"checkpointing": "all", "compile": False, "sparse_logits": False, "fused_adam": False, "packing": False}
    # On the CPU (dry run) compiling costs tens of seconds per graph: one compiled variant shows the path works.
    fast = {"sparse_logits": True, "fused_adam": True, "compile": not dry_run, "packing": False}
    plan = [
        # The production path first: the emola-7b train section as it is, through the DeepSpeed engine.
        ("recipe", "recipe: the emola-7b train section, DeepSpeed ZeRO-2", {}, "deepspeed", "mixed"),
        ("published", "published step: eager, every layer recomputed, full logits", published, "plain", "emotion"),
        ("sparse", "+ sparse logits", {**published, "sparse_logits": True}, "plain", "emotion"),
        ("fused", "+ fused AdamW", {**published, "sparse_logits": True, "fused_adam": True}, "plain", "emotion"),
        ("compiled_all", "+ compiled decoder blocks",
         {**published, "sparse_logits": True, "fused_adam": True, "compile": True}, "plain", "emotion"),
    ]
    for policy in ("none", "every_other", "every_fourth", "selective"):   # the blocks compile once for all
        plan.append((f"compiled_{policy}", f"compiled, checkpointing {policy}", {**fast, "checkpointing": policy},
                     "plain", "emotion"))
    # Checkpointing sized to the memory: this GPU's own budget, and an H100's (its memory less 4 GiB).
    h100 = {**fast, "checkpointing": "auto", "memory_budget_gib": 75.0 if not dry_run else 0.01}
    plan += [("compiled_auto", "compiled, checkpointing auto (this GPU)", {**fast, "checkpointing": "auto"},
              "plain", "emotion"),
             ("compiled_auto_h100", "compiled, checkpointing auto (H100 budget)", h100, "plain", "emotion"),
             ("au_auto_h100", "AU-length, checkpointing auto (H100 budget)", h100, "plain", "au"),
             ("au_every_other", "AU-length, compiled, every other layer", {**fast, "checkpointing": "every_other"},
              "plain", "au"),
             ("mixed_auto_h100", "mixed lengths, checkpointing auto (H100 budget)", h100, "plain", "mixed")]
    started = time.perf_counter()
    rows, failures = [], []

    def attempt(key, name, overrides, engine, kind):
        if only and key not in only:
            return None
        if time.perf_counter() - started > budget_s:
            failures.append({"id": key, "variant": name, "skipped": f"time budget of {budget_s:.0f} s spent"})
            log(f"{name:58s} skipped: time budget spent")
            return None
        try:
            row = {"id": key, **run_variant(s, dry_run, name, overrides, engine, kind, log)}
            rows.append(row)
            return row
        except Exception as err:  # noqa: BLE001 - one failing lever must not hide the others' numbers
            failures.append({"id": key, "variant": name, "error": f"{type(err).__name__}: {err}"[:2000],
                             "trace": traceback.format_exc()[-3000:]})
            log(f"{name:58s} FAILED: {type(err).__name__}: {str(err)[:200]}")
            clear()
            return None

    for item in plan:
        attempt(*item)
    # The fastest policy that fits an H100 becomes the base of the rest.
    fits = [r for r in rows if r.get("peak_memory_gib", 0) * 2**30 <= H100_BYTES and r["id"].startswith("compiled_")]
    best = min(fits, key=lambda r: r["s_per_step"]) if fits else None
    best_overrides = {**fast, "checkpointing": best["checkpointing"]} if best else {**fast, "checkpointing": "all"}
    log(f"best that fits an H100: {best['variant'] if best else 'none measured'}")
    attempt("mixed_padded", "best, mixed lengths, padded", best_overrides, "plain", "mixed")
    attempt("mixed_packed", "best, mixed lengths, packed", {**best_overrides, "packing": True}, "plain", "mixed")
    attempt("au", "best, AU-length samples", best_overrides, "plain", "au")
    # DeepSpeed last: its engine keeps memory after it is dropped, which later variants' peaks would count.
    attempt("ds_zero2", "best, DeepSpeed ZeRO-2 (fused AdamW)", {**best_overrides, "zero_stage": 2, "fused_adam": True},
            "deepspeed", "emotion")
    attempt("ds_auto_h100", "DeepSpeed ZeRO-2, checkpointing auto (H100 budget)", {**h100, "zero_stage": 2},
            "deepspeed", "au")
    attempt("ds_zero3", "published engine: DeepSpeed ZeRO-3, eager, all layers", {**published, "zero_stage": 3},
            "deepspeed", "emotion")
    return {"variants": rows, "failures": failures, "best": best_overrides}


# ----------------------------------------------------------------------------- main
def versions() -> dict:
    """The versions a GPU number depends on (None: not installed)."""
    import importlib.metadata

    out = {"python": sysplatform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for package in ("transformers", "peft", "deepspeed", "triton", "ray"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def card() -> dict:
    if not torch.cuda.is_available():
        return {"name": "cpu"}
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}


def commit() -> str:
    """The commit measured: ``EMOLA_COMMIT`` (a copy of the tree without git), else git's HEAD (``+dirty`` with
    uncommitted changes), else unknown."""
    import os
    import subprocess

    if os.environ.get("EMOLA_COMMIT"):
        return os.environ["EMOLA_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: Raw results of GPU runs, one file each, written only by this script (the summary reads them).
RUNS = ROOT / "benchmarks/results/gpu/runs"
#: Where a dry run writes unless told (never among the GPU runs).
DRY_RUN_OUT = ROOT / "build/benchmarks/gpu-dry-run.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["inference", "training", "all"], default="all")
    parser.add_argument("--dry-run", action="store_true", help="the same code on a shrunken model, on the CPU")
    parser.add_argument("--gate-only", action="store_true",
                        help="the correctness gate only: kernel checks and every engine against the reference")
    parser.add_argument("--training-budget-s", type=float, default=260.0,
                        help="start no new training variant after this many seconds")
    parser.add_argument("--variants", help="comma-separated training variant ids to run (default: all)")
    parser.add_argument("--no-baseline", action="store_true", help="skip timing the old generate path")
    parser.add_argument("--engines", help=f"comma-separated inference engines to compare, of {','.join(ENGINES)} "
                                          f"(default: {','.join(DEFAULT_ENGINES)}; --dry-run: all)")
    parser.add_argument("--overlap-ab", choices=["first", "all"], default="first",
                        help="which engines also run without overlapped steps (default: the first)")
    parser.add_argument("--out", help=f"the run's JSON (default: a new file in --runs-dir; "
                                      f"--dry-run: {DRY_RUN_OUT.relative_to(ROOT)})")
    parser.add_argument("--runs-dir", default=str(RUNS),
                        help=f"the folder of raw runs a GPU run adds its file to (default: {RUNS.relative_to(ROOT)})")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run for the CPU version")
    torch.backends.cuda.matmul.allow_tf32 = True
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    info = card()
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    out = {"schema": "emola-gpu-run/1", "written_by": "benchmarks/gpu.py", "date": stamp, "commit": commit(),
           "card": info, "dry_run": args.dry_run, "versions": versions(),
           "command": " ".join(["python", "benchmarks/gpu.py", *sys.argv[1:]])}
    log(f"# {info['name']}, torch {torch.__version__}, transformers {out['versions']['transformers']}"
        + (" (dry run: shrunken model)" if args.dry_run else "") + f", commit {out['commit'][:12]}")
    if args.out:
        path = Path(args.out)
    elif args.dry_run:
        path = DRY_RUN_OUT
    else:
        slug = "".join(c if c.isalnum() else "-" for c in info["name"]).strip("-").lower()
        path = Path(args.runs_dir) / f"{stamp}-{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        path.write_text(json.dumps(out, indent=2) + "\n")

    try:
        if args.part in ("inference", "all"):
            engines = (tuple(args.engines.split(",")) if args.engines
                       else tuple(ENGINES) if args.dry_run else DEFAULT_ENGINES)
            try:
                out["inference"] = inference(args.dry_run, log, baseline=not args.no_baseline, engines=engines,
                                             overlap_ab=args.overlap_ab, gate_only=args.gate_only)
            except GateFailed:
                raise
            except Exception as err:  # noqa: BLE001 - the training part still runs; the error is in the file
                out["inference"] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-4000:]}
                log(f"inference FAILED: {type(err).__name__}: {err}")
                if args.dry_run:
                    raise
            out["gate"] = out["inference"].pop("gate", None) if isinstance(out.get("inference"), dict) else None
            if out["gate"] is not None:
                out["gate"]["passed"] = True
        if args.part in ("training", "all") and not args.gate_only:
            only = set(args.variants.split(",")) if args.variants else None
            out["training"] = training(args.dry_run, log, args.training_budget_s, only)
            if args.dry_run and out["training"]["failures"]:
                raise SystemExit(f"training variants failed: {out['training']['failures']}")
    except GateFailed as failed:
        # No timing of this run is kept: the file holds the gate's findings only.
        out.pop("inference", None)
        out["gate"] = {**failed.report, "passed": False, "error": str(failed)}
        save()
        log(f"GATE FAILED: {failed}; no timings written; the gate's numbers are in {path}")
        raise SystemExit(1) from None
    save()
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
