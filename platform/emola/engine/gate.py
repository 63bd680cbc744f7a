"""The engine against a reference forward, teacher-forced: does each fast path compute the model?

Every request carries its answer (``forced_ids``): the engine feeds those tokens whatever it
would choose, and at each answer position its next-token log-probabilities are compared with
those of a reference, transformers' eager forward of the same weights in float32 (LoRA
merged), over the prompt and the same answer. Nothing depends on near-ties the way free-running
token comparisons do: a path is measured at every position it computes.

For each path (a decoder, split counts through the batch sizes it runs, CUDA-graph replay or
eager, overlapped steps, an FP8 cache) a :class:`PathCheck` gives:

- ``max_logprob_diff``: the largest ``|log p_engine - log p_reference|`` over the vocabulary at
  any position;
- ``agreement``: the share of positions whose top token is the reference's;
- ``decided_disagreements``: positions whose top token differs although the reference's best
  token leads its second by more than twice the allowed difference (a disagreement no rounding
  within tolerance explains).

A :class:`Tolerance` bounds the difference by a multiple of what transformers' own forward in
the model's dtype differs from the float32 reference on the same requests (:func:`calibrate`),
never below a floor; a decided disagreement always fails.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from emola.engine.engine import GenerationRequest, InferenceEngine


@dataclass(frozen=True)
class Tolerance:
    """``max_logprob_diff`` allowed: ``scale`` x transformers' own difference in the model's dtype, at least
    ``floor``."""

    scale: float
    floor: float

    def bound(self, native: float) -> float:
        return max(self.floor, self.scale * native)


#: The model's dtype through the engine's kernels (reduction orders and fused operations of their own).
SAME_DTYPE = Tolerance(scale=3.0, floor=1e-3)
#: An FP8 KV cache: keys and values rounded to 3 mantissa bits after the prompt (lossy by design).
FP8_CACHE = Tolerance(scale=12.0, floor=0.05)


@dataclass
class PathCheck:
    """One path's teacher-forced comparison with the reference."""

    path: str
    requests: int
    positions: int
    max_logprob_diff: float
    mean_logprob_diff: float
    agreement: float
    decided_disagreements: int
    bound: float
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_logprob_diff <= self.bound and self.decided_disagreements == 0

    def line(self) -> str:
        return (f"{'pass' if self.passed else 'FAIL'}  {self.path:44s} {self.requests:3d} requests "
                f"{self.positions:5d} positions  max |dlogp| {self.max_logprob_diff:.3g} (bound {self.bound:.3g})  "
                f"mean {self.mean_logprob_diff:.3g}  top-1 {100 * self.agreement:.2f}%  "
                f"decided disagreements {self.decided_disagreements}")

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def float32_reference(model) -> torch.nn.Module:
    """A float32 copy of ``model`` (an :class:`~emola.model.modeling.EmolaForConditionalGeneration`, LoRA merged
    or none) with transformers' eager attention, on ``model``'s device."""
    reference = copy.deepcopy(model).float().eval()
    _set_attention(reference.base_llava, "eager")
    return reference


@torch.no_grad()
def reference_logprobs(reference, requests: Sequence[GenerationRequest]) -> list[torch.Tensor]:
    """For each request, ``(len(forced_ids), vocab)`` float32 log-probabilities of every answer token given the
    prompt and the answer before it, from ``reference``'s forward (one request at a time, on its device). TF32
    is off while it runs: float32 means float32."""
    device = next(reference.parameters()).device
    dtype = next(reference.parameters()).dtype
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        out = []
        for request in requests:
            forced = list(request.forced_ids or [])
            if not forced:
                raise ValueError("every request of a teacher-forced check carries forced_ids")
            ids = torch.tensor([list(request.prompt_ids) + forced[:-1]], device=device)
            kwargs = {}
            if request.pixel_values is not None:
                kwargs["pixel_values"] = torch.as_tensor(request.pixel_values)[None].to(device, dtype)
            if request.prior is not None:
                kwargs["prior"] = torch.as_tensor(request.prior, dtype=torch.float32)[None].to(device)
            logits = reference(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).logits[0]
            out.append(logits[len(request.prompt_ids) - 1:].float().log_softmax(-1))
        return out
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


class _Probe:
    """Compares each step's logits with the reference's, on the device (no host wait during the run)."""

    def __init__(self, references: dict[int, torch.Tensor]):
        self.references = references
        self.diffs: list[torch.Tensor] = []
        self.means: list[torch.Tensor] = []
        self.agree: list[torch.Tensor] = []
        self.margins: list[torch.Tensor] = []
        self.seen: list[tuple[int, int]] = []

    def __call__(self, rows: list[tuple[GenerationRequest, int]], logits: torch.Tensor) -> None:
        want = torch.stack([self.references[id(request)][index] for request, index in rows]).to(logits.device)
        got = logits.float().log_softmax(-1)
        diff = (got - want).abs()
        self.diffs.append(diff.amax(-1))
        self.means.append(diff.mean(-1))
        self.agree.append(got.argmax(-1) == want.argmax(-1))
        best2 = want.topk(2, dim=-1).values
        self.margins.append(best2[:, 0] - best2[:, 1])
        self.seen += [(id(request), index) for request, index in rows]

    def result(self, path: str, requests: int, bound: float, details: dict) -> PathCheck:
        if not self.diffs:
            raise RuntimeError(f"{path}: the engine computed no logits")
        diffs, means = torch.cat(self.diffs), torch.cat(self.means)
        agree, margins = torch.cat(self.agree), torch.cat(self.margins)
        decided = margins > 2 * bound
        expected = sum(len(r) for r in self.references.values())
        if len(set(self.seen)) != expected or len(self.seen) != expected:
            raise RuntimeError(f"{path}: the engine computed {len(self.seen)} answer positions "
                               f"({len(set(self.seen))} distinct) for {expected}")
        return PathCheck(path=path, requests=requests, positions=int(diffs.numel()),
                         max_logprob_diff=round(float(diffs.max()), 6), mean_logprob_diff=round(float(means.mean()), 7),
                         agreement=round(float(agree.float().mean()), 5),
                         decided_disagreements=int((decided & ~agree).sum()), bound=round(bound, 6), details=details)


def teacher_forced(engine: InferenceEngine, requests: Sequence[GenerationRequest], references: Sequence[torch.Tensor],
                   path: str, bound: float, *, in_flight: int | None = None, details: dict | None = None) -> PathCheck:
    """Run ``requests`` (each with ``forced_ids`` and ``max_new_tokens == len(forced_ids)``) through ``engine`` and
    compare every answer position's log-probabilities with ``references`` (:func:`reference_logprobs`).

    ``in_flight`` None: ``engine.generate`` (the evaluate stage's offline path); a number: the engine's
    scheduler thread with at most that many requests submitted at once (the serving path)."""
    for request, reference in zip(requests, references, strict=True):
        if request.forced_ids is None or not request.max_new_tokens == len(request.forced_ids) == len(reference):
            raise ValueError("each request forces exactly its max_new_tokens answer tokens, one reference row each")
        if request.stop_at_eos and engine.eos_token_id in request.forced_ids:
            raise ValueError("a forced answer holding the end token needs stop_at_eos False")
    probe = _Probe({id(r): ref for r, ref in zip(requests, references)})
    engine.logits_probe = probe
    try:
        if in_flight is None:
            engine.generate(requests)
        else:
            _closed_loop(engine, requests, in_flight)
    finally:
        engine.logits_probe = None
    return probe.result(path, len(requests), bound, details or {})


def _closed_loop(engine: InferenceEngine, requests: Sequence[GenerationRequest], in_flight: int) -> None:
    """Keep ``in_flight`` requests submitted to the running scheduler until all have finished."""
    import threading

    from emola.engine.engine import Listener

    done = threading.Semaphore(0)
    errors: list[BaseException] = []

    class _Done(Listener):
        def on_finish(self, result, error):
            if error is not None:
                errors.append(error)
            done.release()

    started_here = engine._thread is None
    if started_here:
        engine.start()
    try:
        pending = list(requests)
        for _ in range(min(in_flight, len(pending))):
            engine.submit(pending.pop(0), _Done())
        for _ in range(len(requests)):
            done.acquire()
            if pending:
                engine.submit(pending.pop(0), _Done())
    finally:
        if started_here:
            engine.stop()
    if errors:
        raise errors[0]


def calibrate(model, requests: Sequence[GenerationRequest], references: Sequence[torch.Tensor]) -> float:
    """The largest log-probability difference of transformers' own eager forward of ``model`` in its dtype
    against ``references``: the scale a :class:`Tolerance` multiplies. ``model``'s attention implementation is
    restored afterwards."""
    llava = model.base_llava
    before = llava.config._attn_implementation
    _set_attention(llava, "eager")
    try:
        native = reference_logprobs(model.eval(), requests)
    finally:
        _set_attention(llava, before)
    return max(float((a - b).abs().max()) for a, b in zip(native, references))


def _set_attention(llava, implementation: str | None) -> None:
    if hasattr(llava, "set_attn_implementation") and implementation is not None:
        llava.set_attn_implementation(implementation)
    else:
        llava.config._attn_implementation = implementation


def check_engine(engine: InferenceEngine, requests: Sequence[GenerationRequest], references: Sequence[torch.Tensor],
                 bound: float, name: str, sizes: Sequence[int] = (1, 8, 32, 64)) -> list[PathCheck]:
    """The paths one engine takes, each against the reference: ``generate`` over the first ``n`` requests for each
    of ``sizes`` (answers of mixed lengths end at different steps, so the batch runs every width from ``n`` down
    to one: every decode split count the kernel chooses for them), the largest again with steps read one at a
    time when the engine overlaps them (or overlapped when it does not), and the serving scheduler with as many
    requests in flight as the engine holds. ``engine.overlap`` is left as it was."""
    graphs = "graphs" if getattr(engine.decoder, "use_graphs", False) else "eager"
    overlap = engine.overlap
    checks = []
    try:
        largest = 0
        for n in sizes:
            if n <= len(requests):
                largest = n
                checks.append(teacher_forced(engine, requests[:n], references[:n], f"{name} {graphs}, {n} requests",
                                             bound, details={"overlap": overlap}))
        engine.overlap = not overlap
        checks.append(teacher_forced(engine, requests[:largest], references[:largest],
                                     f"{name} {graphs}, {largest} requests, overlap {engine.overlap}", bound,
                                     details={"overlap": engine.overlap}))
        engine.overlap = overlap
        slots = engine.cfg.max_batch
        checks.append(teacher_forced(engine, requests, references, f"{name} {graphs}, {slots} in flight", bound,
                                     in_flight=slots, details={"overlap": overlap}))
    finally:
        engine.overlap = overlap
    return checks


class TopTokens:
    """A logits probe that keeps each answer position's ``k`` best token ids (free-running comparisons)."""

    def __init__(self, k: int = 5):
        self.k = k
        self.pending: list[tuple[list[tuple[int, int]], torch.Tensor]] = []
        self._found: dict[tuple[int, int], list[int]] | None = None   # (request id, position) -> ids, once read

    def __call__(self, rows: list[tuple[GenerationRequest, int]], logits: torch.Tensor) -> None:
        self.pending.append(([(id(request), index) for request, index in rows], logits.topk(self.k, dim=-1).indices))

    def of(self, request: GenerationRequest) -> list[list[int]]:
        """The request's top ids per answer position, in order (the steps' ids are read back from the device once,
        at the first call)."""
        if self._found is None:
            self._found = {key: best for rows, top in self.pending for key, best in zip(rows, top.tolist())}
        return [best for (owner, _), best in sorted(self._found.items(), key=lambda item: item[0][1])
                if owner == id(request)]


def greedy_close(a: Sequence[int], a_top: Sequence[Sequence[int]], b: Sequence[int],
                 b_top: Sequence[Sequence[int]]) -> tuple[bool, int]:
    """Two greedy answers agree as vLLM's tests require of two implementations: token for token, or, at the first
    position where they part, each one's token among the other's best (after which they continue from different
    text and are not compared). Returns (close, the number of tokens before they part)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return (x in b_top[i] and y in a_top[i]), i
    return True, min(len(a), len(b))
