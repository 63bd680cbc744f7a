"""The inference engine: one EmoLA model, many requests, continuous batching.

Every generating caller goes through :class:`InferenceEngine`: the evaluate stage's
replicas (:meth:`InferenceEngine.generate`, a list of requests run to completion), the
:class:`~emola.analyzer.Analyzer`, and the Serve model deployment (:meth:`start` a
scheduler thread, then :meth:`submit` requests as they arrive).

How a request runs. It waits in a queue until a decode slot is free. At the next step
boundary the new arrivals are prefilled together (their image features and prior token
merged into the prompt embeddings by the model's own ``merge_inputs``), which also gives
each its first token. From then on every step decodes one token for every running request
(:class:`~emola.engine.decoder.SlotDecoder`); a request leaves when it generates the end
token or reaches its own ``max_new_tokens``, and its slot goes to the next arrival. Each
request keeps its own temperature, top-p and seed (:mod:`emola.engine.sampling`), so its
answer does not depend on the company it generates in.

With ``inference.packed_prefill`` the arrivals' prompts go through the running requests'
step instead (:class:`~emola.engine.packed.PackedDecoder`): one pass over the packed tokens
gives every running request its next token and every arrival its first, the decode rows
riding on the prompts' weight reads; attention is per sequence (variable-length kernels).

The model is loaded with LoRA merged into the base weights (``inference.merge_lora``; the
checkpoint on disk is unchanged): an unmerged LoRA layer costs two extra small matrix
products per projection per token.

On CUDA, decode steps replay CUDA graphs (``inference.cuda_graphs``); with
``inference.prefill_bucket`` set, so do prefills: the vision tower for each row bucket
and the decoder for each (rows, padded length). :meth:`InferenceEngine.warm_up` captures
them before the first request.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from emola.config.schema import PUBLISHED_GENERATION, GenerationConfig, InferenceConfig
from emola.engine.attention import kernel_problem
from emola.engine.checks import KernelCheckFailed, KernelProblem
from emola.engine.decode_kernel import CACHE_DTYPES, decode_kernel_problem
from emola.engine.decoder import SlotDecoder, attention_shape, prefill_rows, round_up
from emola.engine.graphs import ShapeGraphs
from emola.engine.packed import PackedDecoder
from emola.engine.rope_kernel import rope_kernel_problem
from emola.engine.sampling import next_tokens

log = logging.getLogger(__name__)

#: Engine settings for library use (``Analyzer``) when no params are given: 8 requests of 2,048 positions
#: (8 GiB of KV cache at the emola-7b shape).
DEFAULT_INFERENCE = InferenceConfig(device="auto", merge_lora=True, max_batch=8, max_context=2048,
                                    max_prefill_tokens=8192, length_bucket=128, cuda_graphs=True, overlap_steps=True,
                                    decode_attention="matmul", packed_prefill=False, kv_cache_dtype="auto",
                                    kernel_fallback=False, prefill_bucket=None)


class PromptTooLong(ValueError):
    """The prompt and the answer it asks for do not fit the model's context."""


class EngineStopped(RuntimeError):
    """The engine was closed, or its scheduler failed, before the request finished."""


@dataclass
class GenerationRequest:
    """One prompt to answer.

    ``prompt_ids``: the full prompt with the ``<image>`` and ``<prior>`` placeholders
    expanded (:meth:`~emola.model.processing.EmolaProcessor.prompt_ids`); ``pixel_values``
    ``(3, S, S)`` and ``prior`` ``(prior_dim,)`` when the model uses them.
    ``stop_at_eos`` False generates exactly ``max_new_tokens`` (benchmarks). ``forced_ids``: teacher forcing,
    answer token ``i`` is ``forced_ids[i]`` whatever the model prefers (the model still computes its logits:
    scoring a given answer, and the GPU gate that compares them with a reference).
    """

    prompt_ids: list[int]
    pixel_values: torch.Tensor | None = None
    prior: np.ndarray | torch.Tensor | None = None
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True
    forced_ids: list[int] | None = None


@dataclass(frozen=True)
class Generated:
    """What a request produced: ids (the end token included when generated) and why it stopped."""

    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str   # "stop": the end token; "length": max_new_tokens ran out first; "cancelled"
    batch_size: int = 1  # the most requests that decoded together with it


class Listener:
    """Receives a request's tokens as they are generated and its end (called from the scheduler).

    Setting ``cancelled`` stops the request at the next step (its caller went away).
    """

    cancelled: bool = False

    def on_token(self, token_id: int) -> None:  # noqa: B027 - optional hook
        pass

    def on_finish(self, result: Generated | None, error: BaseException | None) -> None:
        raise NotImplementedError


class _Collector(Listener):
    def __init__(self):
        self.result: Generated | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def on_finish(self, result, error):
        self.result, self.error = result, error
        self.done.set()


@dataclass(eq=False)
class _Running:
    request: GenerationRequest
    listener: Listener
    ids: list[int] = field(default_factory=list)   # tokens read back from the device
    cached: int = 0          # cache positions filled, or launched to be (prompt, then one per fed token)
    launched: int = 0        # tokens chosen on the device (ids, and those of a step not read yet)
    finish: str | None = None
    notified: bool = False   # the listener has heard the end
    batch: int = 0           # the most rows it shared a step with

    @property
    def leaving(self) -> bool:
        """Done, or every token it may generate already launched: it needs no further step."""
        return self.finish is not None or self.launched >= self.request.max_new_tokens


@dataclass
class _Launched:
    """A step on its way: the rows it chose a token for, in order (a slot-decoder arrival twice: its prefill's
    token, then its decode step's), and those tokens, copied to the host once ``ready`` has happened."""

    rows: list[_Running]
    tokens: torch.Tensor
    ready: torch.cuda.Event | None


class InferenceEngine:
    """Continuous-batching generation with one EmoLA model on one device.

    Args:
        model: an :class:`~emola.model.modeling.EmolaForConditionalGeneration` (LoRA
            applied or not; merged here when ``cfg.merge_lora``).
        cfg: the ``inference`` params.
        eos_token_id / pad_token_id: the tokenizer's end and padding ids.
        processor: the model's processor, for the text-level :meth:`complete`.
    """

    def __init__(self, model, cfg: InferenceConfig, *, eos_token_id: int, pad_token_id: int, processor=None):
        from peft import PeftModel

        self.cfg = cfg
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto"
                                   else cfg.device)
        if cfg.merge_lora and isinstance(model.llava, PeftModel):
            model.llava = model.llava.merge_and_unload()
        model.to(self.device).eval()
        for param in model.parameters():
            param.requires_grad_(False)
        self.model, self.processor = model, processor
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        llava = model.base_llava
        limit = llava.config.text_config.max_position_embeddings
        self.context = min(cfg.max_context or limit, limit)
        self.decoder = self._decoder(llava, cfg)
        self.packed = isinstance(self.decoder, PackedDecoder)
        self.num_image_tokens = llava.config.image_seq_length if model.image_token_id is not None else 0
        self._image_graphs = (ShapeGraphs(model.image_features, self.decoder._pool)
                              if self.decoder.use_graphs and (cfg.prefill_bucket or self.packed) and self.num_image_tokens
                              else None)
        self._waiting: deque[tuple[GenerationRequest, Listener]] = deque()
        self._active: list[_Running] = []
        self.overlap = cfg.overlap_steps
        self._pending: _Launched | None = None   # with overlap: the step launched last, its tokens not read yet
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        self.prefills = 0
        #: Called on the scheduler's thread with each step's rows, as ``(request, index of the answer token being
        #: chosen)``, and their logits ``(rows, vocab)`` before the tokens are chosen; the logits are valid only
        #: during the call (a CUDA graph's output). For checks and analyses; None: nothing is called.
        self.logits_probe: Callable[[list[tuple[GenerationRequest, int]], torch.Tensor], None] | None = None

    def _decoder(self, llava, cfg: InferenceConfig) -> SlotDecoder | PackedDecoder:
        """The packed decoder for ``packed_prefill``, else the slot decoder.

        On CUDA the packed decoder needs a variable-length kernel for the prompts (FlashAttention-2,
        else the CUTLASS one) and, for ``varlen`` rows, the Triton decode kernel, each checked against
        its reference here at this engine's shapes, every split count included (over an FP8 cache for
        ``kv_cache_dtype`` float8_e4m3fn); on CPU it runs the references. On CUDA both decoders rotate q and
        k and write the cache with one Triton kernel per layer (:mod:`~emola.engine.rope_kernel`), checked
        the same way. A failed check raises :class:`~emola.engine.checks.KernelCheckFailed` with the reason,
        unless ``kernel_fallback``: then without a prompt kernel the engine prefills apart (the slot decoder,
        ``sdpa`` for ``varlen``), without the decode kernel the rows attend as the slot decoder's (``sdpa``,
        the cache in the model's dtype), without the RoPE kernel PyTorch rotates, and ``self.fallback`` says
        what was given up and why. A kernel that ran and disagreed is never passed over in silence.
        """
        language_model, head = llava.model.language_model, llava.lm_head
        self.fallback: str | None = None
        attention = "sdpa" if cfg.decode_attention == "varlen" else cfg.decode_attention
        shape = attention_shape(llava.config.text_config)
        dtype = head.weight.dtype
        if cfg.packed_prefill:
            kernel, problems = "reference", []
            if self.device.type == "cuda":
                for candidate in ("flash", "efficient"):
                    problem = kernel_problem(candidate, self.device, dtype, *shape)
                    if problem is None:
                        kernel = candidate
                        break
                    if problem.wrong:
                        self._give_up(problem, "the prompts try the next kernel")
                    problems.append(problem)
            cache_dtype = CACHE_DTYPES.get(cfg.kv_cache_dtype)
            if kernel != "reference" or self.device.type != "cuda":
                rows = "varlen" if cfg.decode_attention == "varlen" else "padded"
                if rows == "varlen" and self.device.type == "cuda":
                    problem = decode_kernel_problem(self.device, dtype, *shape, cache_dtype=cache_dtype,
                                                    context=self.context)
                    if problem is not None:
                        self._give_up(problem, "decode rows attend with sdpa"
                                      + (f" over a {dtype} cache" if cache_dtype is not None else ""))
                        rows, cache_dtype = "padded", None
                return PackedDecoder(language_model, head, slots=cfg.max_batch, context=self.context, rows=rows,
                                     row_attention=attention, length_bucket=cfg.length_bucket,
                                     cuda_graphs=cfg.cuda_graphs, kernel=kernel, cache_dtype=cache_dtype,
                                     rope_kernel=self._rope_kernel(dtype, shape, cache_dtype))
            self._give_up(KernelProblem("; ".join(map(str, problems))), "prompts prefilled apart (slot decoder)"
                          + (f", its cache in {dtype}" if cfg.kv_cache_dtype != "auto" else ""))
        return SlotDecoder(language_model, head, slots=cfg.max_batch, context=self.context,
                           length_bucket=cfg.length_bucket, cuda_graphs=cfg.cuda_graphs, attention=attention,
                           prefill_bucket=cfg.prefill_bucket, rope_kernel=self._rope_kernel(dtype, shape))

    def _rope_kernel(self, dtype: torch.dtype, shape: tuple[int, int, int], cache_dtype: torch.dtype | None = None
                     ) -> bool:
        """Whether the decoders rotate and write the cache with the Triton kernel: on CUDA, once it passes its
        check (a failure: :meth:`_give_up`)."""
        if self.device.type != "cuda":
            return False
        problem = rope_kernel_problem(self.device, dtype, *shape, cache_dtype=cache_dtype, context=self.context)
        if problem is not None:
            self._give_up(problem, "RoPE and cache writes in PyTorch")
        return problem is None

    def _give_up(self, problem: KernelProblem, instead: str) -> None:
        """A kernel failed its check: stop with the reason, or (``kernel_fallback``) record what runs instead."""
        message = f"{problem}; {instead}"
        if not self.cfg.kernel_fallback:
            raise KernelCheckFailed(f"{problem}. The engine does not start on a kernel that failed its check; set "
                                    f"inference.kernel_fallback: true to run on the slower path instead ({instead}), "
                                    "or choose settings that do not need this kernel")
        self.fallback = f"{self.fallback}; {message}" if self.fallback else message
        log.warning("kernel fallback: %s", message)

    @classmethod
    def from_checkpoint(cls, path, cfg: InferenceConfig = DEFAULT_INFERENCE) -> "InferenceEngine":
        """Load a checkpoint folder (in its own dtype) and build the engine on ``cfg.device``."""
        from emola.model.checkpoint import load_checkpoint

        model, processor, _ = load_checkpoint(path)
        tokenizer = processor.tokenizer
        return cls(model, cfg, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                   processor=processor)

    @torch.no_grad()
    def warm_up(self, prompt_length: int | None = None) -> dict:
        """Capture the CUDA graphs before the first request: every decode shape, and with
        ``prefill_bucket`` the prefill of each row bucket at ``prompt_length``'s padded width
        (default: the image tokens, the prior token and 64 tokens of template and question).
        Uses the idle cache slots: call before any request. Returns the graph counts (0 on CPU).

        The packed decoder captures its decode-only steps and the steps of one or two such
        prompts arriving beside the running rows, and the vision tower for one to three images."""
        if self.packed:
            length = min(self.context, prompt_length or self.num_image_tokens + 65)
            steps = self.decoder.warm_up(length, self.cfg.max_prefill_tokens)
            self._warm_vision(min(3, self.cfg.max_batch))
            return {"packed": steps, "vision": len(self._image_graphs) if self._image_graphs is not None else 0}
        decode = self.decoder.warm_up()
        if self.decoder._prefill_graphs is not None:
            length = prompt_length or self.num_image_tokens + 65
            width = min(self.context, round_up(length, self.cfg.prefill_bucket))
            most = max(1, min(self.cfg.max_batch, self.cfg.max_prefill_tokens // width))
            hidden = self.model.base_llava.config.text_config.hidden_size
            for rows in sorted({prefill_rows(n) for n in range(1, most + 1)}, reverse=True):
                n = min(rows, self.cfg.max_batch)
                self.decoder.prefill(torch.zeros(n, width, hidden, device=self.device),
                                     torch.full((n,), width), torch.arange(n))
            self._warm_vision(most)
        return {"decode": decode, "prefill": self.decoder.prefill_graphs,
                "vision": len(self._image_graphs) if self._image_graphs is not None else 0}

    def _warm_vision(self, most: int) -> None:
        """Capture the vision tower for every row bucket of 1 .. ``most`` images (largest first)."""
        if self._image_graphs is not None:
            for rows in sorted({min(prefill_rows(n), self.cfg.max_batch) for n in range(1, most + 1)}, reverse=True):
                self._image_features(torch.zeros(rows, 3, *self._image_size(), device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _image_size(self) -> tuple[int, int]:
        size = self.model.base_llava.config.vision_config.image_size
        return size, size

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower's features ``(n, image tokens, hidden)``, replayed per row bucket on CUDA."""
        dtype = self.decoder.dtype
        if self._image_graphs is None:
            return self.model.image_features(pixels.to(dtype))
        n = pixels.shape[0]
        padded = torch.zeros(prefill_rows(n), *pixels.shape[1:], dtype=dtype, device=self.device)
        padded[:n] = pixels
        return self._image_graphs(padded)[:n]

    # ------------------------------------------------------------- requests
    def validate(self, request: GenerationRequest) -> None:
        """Raise :class:`PromptTooLong` or ``ValueError`` for a request the engine cannot run."""
        needed = len(request.prompt_ids) + request.max_new_tokens
        if needed > self.context:
            raise PromptTooLong(
                f"the prompt has {len(request.prompt_ids)} tokens (template, {self.num_image_tokens} image tokens, "
                f"prior token and question) and {request.max_new_tokens} new tokens were asked for: "
                f"{needed} exceeds the model's context of {self.context} tokens")
        if request.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if request.forced_ids is not None:
            vocab = self.model.base_llava.config.text_config.vocab_size
            if not all(isinstance(t, int) and 0 <= t < vocab for t in request.forced_ids):
                raise ValueError(f"forced_ids: token ids from 0 to {vocab - 1}")
        if not request.prompt_ids:
            raise ValueError("empty prompt")
        # Media are merged by these host counts (the engine does not read counts back from the device).
        projector = self.model.prior_projector
        priors = request.prompt_ids.count(self.model.prior_token_id) if self.model.prior_token_id is not None else 0
        if priors:
            shape = None if request.prior is None else tuple(np.shape(request.prior))
            if projector is None or shape != (projector.linear_1.in_features,):
                expected = None if projector is None else projector.linear_1.in_features
                raise ValueError(f"prior: the prompt has a <prior> token and needs a vector of {expected} values, "
                                 f"got {'none' if shape is None else shape}")
            if priors != 1:
                raise ValueError(f"prompt_ids: {priors} <prior> tokens; a prompt holds one")
        elif request.prior is not None:
            raise ValueError("prior: given, but the prompt has no <prior> token")
        images = request.prompt_ids.count(self.model.image_token_id) if self.model.image_token_id is not None else 0
        if images:
            size = self.model.base_llava.config.vision_config.image_size
            shape = None if request.pixel_values is None else tuple(request.pixel_values.shape)
            if shape != (3, size, size):
                raise ValueError(f"pixel_values: the prompt has image tokens and needs (3, {size}, {size}), "
                                 f"got {'none' if shape is None else shape}")
            if images != self.num_image_tokens:
                raise ValueError(f"prompt_ids: {images} <image> tokens; one image fills {self.num_image_tokens}")
        elif request.pixel_values is not None:
            raise ValueError("pixel_values: given, but the prompt has no <image> tokens")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generated]:
        """Run ``requests`` to completion (continuous batching); results in the same order.

        Requests are admitted in order of prompt length, so the prompts prefilled together
        pad little.
        """
        for request in requests:
            self.validate(request)
        collectors = [_Collector() for _ in requests]
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids))
        if self._thread is not None:
            for i in order:
                self.submit(requests[i], collectors[i])
            for c in collectors:
                c.done.wait()
        else:
            self._waiting.extend((requests[i], collectors[i]) for i in order)
            try:
                while self.busy:
                    self._step(self._admissible())
            except Exception as err:   # nothing of this call stays behind for the next one
                self._fail(err)
                for _, listener in self._waiting:
                    listener.on_finish(None, err)
                self._waiting.clear()
                raise
        for c in collectors:
            if c.error is not None:
                raise c.error
        return [c.result for c in collectors]

    def complete(self, questions: Sequence[str], images=None, priors=None,
                 generation: GenerationConfig = PUBLISHED_GENERATION, seed: int | None = None) -> list["Completion"]:
        """Text in, text out: one :class:`Completion` per question (with its image and prior when used);
        ``seed`` defaults to ``generation.seed``."""
        requests = self.requests(questions, images, priors, generation, seed)
        return [self.completion(request, generated) for request, generated in zip(requests, self.generate(requests))]

    def requests(self, questions: Sequence[str], images=None, priors=None,
                 generation: GenerationConfig = PUBLISHED_GENERATION, seed: int | None = None) -> list[GenerationRequest]:
        """Requests for ``questions`` through the processor (template, media placeholders, image preprocessing)."""
        p = self.processor
        seed = generation.seed if seed is None else seed
        if p.use_image and images is None:
            raise ValueError("this model sees images: pass one per question")
        if p.use_prior and priors is None:
            raise ValueError("this model uses the landmark prior: pass one prior vector per question")
        pixels = p.pixel_values(list(images)) if p.use_image else None
        return [GenerationRequest(prompt_ids=p.prompt_ids(q), pixel_values=None if pixels is None else pixels[i],
                                  prior=None if not p.use_prior else np.asarray(priors[i], np.float32),
                                  max_new_tokens=generation.max_new_tokens, temperature=generation.temperature,
                                  top_p=generation.top_p, seed=seed)
                for i, q in enumerate(questions)]

    @torch.no_grad()
    def readout(self, requests: Sequence[GenerationRequest]) -> list["Readout"]:
        """The readout head's AU and emotion probabilities for each request's face (one forward pass of
        the prompt up to its readout token, no generation; the question does not matter).

        Prompts are cut at their ``<prior>`` token (or last ``<image>`` token) and run in groups
        of up to ``max_batch``, right-padded.
        """
        from emola.model.readout import readout_positions

        head = self.model.readout
        if head is None:
            raise ValueError("this model has no readout head (train it with train.readout_weight > 0)")
        prior_id = self.model.prior_token_id if self.model.prior_projector is not None else None
        out: list[Readout] = []
        for start in range(0, len(requests), self.cfg.max_batch):
            group = requests[start:start + self.cfg.max_batch]
            for request in group:
                self.validate(request)
            cuts = [int(readout_positions(torch.tensor([r.prompt_ids]), prior_id, self.model.image_token_id)[-1, 1]) + 1
                    for r in group]
            ids = torch.full((len(group), max(cuts)), self.pad_token_id, dtype=torch.long)
            for i, (r, cut) in enumerate(zip(group, cuts)):
                ids[i, :cut] = torch.as_tensor(r.prompt_ids[:cut])
            mask = (torch.arange(ids.shape[1])[None] < torch.tensor(cuts)[:, None]).long()
            pixels, priors = self._media(group)
            ids, mask = ids.to(self.device), mask.to(self.device)
            states = self.model.decoder_states(ids, mask, pixels, priors)
            aus, emotions = head.probabilities(states[torch.arange(len(group)), torch.tensor(cuts) - 1])
            out += [Readout(dict(zip(head.aus, a)), dict(zip(head.emotions, e)))
                    for a, e in zip(aus.cpu().tolist(), emotions.cpu().tolist())]
        return out

    def completion(self, request: GenerationRequest, generated: Generated) -> "Completion":
        return Completion(self.processor.decode(generated.token_ids), generated.prompt_tokens,
                          len(generated.token_ids), generated.finish_reason)

    # ------------------------------------------------------------ serving
    def start(self) -> "InferenceEngine":
        """Run the scheduler in a background thread; requests then come through :meth:`submit`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve_loop, name="emola-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, request: GenerationRequest, listener: Listener) -> None:
        """Queue a request for the scheduler thread (validated first: errors raise here, before queueing)."""
        self.validate(request)
        with self._lock:
            if self._thread is None or self._stopping:
                raise EngineStopped("the inference engine's scheduler is not running (call start())")
            self._waiting.append((request, listener))
            self._lock.notify()

    @property
    def load(self) -> dict:
        return {"waiting": len(self._waiting), "running": sum(not r.notified for r in self._active)}

    @property
    def busy(self) -> bool:
        """Requests wait, run, or have tokens not read yet."""
        return bool(self._waiting or self._active or self._pending is not None)

    def stop(self) -> None:
        """Stop the scheduler thread after its current step; requests not finished get :class:`EngineStopped`."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=60)
        stopped = EngineStopped("the inference engine was stopped")
        self._fail(stopped)
        for _, listener in self._waiting:
            listener.on_finish(None, stopped)
        self._thread, self._stopping = None, False
        self._waiting.clear()

    def _serve_loop(self) -> None:
        while True:
            with self._lock:
                while not self.busy and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    break
                new = self._admissible()
            try:
                self._step(new)
            except Exception as err:  # noqa: BLE001 - fail the requests in flight, keep serving the next ones
                self._fail(err)

    def _fail(self, error: BaseException) -> None:
        """Every running request, and every one a launched step holds, hears ``error``; the batch is emptied."""
        rows = list(self._active) + (self._pending.rows if self._pending is not None else [])
        for r in dict.fromkeys(rows):
            if not r.notified:
                r.notified = True
                r.listener.on_finish(None, error)
        self._active, self._pending = [], None

    # ---------------------------------------------------------- scheduling
    def _admissible(self) -> list[tuple[GenerationRequest, Listener]]:
        """Take the waiting requests that start this step: free slots, within the prefill budget."""
        new: list[tuple[GenerationRequest, Listener]] = []
        longest = total = 0
        staying = sum(not r.leaving for r in self._active)   # the others leave the batch before the next step
        while self._waiting and staying + len(new) < self.cfg.max_batch:
            if self._waiting[0][1].cancelled:
                self._waiting.popleft()[1].on_finish(None, EngineStopped("cancelled before it started"))
                continue
            length = len(self._waiting[0][0].prompt_ids)
            # The packed decoder's step holds the running rows' tokens and the prompts' own lengths;
            # the slot decoder's prefill pads every prompt to the longest.
            tokens = (staying + total + length if self.packed
                      else max(longest, length) * (len(new) + 1))
            if new and tokens > self.cfg.max_prefill_tokens:
                break
            new.append(self._waiting.popleft())
            longest, total = max(longest, length), total + length
        return new

    def _step(self, new: list[tuple[GenerationRequest, Listener]]) -> None:
        """One scheduling step: launch a step for the running requests and the arrivals ``new``, then read
        back the tokens of the step launched before it (``overlap_steps``: the device works on this step while
        the host hands out the last one's tokens and prepares the next) or of this one."""
        launched = self._launch(new)
        previous, self._pending = self._pending, None
        if previous is not None:
            self._complete(previous)
        if launched is not None:
            if self.overlap:
                self._pending = launched
            else:
                self._complete(launched)

    @torch.no_grad()
    def _launch(self, new: list[tuple[GenerationRequest, Listener]]) -> _Launched | None:
        """Queue one step on the device: the slot decoder prefills the arrivals, then decodes a token for every
        running request (the arrivals included); the packed decoder does both in one pass. Each step's
        tokens are chosen on the device and written to the decoder's ``tokens``, where the next step reads
        them. Returns None when there is nothing to run."""
        self._compact()
        if self.packed:
            return self._launch_packed(new)
        rows: list[_Running] = []
        chosen: list[torch.Tensor] = []

        def prefill(group):
            start = len(self._active)
            embeds, lengths = self._prompt_embeds(group)
            slots = torch.arange(start, start + len(group), device=self.device)
            logits = self.decoder.prefill(embeds, self._to_device(lengths, torch.long), slots)
            running = [_Running(request, listener, cached=length) for (request, listener), length in zip(group, lengths)]
            tokens = self._choose(running, logits)
            self.decoder.tokens[start:start + len(group)] = tokens
            self._active.extend(running)
            rows.extend(running)
            chosen.append(tokens)
            self.prefills += 1

        self._each_alone_on_failure(new, prefill)
        self._compact()   # an arrival asked for one token only
        if self._active:
            count = len(self._active)
            self.decoder.positions[:count] = self._to_device([r.cached for r in self._active], torch.long)
            logits = self.decoder.decode(count, max(r.cached for r in self._active) + 1)
            for r in self._active:
                r.cached += 1
            tokens = self._choose(self._active, logits)
            self.decoder.tokens[:count] = tokens
            rows.extend(self._active)
            chosen.append(tokens)
            self.steps += 1
        return self._launched(rows, chosen) if rows else None

    @staticmethod
    def _each_alone_on_failure(new: list[tuple[GenerationRequest, Listener]], run) -> None:
        """``run(group)`` on the arrivals together; when it raises, on each arrival alone (in order), so that
        a request whose inputs fail fails alone (its listener hears the error) and the others go on."""
        groups = [new] if new else []
        while groups:
            group = groups.pop()
            try:
                run(group)
            except Exception as err:  # noqa: BLE001 - a failing request fails alone
                if len(group) > 1:   # find the culprit: the others one by one
                    groups += [[item] for item in reversed(group)]
                else:
                    group[0][1].on_finish(None, err)

    def _to_device(self, values: Sequence, dtype: torch.dtype) -> torch.Tensor:
        """A host list on the device, see :meth:`_upload`."""
        return self._upload(torch.tensor(values, dtype=dtype))

    def _upload(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device without waiting for the device: on CUDA through pinned memory (a copy
        from pageable memory may wait for the stream), queued behind the device's work."""
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _media(self, requests: Sequence[GenerationRequest]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The requests' images ``(n, 3, S, S)`` in the model's dtype and priors ``(n, prior_dim)`` float32, on the
        device (None for a model that uses neither)."""
        pixels = priors = None
        if requests[0].pixel_values is not None:
            pixels = self._upload(torch.stack([torch.as_tensor(r.pixel_values) for r in requests])).to(self.decoder.dtype)
        if requests[0].prior is not None:
            priors = self._upload(torch.stack([torch.as_tensor(np.asarray(r.prior), dtype=torch.float32)
                                               for r in requests]))
        return pixels, priors

    @torch.no_grad()
    def _prompt_embeds(self, new: list[tuple[GenerationRequest, Listener]]) -> tuple[torch.Tensor, list[int]]:
        """The prompts' embeddings ``(n, longest, hidden)``, right-padded, image features and prior token
        merged in; and their lengths."""
        lengths = [len(r.prompt_ids) for r, _ in new]
        ids = torch.full((len(new), max(lengths)), self.pad_token_id, dtype=torch.long)
        for i, (request, _) in enumerate(new):
            ids[i, : lengths[i]] = torch.as_tensor(request.prompt_ids, dtype=torch.long)
        pixels, priors = self._media([r for r, _ in new])
        features = self._image_features(pixels) if pixels is not None and self._image_graphs is not None else None
        embeds = self.model.merge_inputs(self._upload(ids), pixels, priors, image_features=features,
                                         counted=True)   # validate() counted the media tokens
        return embeds, lengths

    @torch.no_grad()
    def _launch_packed(self, new: list[tuple[GenerationRequest, Listener]]) -> _Launched | None:
        """One pass of the packed decoder: a token for every running request and the first token of every
        arrival. An arrival whose inputs fail to embed fails alone; a failing pass fails every row in it."""
        prompts: list[torch.Tensor] = []
        arrivals: list[tuple[GenerationRequest, Listener]] = []

        def embed(group):
            embeds, lengths = self._prompt_embeds(group)
            prompts.extend(embeds[i, :length] for i, length in enumerate(lengths))
            arrivals.extend(group)

        self._each_alone_on_failure(new, embed)
        running = [_Running(request, listener, cached=len(request.prompt_ids)) for request, listener in arrivals]
        if not self._active and not running:
            return None
        try:
            logits = self.decoder.step(None, [r.cached for r in self._active], prompts)
        except Exception as err:
            for r in running:
                r.listener.on_finish(None, err)
            raise
        for r in self._active:
            r.cached += 1
        self._active.extend(running)
        tokens = self._choose(self._active, logits)
        self.decoder.tokens[:len(self._active)] = tokens
        self.steps += 1
        self.prefills += bool(running)
        return self._launched(list(self._active), [tokens])

    def _choose(self, rows: list[_Running], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token ``(len(rows),)``, on the device (its temperature, top-p and seed; the noise of
        its ``launched``-th token)."""
        if self.logits_probe is not None:
            self.logits_probe([(r.request, r.launched) for r in rows], logits[:len(rows)])
        if all(r.request.temperature <= 0 for r in rows):   # all greedy: one kernel
            chosen = logits.argmax(-1)
        else:
            chosen = next_tokens(logits, self._to_device([r.request.temperature for r in rows], torch.float32),
                                 self._to_device([r.request.top_p for r in rows], torch.float32),
                                 self._to_device([r.request.seed for r in rows], torch.long),
                                 self._to_device([r.launched for r in rows], torch.long),
                                 branchless=self.overlap and self.device.type == "cuda")   # else it waits anyway
        forced = [(i, r.request.forced_ids[r.launched]) for i, r in enumerate(rows)
                  if r.request.forced_ids is not None and r.launched < len(r.request.forced_ids)]
        if forced:
            where, tokens = zip(*forced)
            chosen = chosen.index_put((self._to_device(where, torch.long),), self._to_device(tokens, chosen.dtype))
        for r in rows:
            r.launched += 1
        return chosen

    def _launched(self, rows: list[_Running], chosen: list[torch.Tensor]) -> _Launched:
        """The step's tokens on their way to the host (a pinned buffer on CUDA, and an event to wait for)."""
        tokens = torch.cat(chosen) if len(chosen) > 1 else chosen[0]
        if self.device.type != "cuda":
            return _Launched(rows, tokens, None)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return _Launched(rows, host, ready)

    def _complete(self, launched: _Launched) -> None:
        """Read a launched step's tokens: hand them to the listeners, finish the rows that are done."""
        if launched.ready is not None:
            launched.ready.synchronize()
        self._record(launched.rows, launched.tokens.tolist())
        for r in dict.fromkeys(launched.rows):
            if r.finish is not None and not r.notified:
                r.notified = True
                r.listener.on_finish(Generated(list(r.ids), len(r.request.prompt_ids), r.finish, r.batch), None)
        self._compact()

    def _record(self, rows: list[_Running], chosen: list[int]) -> None:
        """Append each row's token and mark finished rows. A row already finished (an earlier step's end token
        was read after this step was launched) ignores its token."""
        live = sum(r.finish is None for r in dict.fromkeys(rows))
        for r, token in zip(rows, chosen):
            if r.finish is not None:
                continue
            r.ids.append(token)
            r.batch = max(r.batch, live)
            if r.listener.cancelled:
                r.finish = "cancelled"
                continue
            r.listener.on_token(token)
            if token == self.eos_token_id and r.request.stop_at_eos:
                r.finish = "stop"
            elif len(r.ids) >= r.request.max_new_tokens:
                r.finish = "length"

    def _compact(self) -> None:
        """Rows that need no further step leave the batch; the highest staying rows fill their slots (cache
        and last token moved along, queued behind any launched step)."""
        if not any(r.leaving for r in self._active):
            return
        count = sum(not r.leaving for r in self._active)
        holes = [i for i in range(count) if self._active[i].leaving]
        movers = [i for i in range(count, len(self._active)) if not self._active[i].leaving]
        slots = list(self._active)
        for hole, source in zip(holes, movers):
            self.decoder.move(source, hole, slots[source].cached)
            slots[hole] = slots[source]
        self._active = slots[:count]


@dataclass(frozen=True)
class Completion:
    """One generated description with what an OpenAI-style response reports about it."""

    text: str
    prompt_tokens: int      # the prompt's ids: template, question, image and prior placeholders
    completion_tokens: int  # generated ids, the end token included when one was generated
    finish_reason: str      # "stop": the end token; "length": max_new_tokens ran out first



@dataclass(frozen=True)
class Readout:
    """The readout head's output for one face: each AU's probability, and the emotion distribution."""

    aus: dict[int, float]        # FABA AU number -> probability that it is active
    emotions: dict[str, float]   # emotion class -> probability (they sum to 1)

    @property
    def emotion(self) -> str:
        return max(self.emotions, key=self.emotions.get)
