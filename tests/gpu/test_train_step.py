"""On a GPU: the training step Ray Train's workers call, through the DeepSpeed ZeRO-2 engine, against the plain
single-process loop from the same weights and batches."""

from __future__ import annotations

import pytest
import torch

from tests.gpu import models

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_the_deepspeed_zero2_step_follows_the_plain_step():
    from emola.train.step import TrainStep, init_single_process_group

    gpu = models.gpu   # benchmarks/gpu.py: its synthetic batches and training settings
    init_single_process_group("nccl")
    shape = models.shape(models.config(layers=4))
    batches = [gpu.train_batch(shape, "mixed", False, seed) for seed in range(2)]
    losses = {}
    for engine in ("plain", "deepspeed"):
        cfg = gpu.train_config(shape, False, {"checkpointing": "all", "compile": False, "zero_stage": 2})
        step = TrainStep(models.build(layers=4, merged=False), cfg, total_steps=100, engine=engine)
        losses[engine] = [step(batches[i % 2]).loss for i in range(6)]
        del step
        torch.cuda.empty_cache()
    print(losses)
    assert all(torch.isfinite(torch.tensor(losses["deepspeed"])))
    for plain, zero2 in zip(losses["plain"], losses["deepspeed"]):   # the same optimizer steps, bf16 apart
        assert abs(plain - zero2) <= 2e-2 * abs(plain), losses
