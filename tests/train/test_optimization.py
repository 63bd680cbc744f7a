"""Schedule, parameter groups, DeepSpeed settings, and the training params that steer them."""

from __future__ import annotations

import pytest

from emola.config import load_config
from emola.config.loader import ParamsError
from emola.train.optimization import deepspeed_config, lr_factor, parameter_groups
from tests.conftest import build_tiny


def test_warmup_then_cosine_to_zero():
    total, warmup = 100, 3
    factors = [lr_factor(s, total, warmup, "cosine") for s in range(total)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert factors[3] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.0, abs=1e-3)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert lr_factor(50, total, 0, "constant") == 1.0
    assert lr_factor(50, 100, 0, "linear") == pytest.approx(0.5)


def test_vision_projector_has_its_own_learning_rate(tiny_params, tiny_corpus):
    model, _, _ = build_tiny(tiny_params, tiny_corpus)
    train = tiny_params.train.model_copy(update={"lr": 1e-3, "projector_lr": 2e-5})
    groups = {g["name"]: g for g in parameter_groups(model, train)}
    assert groups["vision_projector"]["lr"] == 2e-5 and groups["lora_and_prior"]["lr"] == 1e-3
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == n_trainable


def test_deepspeed_settings_follow_params(repo_root):
    tiny = load_config(repo_root / "params.yaml").train
    cfg = deepspeed_config(tiny, use_cpu=True)
    assert cfg["zero_optimization"]["stage"] == 2 and not cfg["bf16"]["enabled"]
    assert cfg["optimizer"]["params"]["torch_adam"] is True  # no fused-Adam build on CPU
    assert cfg["train_micro_batch_size_per_gpu"] == tiny.micro_batch
    assert "optimizer" not in deepspeed_config(tiny, use_cpu=True, client_optimizer=True)   # PyTorch's fused AdamW
    big = load_config(repo_root / "params.yaml", {"profile": "emola-7b", "train.offload": "cpu",
                                                  "train.zero_stage": 3}).train
    cfg = deepspeed_config(big, use_cpu=False)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and cfg["bf16"]["enabled"] and zero["stage3_gather_16bit_weights_on_model_save"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"


def test_task_weights_are_checked_and_part_of_the_profiles(repo_root):
    assert load_config(repo_root / "params.yaml", {"profile": "emola-7b"}).train.task_weights == {}  # published
    assert load_config(repo_root / "params.yaml", ["train.task_weights={au: 2}"]).train.task_weights == {"au": 2.0}
    with pytest.raises(ParamsError, match="must be > 0"):
        load_config(repo_root / "params.yaml", ["train.task_weights={au: 0}"])
    with pytest.raises(ParamsError, match="task_weights"):
        load_config(repo_root / "params.yaml", ["train.task_weights={video: 1.0}"])


def test_au_code_weight_is_checked_and_published_as_one(repo_root):
    assert load_config(repo_root / "params.yaml", {"profile": "emola-7b"}).train.au_code_weight == 1.0  # published
    assert load_config(repo_root / "params.yaml", []).train.au_code_weight == 5.0
    with pytest.raises(ParamsError, match="au_code_weight"):
        load_config(repo_root / "params.yaml", ["train.au_code_weight=0"])
