"""LoRA on the language model's linear layers only, by composition with peft.

Targets are matched by a full-name pattern rooted at the LLM's decoder layers, so no
vision-tower or projector linear is ever adapted whatever it is called. After wrapping,
the vision projector and the prior projector are made trainable; the vision tower and the
word embeddings stay frozen.
"""

from __future__ import annotations

import re
import warnings

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from emola.config.schema import LoraConfig
from emola.model.modeling import EmolaForConditionalGeneration

# Names inside the LLaVA model, which is what peft wraps (the prior projector stays outside).
LLM_PREFIX = "model.language_model"


def target_pattern(targets: list[str]) -> str:
    """Full-match pattern of the LLM decoder's linear layers named in ``targets``."""
    names = "|".join(re.escape(t) for t in targets)
    return rf"{re.escape(LLM_PREFIX)}\.layers\.\d+\.(?:self_attn|mlp)\.(?:{names})"


def modules_to_save(names: list[str]) -> list[str]:
    """LLM-relative names (``lm_head``, ``norm``) -> full module names."""
    full = {"lm_head": "lm_head", "norm": f"{LLM_PREFIX}.norm", "embed_tokens": f"{LLM_PREFIX}.embed_tokens"}
    unknown = sorted(set(names) - set(full))
    if unknown:
        raise ValueError(f"model.lora.modules_to_save: unknown module(s) {unknown} (known: {sorted(full)})")
    return [full[n] for n in names]


def peft_config(lora: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                          target_modules=target_pattern(lora.targets),
                          modules_to_save=modules_to_save(lora.modules_to_save) or None)


def apply_lora(model: EmolaForConditionalGeneration, lora: LoraConfig) -> EmolaForConditionalGeneration:
    """Wrap ``model.llava`` with LoRA adapters (in place) and set what trains; returns ``model``."""
    if isinstance(model.llava, PeftModel):
        raise ValueError("LoRA is already applied")
    with warnings.catch_warnings():   # peft probes transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        model.llava = get_peft_model(model.llava, peft_config(lora))
    for module in trainable_projectors(model):
        module.requires_grad_(True)
    return model


def trainable_projectors(model: EmolaForConditionalGeneration) -> list[nn.Module]:
    """The vision projector and the prior projector (trained in full, beside LoRA)."""
    modules = [model.base_llava.model.multi_modal_projector]
    if model.prior_projector is not None:
        modules.append(model.prior_projector)
    return modules


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
