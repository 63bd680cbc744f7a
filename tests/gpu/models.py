"""The GPU suite's model: the ``emola-7b`` widths (hidden 4,096, 32 heads of 128, the LLaVA-1.5 vocabulary, a
CLIP-L/14-336 vision front of 576 tokens) with few layers, random bf16 weights, LoRA moved off its start."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))   # the benchmark's gate helpers: one code for both

import gpu  # noqa: E402
import gpu_gate  # noqa: E402

PAD, EOS = gpu.PAD, gpu.EOS
PRIOR_DIM = 212


def config(layers: int = 4):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, pad_token_id=32001)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, image_seq_length=576,
                       vision_feature_layer=-2, vision_feature_select_strategy="default")


def lora(r: int = 16):
    from emola.config.schema import LoraConfig

    return LoraConfig(r=r, alpha=2 * r, dropout=0.0, modules_to_save=[],
                      targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def build(layers: int = 4, device: str = "cuda", dtype=torch.bfloat16, merged: bool = True):
    """The model; with ``merged`` its (random, non-zero) LoRA merged into the weights."""
    from emola.model.builder import build_random
    from emola.model.lora import apply_lora

    torch.manual_seed(0)
    model = apply_lora(build_random(config(layers), PRIOR_DIM, dtype=dtype, device=device), lora())
    return gpu_gate.merge_random_lora(model) if merged else model


def shape(llava, device: str = "cuda", dtype=torch.bfloat16) -> dict:
    """What ``benchmarks/gpu.py``'s prompts and batches and ``gpu_gate.gate_requests`` read of a benchmark shape."""
    return {"llava": llava, "prior_dim": PRIOR_DIM, "gate_answer": (6, 24), "device": device, "dtype": dtype,
            "text": 40, "question": (8, 40), "micro_batch": 4, "emotion_answer": (48, 128), "au_answer": (200, 384),
            "train_answer": {"emotion": 80, "au": 300}}


def make_prompt(s: dict):
    """Prompts as the GPU benchmark builds them (text, the image tokens, the prior token, a question)."""
    return lambda rng: gpu.prompt_ids(s, rng)
