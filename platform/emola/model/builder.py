"""One builder for every profile: the same classes from a checkpoint or from small configs."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from emola.config.schema import ModelConfig, TinyArchitecture
from emola.model.configuration import EmolaModelConfig
from emola.model.modeling import EmolaForConditionalGeneration
from emola.model.prior_projector import PriorProjector
from emola.model.processing import EmolaProcessor, make_image_processor
from emola.model.templates import IMAGE, PRIOR
from emola.model.tokenizer import train_tiny_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_llava_config(arch: TinyArchitecture, image_size: int, vision_feature_layer: int, vocab_size: int,
                      image_token_id: int, special_ids: dict[str, int]) -> LlavaConfig:
    """A small LLaVA: CLIP-style vision tower and Llama-style decoder, random init."""
    vision = CLIPVisionConfig(hidden_size=arch.vision_hidden, intermediate_size=4 * arch.vision_hidden,
                              num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads,
                              image_size=image_size, patch_size=arch.patch_size, projection_dim=arch.vision_hidden)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=arch.text_hidden, intermediate_size=arch.text_intermediate,
                       num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
                       num_key_value_heads=arch.text_heads, max_position_embeddings=2048,
                       initializer_range=arch.init_std, **special_ids)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                       image_seq_length=(image_size // arch.patch_size) ** 2,
                       vision_feature_layer=vision_feature_layer, vision_feature_select_strategy="default")


def llava_1_5_7b_config() -> LlavaConfig:
    """The architecture of ``llava-hf/llava-1.5-7b-hf`` (for sizing on the meta device; no download)."""
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, pad_token_id=32001)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, image_seq_length=576,
                       vision_feature_layer=-2, vision_feature_select_strategy="default")


def num_image_tokens(llava_config: LlavaConfig) -> int:
    v = llava_config.vision_config
    return (v.image_size // v.patch_size) ** 2


def build_emola(cfg: ModelConfig, *, profile: str, landmark_backend: str, tasks: list[str],
                corpus: Iterable[str] | None = None) -> tuple[EmolaForConditionalGeneration, EmolaProcessor, EmolaModelConfig]:
    """Build EmoLA (without LoRA; see :func:`emola.model.lora.apply_lora`).

    ``cfg.base`` null builds the ``tiny`` architecture with random weights and a tokenizer
    trained on ``corpus`` (the training texts); otherwise the HF LLaVA checkpoint at
    ``cfg.base`` (a local path or hub id) is loaded and ``<prior>`` added to its tokenizer.
    """
    if cfg.base is None:
        if corpus is None:
            raise ValueError("the tiny profile trains its tokenizer on the training texts: pass corpus")
        tokenizer = train_tiny_tokenizer(corpus, cfg.tiny.vocab_size)
        ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id}
        llava_config = tiny_llava_config(cfg.tiny, cfg.image_size, cfg.vision_feature_layer, len(tokenizer),
                                         tokenizer.convert_tokens_to_ids(IMAGE), ids)
        torch.manual_seed(0)  # the same tiny base for the same tokenizer
        llava = LlavaForConditionalGeneration(llava_config)
    else:
        tokenizer = AutoTokenizer.from_pretrained(cfg.base)
        tokenizer.add_special_tokens({"additional_special_tokens": [PRIOR]})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token
        llava = LlavaForConditionalGeneration.from_pretrained(cfg.base, dtype=_DTYPES[cfg.dtype])
        llava.resize_token_embeddings(len(tokenizer))
        llava_config = llava.config
    llava.to(_DTYPES[cfg.dtype])
    hidden = llava_config.text_config.hidden_size
    projector = (PriorProjector(cfg.prior_dim, hidden, align=cfg.prior_align).to(_DTYPES[cfg.dtype])
                 if cfg.prior == "landmarks" else None)
    n_image = num_image_tokens(llava_config)
    processor = EmolaProcessor(tokenizer, make_image_processor(cfg.image_size), cfg.template, n_image,
                               use_image=cfg.vision == "clip", use_prior=cfg.prior == "landmarks")
    model = EmolaForConditionalGeneration(llava, projector, processor.image_token_id, processor.prior_token_id)
    emola_cfg = EmolaModelConfig(profile=profile, base=cfg.base, vision=cfg.vision, prior=cfg.prior,
                                 prior_dim=cfg.prior_dim, prior_align=cfg.prior_align,
                                 landmark_backend=landmark_backend, template=cfg.template,
                                 image_size=cfg.image_size, num_image_tokens=n_image,
                                 lora=cfg.lora.model_dump(), tasks=list(tasks))
    return model, processor, emola_cfg


def build_random(llava_config: LlavaConfig, prior_dim: int, *, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu", prior_token_id: int | None = None) -> EmolaForConditionalGeneration:
    """EmoLA with random weights at any architecture, built directly on ``device`` in ``dtype``
    (benchmarks of large profiles: no download). ``prior_token_id`` defaults to the id after
    the image token (an unused row of LLaVA-1.5's padded vocabulary)."""
    with torch.device(device):
        llava = LlavaForConditionalGeneration._from_config(llava_config, dtype=dtype)
        projector = PriorProjector(prior_dim, llava_config.text_config.hidden_size).to(dtype)
    prior_id = llava_config.image_token_id + 2 if prior_token_id is None else prior_token_id
    return EmolaForConditionalGeneration(llava, projector, llava_config.image_token_id, prior_id)


def build_on_meta(llava_config: LlavaConfig, prior_dim: int) -> EmolaForConditionalGeneration:
    """EmoLA on the meta device (shapes only, no memory): for parameter counts of large profiles."""
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(llava_config)
        projector = PriorProjector(prior_dim, llava_config.text_config.hidden_size)
    return EmolaForConditionalGeneration(llava, projector, llava_config.image_token_id, -1)
