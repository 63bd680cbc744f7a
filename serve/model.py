"""The model deployment: EmoLA from a checkpoint folder or MLflow URI, batched and streamed generation.

``generate`` is a ``@serve.batch`` method: concurrent requests that reach one replica
within ``batch_wait_timeout_s`` run as one padded ``generate`` call (requests with
different decoding settings are split into groups). ``max_batch_size: 1`` turns batching
off, which is what ``benchmarks/serve.py`` compares against. ``stream`` yields the text as
it is generated (OpenAI ``stream: true``); it does not batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from itertools import groupby

import numpy as np
from ray import serve


class _TokenQueue:
    """A transformers streamer that hands new token ids to an asyncio consumer in another thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue, self.first = loop, asyncio.Queue(), True

    def put(self, value) -> None:
        if self.first:  # generate() first puts the prompt (here: no ids, the prompt is embeddings)
            self.first = False
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, [int(v) for v in value.reshape(-1).tolist()])

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


@serve.deployment(name="EmolaModel")
class EmolaModel:
    def __init__(self, checkpoint: str, max_batch_size: int, batch_wait_timeout_s: float, threads: int = 1):
        import torch

        from emola.model.checkpoint import load_checkpoint
        from emola.model.reference import resolve_checkpoint

        torch.set_num_threads(max(1, threads))
        self.resolved = resolve_checkpoint(checkpoint)
        self.model, self.processor, self.config = load_checkpoint(self.resolved.path)
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.model.eval()
        self.generate.set_max_batch_size(max_batch_size)
        self.generate.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.lock = threading.Lock()  # one forward pass at a time per replica (batches and streams)

    def info(self) -> dict:
        return {**self.resolved.describe(), "profile": self.config.profile, "base": self.config.base,
                "vision": self.config.vision, "prior": self.config.prior, "landmark_backend": self.config.landmark_backend,
                "template": self.config.template, "tasks": self.config.tasks}

    def _run(self, items: list[dict], streamer=None) -> list:
        """Generate :class:`~emola.model.inference.Completion` s for items that share one decoding setting.

        Blocking; called in a thread.
        """
        from emola.config.schema import GenerationConfig
        from emola.model.inference import generate_completions

        generation = GenerationConfig(**items[0]["generation"])
        with self.lock:
            return generate_completions(
                self.model, self.processor, [i["question"] for i in items],
                images=[i["pixels"] for i in items] if self.processor.use_image else None,
                priors=np.stack([np.asarray(i["prior"], np.float32) for i in items]) if self.processor.use_prior else None,
                generation=generation, streamer=streamer)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate(self, items: list[dict]) -> list[dict]:
        """Each item: ``question``, ``pixels`` ``(H, W, 3)``, ``prior`` list, ``generation`` dict.

        Returns per item ``text``, ``prompt_tokens``, ``completion_tokens``, ``finish_reason``,
        ``batch_size`` (requests generated together) and ``generate_ms``.
        """
        out: list[dict | None] = [None] * len(items)
        keys = [sorted(item["generation"].items()) for item in items]
        order = sorted(range(len(items)), key=keys.__getitem__)
        for _, group in groupby(order, key=keys.__getitem__):
            group = list(group)
            started = time.perf_counter()
            completions = await asyncio.to_thread(self._run, [items[i] for i in group])  # keeps the replica responsive
            ms = round(1e3 * (time.perf_counter() - started), 2)
            for i, completion in zip(group, completions):
                out[i] = {**asdict(completion), "batch_size": len(group), "generate_ms": ms}
        return out

    async def stream(self, item: dict) -> AsyncIterator[str | dict]:
        """The text of one item in pieces as it is generated, then one dict: ``finish_reason`` and token counts."""
        loop = asyncio.get_running_loop()
        streamer = _TokenQueue(loop)

        def run():
            try:
                return self._run([item], streamer)[0]
            finally:
                streamer.end()

        worker = loop.run_in_executor(None, run)
        ids: list[int] = []
        sent = ""
        while (new := await streamer.queue.get()) is not None:
            ids += new
            text = self.processor.decode(ids)
            # Emit only whole pieces: a partial multi-byte token decodes to U+FFFD until completed.
            if len(text) > len(sent) and text.startswith(sent) and not text.endswith("\ufffd"):
                yield text[len(sent):]
                sent = text
        completion = await worker  # re-raises a generation error
        text = self.processor.decode(ids)
        if len(text) > len(sent) and text.startswith(sent):
            yield text[len(sent):]
        yield {k: v for k, v in asdict(completion).items() if k != "text"}  # the text went out in pieces
