"""The model deployment: EmoLA from a checkpoint folder or MLflow URI, served by the inference engine.

Each replica holds one :class:`~emola.engine.InferenceEngine` running its scheduler in a
background thread. Every call (``generate``, ``stream``) submits one request to it and
awaits its tokens: requests join the running decode batch at the next step boundary and
leave when they finish, so a short request is not held up by a long one, and streamed and
plain requests share one batch. ``inference.max_batch: 1`` turns batching off
(``benchmarks/serve.py`` compares the two).

A prompt too long for the model's context is refused before it is queued
(:class:`~emola.engine.PromptTooLong`; the ingress answers 400). A call whose caller
gives up (client gone, timeout) is cancelled in the engine too.

``analyze_video`` runs :func:`emola.video_analysis.analyze_video` on an uploaded video in a
worker thread (the replica keeps serving meanwhile; a caller that gives up stops it at the
next frame): the readout head on every sampled
frame, and the descriptions at key moments through the same engine, batched with the
other requests. It needs the checkpoint's readout head and a landmark backend, built
on the first video.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict

import numpy as np
from ray import serve

from emola.engine import Generated, GenerationRequest, Listener
from serve.inputs import pixels_of


class _End:
    def __init__(self, result: Generated | None, error: BaseException | None):
        self.result, self.error = result, error


class _AsyncListener(Listener):
    """Hands a request's end, and with ``tokens`` each token as it comes, from the engine thread to an
    asyncio consumer. A plain (not streamed) request needs only its end: one wake-up of the event loop
    per request instead of one per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tokens: bool):
        self.loop, self.queue, self.tokens = loop, asyncio.Queue(), tokens
        self.cancelled = False

    def on_token(self, token_id: int) -> None:
        if self.tokens:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, token_id)

    def on_finish(self, result, error) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, _End(result, error))


@serve.deployment(name="EmolaModel")
class EmolaModel:
    def __init__(self, checkpoint: str, inference: dict, threads: int = 1, landmarks: dict | None = None):
        import torch

        from emola.config.schema import InferenceConfig
        from emola.engine import InferenceEngine
        from emola.model.configuration import EmolaModelConfig
        from emola.model.reference import resolve_checkpoint

        torch.set_num_threads(max(1, threads))
        self.resolved = resolve_checkpoint(checkpoint)
        self.config = EmolaModelConfig.load(self.resolved.path)
        self.engine = InferenceEngine.from_checkpoint(self.resolved.path, InferenceConfig.model_validate(inference))
        self.processor = self.engine.processor
        self.landmarks, self.backend = landmarks, None
        self._lock = threading.Lock()   # the backend, built once; the video counters, updated from threads
        self._prompts: dict[str, tuple[int, ...]] = {}   # question -> prompt ids (tokenized once)
        self.videos = {"running": 0, "cancelled": 0}       # video analyses in their threads now; given up by callers
        self.graphs = self.engine.warm_up()   # CUDA: no request pays for graph capture
        self.engine.start()

    def info(self) -> dict:
        return {**self.resolved.describe(), "profile": self.config.profile, "base": self.config.base,
                "vision": self.config.vision, "prior": self.config.prior, "landmark_backend": self.config.landmark_backend,
                "template": self.config.template, "tasks": self.config.tasks, "engine": self.engine.load,
                "readout": self.config.readout is not None, "videos": dict(self.videos),
                "kernel_fallback": self.engine.fallback}

    def _request(self, item: dict) -> GenerationRequest:
        """An engine request from ``question``, ``image`` (:attr:`serve.inputs.DecodedImage.wire`), ``prior`` and
        ``generation``."""
        g = item["generation"]
        p = self.processor
        return GenerationRequest(
            prompt_ids=self._prompt_ids(item["question"]),
            pixel_values=p.pixel_values([pixels_of(item["image"])])[0] if p.use_image else None,
            prior=np.asarray(item["prior"], np.float32) if p.use_prior else None,
            max_new_tokens=g["max_new_tokens"], temperature=g["temperature"], top_p=g["top_p"],
            seed=g.get("seed", 0))

    def _prompt_ids(self, question: str) -> list[int]:
        """The prompt of ``question``; the last 1,024 questions of up to 1,000 characters are tokenized once per
        replica (most requests ask one of the fixed analysis questions)."""
        ids = self._prompts.get(question)
        if ids is None:
            if len(question) > 1000:
                return self.processor.prompt_ids(question)
            if len(self._prompts) >= 1024:
                self._prompts.pop(next(iter(self._prompts)))   # the oldest
            ids = self._prompts[question] = tuple(self.processor.prompt_ids(question))
        return list(ids)

    async def _tokens(self, request: GenerationRequest, stream: bool) -> AsyncIterator[int | _End]:
        """The request's tokens as they come (``stream``), then its :class:`_End`."""
        listener = _AsyncListener(asyncio.get_running_loop(), tokens=stream)
        self.engine.submit(request, listener)   # PromptTooLong raises here, before queueing
        try:
            while True:
                event = await listener.queue.get()
                yield event
                if isinstance(event, _End):
                    return
        finally:
            listener.cancelled = True   # the caller went away (or we are done): stop generating for it

    async def generate(self, item: dict) -> dict:
        """Per item: ``text``, ``prompt_tokens``, ``completion_tokens``, ``finish_reason``,
        ``batch_size`` (most requests decoded together with it) and ``generate_ms``."""
        started = time.perf_counter()
        request = self._request(item)
        async for event in self._tokens(request, stream=False):
            if isinstance(event, _End):
                if event.error is not None:
                    raise event.error
                completion = self.engine.completion(request, event.result)
                return {**asdict(completion), "batch_size": event.result.batch_size,
                        "generate_ms": round(1e3 * (time.perf_counter() - started), 2)}
        raise RuntimeError("the engine ended the request without a result")

    async def stream(self, item: dict) -> AsyncIterator[str | dict]:
        """``{"accepted": True}`` once the request is queued (a bad one raises instead), then the text in
        pieces as it is generated, then one dict: ``finish_reason`` and token counts."""
        request = self._request(item)
        self.engine.validate(request)
        yield {"accepted": True}
        ids: list[int] = []
        sent = ""
        async for event in self._tokens(request, stream=True):
            if isinstance(event, _End):
                if event.error is not None:
                    raise event.error
                text = self.processor.decode(ids)
                if len(text) > len(sent) and text.startswith(sent):
                    yield text[len(sent):]
                completion = self.engine.completion(request, event.result)
                yield {k: v for k, v in asdict(completion).items() if k != "text"}   # the text went out in pieces
                return
            ids.append(event)
            text = self.processor.decode(ids)
            # Emit only whole pieces: a partial multi-byte token decodes to U+FFFD until completed.
            if len(text) > len(sent) and text.startswith(sent) and not text.endswith("\ufffd"):
                yield text[len(sent):]
                sent = text

    async def analyze_video(self, data: bytes, options: dict) -> dict:
        """``{"rows": [FrameRow.to_row(), ...], "ms": ...}`` for the video ``data``, or ``{"error": {"code",
        "message"}}`` for a video that cannot be used (:class:`~emola.video.VideoProblem`'s code).

        ``options``: :class:`~emola.video_analysis.VideoOptions` fields, ``limits`` as a dict, and
        ``generation`` (the descriptions' decoding)."""
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self._analyze_video, data, options, cancel)
        except asyncio.CancelledError:
            self.videos["cancelled"] += 1
            raise
        finally:
            cancel.set()   # the caller gave up (client gone, timeout): the thread stops at its next frame

    def _analyze_video(self, data: bytes, options: dict, cancel: threading.Event) -> dict:
        """:meth:`analyze_video` in its thread, counted in ``videos["running"]`` until the thread itself ends."""
        with self._lock:
            self.videos["running"] += 1
        try:
            return self._analysis(data, options, cancel)
        finally:
            with self._lock:
                self.videos["running"] -= 1

    def _analysis(self, data: bytes, options: dict, cancel: threading.Event) -> dict:
        from emola.analyzer import Analyzer
        from emola.config.schema import GenerationConfig
        from emola.video import VideoLimits, VideoProblem
        from emola.video_analysis import VideoOptions, analyze_video

        started = time.perf_counter()
        if self.config.readout is None:
            return {"error": {"code": "no_readout", "message": "this model has no readout head"}}
        options = dict(options)
        generation = GenerationConfig.model_validate(options.pop("generation"))
        limits = VideoLimits(**options.pop("limits"))
        analyzer = Analyzer(self.engine, self.config, self._backend(), generation)
        try:
            rows = analyze_video(analyzer, data, VideoOptions(**options, limits=limits), cancel=cancel)
        except VideoProblem as err:
            return {"error": {"code": err.code, "message": str(err)}}
        return {"rows": [row.to_row() for row in rows], "ms": round(1e3 * (time.perf_counter() - started), 2)}

    def _backend(self):
        """The landmark backend matching the checkpoint's priors (None for a model without the prior token), built
        once however many video threads ask at the same time."""
        with self._lock:
            if self.backend is None:
                from emola.config.schema import LandmarksConfig
                from emola.landmarks.registry import build_backend, inference_backend_name

                name = inference_backend_name(self.config.prior, self.config.landmark_backend, self.config.prior_dim)
                if name:
                    cfg = LandmarksConfig.model_validate(self.landmarks) if self.landmarks else None
                    self.backend = build_backend(cfg, name=name)
        return self.backend
