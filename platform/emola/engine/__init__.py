"""The inference engine every generating caller uses: merged LoRA, a static KV cache, continuous batching."""

from emola.engine.checks import KernelCheckFailed
from emola.engine.engine import (DEFAULT_INFERENCE, PUBLISHED_GENERATION, Completion, EngineStopped, Generated,
                                 GenerationRequest, InferenceEngine, Listener, PromptTooLong, Readout)

__all__ = ["DEFAULT_INFERENCE", "PUBLISHED_GENERATION", "Completion", "EngineStopped", "Generated",
           "GenerationRequest", "InferenceEngine", "KernelCheckFailed", "Listener", "PromptTooLong", "Readout"]
