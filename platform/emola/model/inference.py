"""Batched generation with the published decoding defaults."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emola.config.schema import GenerationConfig
from emola.model.modeling import EmolaForConditionalGeneration
from emola.model.processing import EmolaProcessor

#: Published EmoLA decoding: temperature 0.01, top_p 0.5, stop at </s>.
PUBLISHED_GENERATION = GenerationConfig(temperature=0.01, top_p=0.5, max_new_tokens=512)


def generate_descriptions(model: EmolaForConditionalGeneration, processor: EmolaProcessor, questions: Sequence[str],
                          images=None, priors=None, generation: GenerationConfig = PUBLISHED_GENERATION,
                          seed: int | None = 0, streamer=None) -> list[str]:
    """One description per question (with its image and prior vector when the model uses them).

    ``streamer``: a transformers streamer that receives the new token ids as they are
    generated (one question at a time), e.g. for streaming HTTP responses.
    """
    batch = processor.generation_batch(questions, images, priors)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    sampling = generation.temperature > 0
    if seed is not None:
        torch.manual_seed(seed)  # temperature 0.01 samples; a seed keeps results repeatable
    ids = model.generate(**batch, max_new_tokens=generation.max_new_tokens, do_sample=sampling,
                         temperature=generation.temperature if sampling else None,
                         top_p=generation.top_p if sampling else None,
                         eos_token_id=processor.tokenizer.eos_token_id, pad_token_id=processor.tokenizer.pad_token_id,
                         streamer=streamer)
    return [processor.decode(row) for row in ids]
