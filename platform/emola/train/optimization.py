"""Parameter groups, learning-rate schedule and the DeepSpeed configuration."""

from __future__ import annotations

import math

import torch

from emola.config.schema import TrainConfig


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """LoRA, fully trained LLM modules, the prior projector (and its AU head, when training has one) at ``lr``;
    the vision projector at ``projector_lr``."""
    vision, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (vision if "multi_modal_projector" in name else rest).append(param)
    groups = [{"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "lora_and_prior"}]
    if vision:
        groups.append({"params": vision, "lr": cfg.projector_lr, "weight_decay": cfg.weight_decay,
                       "name": "vision_projector"})
    return groups


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of each group's base learning rate at optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, cfg: TrainConfig):
    warmup = math.ceil(cfg.warmup_ratio * total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, cfg.schedule))


def deepspeed_config(cfg: TrainConfig, use_cpu: bool, client_optimizer: bool = False) -> dict:
    """DeepSpeed settings from ``train`` params.

    The optimizer is PyTorch's AdamW: either handed to DeepSpeed by the caller
    (``client_optimizer``: the fused kernel, ``train.fused_adam``) or built by DeepSpeed
    (``torch_adam``; DeepSpeed's own fused Adam would compile for a minute or more at
    start). bf16 is used when ``train.precision`` says so.
    """
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 2:
        zero.update(overlap_comm=not use_cpu, contiguous_gradients=True)
    if cfg.offload == "cpu" and cfg.zero_stage >= 2:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not use_cpu}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": not use_cpu}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                                  "weight_decay": cfg.weight_decay, "torch_adam": True}},
        "steps_per_print": 10**9,  # progress lines come from the recipe
        "wall_clock_breakdown": False,
    }
    if client_optimizer:
        del config["optimizer"]
    return config
