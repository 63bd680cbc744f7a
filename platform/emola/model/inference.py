"""Batched generation with the published decoding defaults."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from emola.config.schema import GenerationConfig
from emola.model.modeling import EmolaForConditionalGeneration
from emola.model.processing import EmolaProcessor

#: Published EmoLA decoding: temperature 0.01, top_p 0.5, stop at </s>.
PUBLISHED_GENERATION = GenerationConfig(temperature=0.01, top_p=0.5, max_new_tokens=512)


@dataclass(frozen=True)
class Completion:
    """One generated description with what an OpenAI-style response reports about it."""

    text: str
    prompt_tokens: int      # the prompt's ids: template, question, image and prior placeholders
    completion_tokens: int  # generated ids, the end token included when one was generated
    finish_reason: str      # "stop": the end token; "length": max_new_tokens ran out first


def generate_completions(model: EmolaForConditionalGeneration, processor: EmolaProcessor, questions: Sequence[str],
                         images=None, priors=None, generation: GenerationConfig = PUBLISHED_GENERATION,
                         seed: int | None = 0, streamer=None) -> list[Completion]:
    """One :class:`Completion` per question (with its image and prior vector when the model uses them).

    ``streamer``: a transformers streamer that receives the new token ids as they are
    generated (one question at a time), e.g. for streaming HTTP responses.
    """
    batch = processor.generation_batch(questions, images, priors)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    sampling = generation.temperature > 0
    if seed is not None:
        torch.manual_seed(seed)  # temperature 0.01 samples; a seed keeps results repeatable
    eos = processor.tokenizer.eos_token_id
    ids = model.generate(**batch, max_new_tokens=generation.max_new_tokens, do_sample=sampling,
                         temperature=generation.temperature if sampling else None,
                         top_p=generation.top_p if sampling else None,
                         eos_token_id=eos, pad_token_id=processor.tokenizer.pad_token_id, streamer=streamer)
    prompt_lengths = batch["attention_mask"].sum(1).tolist()
    completions = []
    for row, prompt_tokens in zip(ids.tolist(), prompt_lengths):
        # A finished row is padded to the batch's longest; everything after its end token is padding.
        stopped = eos in row
        generated = row.index(eos) + 1 if stopped else len(row)
        completions.append(Completion(processor.decode(row), int(prompt_tokens), generated,
                                      "stop" if stopped else "length"))
    return completions


def generate_descriptions(model: EmolaForConditionalGeneration, processor: EmolaProcessor, questions: Sequence[str],
                          images=None, priors=None, generation: GenerationConfig = PUBLISHED_GENERATION,
                          seed: int | None = 0, streamer=None) -> list[str]:
    """The texts of :func:`generate_completions`."""
    return [c.text for c in generate_completions(model, processor, questions, images, priors, generation, seed, streamer)]
