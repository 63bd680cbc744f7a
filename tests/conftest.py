"""Shared fixtures: the repository root and one small FABA-Synth release per test session."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from emola.synth.dataset import DEFAULT_FILES, generate

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # dvc and emola console scripts live beside python


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def synth_release(tmp_path_factory) -> Path:
    """A small FABA-Synth release (40 train, 20 test images at 96 px); do not modify it."""
    root = tmp_path_factory.mktemp("faba-synth") / "release"
    generate(root, train=40, test=20, seed=5, image_size=96, workers=1)
    return root


@pytest.fixture
def release_copy(synth_release, tmp_path) -> Path:
    """A private, modifiable copy of the small release."""
    copy = tmp_path / "release"
    shutil.copytree(synth_release, copy)
    return copy


@pytest.fixture(scope="session")
def release_files() -> dict[tuple[str, str], str]:
    return dict(DEFAULT_FILES)


@pytest.fixture(scope="session")
def real_photos(tmp_path_factory) -> dict[str, Path]:
    """Real face photos that ship inside installed packages (no network)."""
    import insightface
    import matplotlib
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    astronaut = folder / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(astronaut)
    return {
        "astronaut": astronaut,
        "grace_hopper": Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg",
        "t1": Path(insightface.__file__).parent / "data/images/t1.jpg",
        "tom_hanks": Path(insightface.__file__).parent / "data/images/Tom_Hanks_54745.png",
    }


@pytest.fixture(scope="session")
def tiny_corpus(synth_release) -> list[str]:
    import json

    texts = []
    for rel in ("train/train_emotion_anno.json", "train/train_au_anno.json"):
        texts += [r["conversations"][1]["value"] for r in json.loads((synth_release / rel).read_text())]
    return texts


@pytest.fixture(scope="session")
def tiny_params():
    from emola.config import load_config

    return load_config(REPO / "params.yaml")


def build_tiny(tiny_params, corpus, **model_overrides):
    """A tiny EmoLA with LoRA applied, its processor and its config."""
    from emola.model.builder import build_emola
    from emola.model.lora import apply_lora

    model_cfg = tiny_params.model.model_copy(update=model_overrides)
    model, processor, config = build_emola(model_cfg, profile="tiny", landmark_backend="annotation@1-68",
                                           tasks=["emotion", "au"], corpus=corpus)
    return apply_lora(model, model_cfg.lora), processor, config


def copy_as_task_part(checkpoint: Path, folder: Path, task: str) -> Path:
    """A copy of ``checkpoint`` that declares one task, as ``train.separate_models`` exports it."""
    import json

    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "emola_config.json").read_text())
    (folder / "emola_config.json").write_text(json.dumps({**config, "tasks": [task]}))
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_params, tiny_corpus, tmp_path_factory) -> Path:
    """A saved tiny checkpoint whose trainable weights are not at their initial values."""
    import torch

    from emola.model.checkpoint import save_checkpoint

    model, processor, config = build_tiny(tiny_params, tiny_corpus)
    torch.manual_seed(1)
    model.prior_projector.fit_normalization(100 + 10 * torch.randn(32, 136))  # saved buffers, not their defaults
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return save_checkpoint(model, processor, config, tmp_path_factory.mktemp("ckpt") / "checkpoint")


@pytest.fixture(scope="session")
def readout_checkpoint(tiny_params, tiny_corpus, tmp_path_factory) -> Path:
    """The tiny model with a (random) readout head, saved."""
    import torch

    from emola.model.checkpoint import save_checkpoint
    from emola.model.readout import ReadoutHead

    model, processor, config = build_tiny(tiny_params, tiny_corpus)
    torch.manual_seed(5)
    model.readout = ReadoutHead(model.base_llava.config.text_config.hidden_size)
    with torch.no_grad():
        model.readout.emotion.weight.mul_(20)   # spread the random head's outputs so expressions come and go
    return save_checkpoint(model, processor, config, tmp_path_factory.mktemp("readout") / "checkpoint")


@pytest.fixture(scope="session")
def recording(real_photos, tmp_path_factory) -> Path:
    """12 frames at 10 fps panning over a photo of six people, then 4 frames of an empty wall."""
    import av
    import numpy as np
    from PIL import Image

    photo = np.asarray(Image.open(real_photos["t1"]).convert("RGB"))
    path = tmp_path_factory.mktemp("video") / "group.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 1000, 700, "yuv420p"
    frames = [photo[10 + 6 * i: 710 + 6 * i, 20 + 12 * i: 1020 + 12 * i] for i in range(12)]
    frames += [np.full((700, 1000, 3), 180, np.uint8)] * 4
    for image in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="session")
def small_pipeline(synth_release, tmp_path_factory) -> dict[str, Path]:
    """Manifests and a landmark cache for the small release: what the train stage reads."""
    from emola.config import load_config
    from emola.data.stage import check_release
    from emola.data.manifest import write_manifests
    from emola.landmarks.pipeline import run_landmark_job

    root = tmp_path_factory.mktemp("pipeline")
    cfg = load_config(REPO / "params.yaml", {"landmarks.cache": str(root / "landmarks")})
    write_manifests(check_release(synth_release, cfg.data), root / "manifests", root=str(synth_release))
    run_landmark_job([root / "manifests/train.jsonl", root / "manifests/test.jsonl"], cfg.landmarks, use_ray=False)
    return {"manifests": root / "manifests", "landmarks": root / "landmarks", "root": root}


def small_training_overrides(pipeline: dict[str, Path], out: Path, **extra) -> list[str]:
    """Job arguments for a short 2-worker DeepSpeed run on the small pipeline."""
    settings = {"data.manifests": pipeline["manifests"], "landmarks.cache": pipeline["landmarks"],
                "train.storage_path": out / "runs", "train.output": out / "model", "train.max_steps": 12,
                "train.micro_batch": 4, "train.checkpoint_every": 4, "train.log_every": 1,
                "model.tiny.text_layers": 1, **extra}
    return [f"{k}={v}" for k, v in settings.items()]


@pytest.fixture(autouse=True)
def _no_ray_left_running():
    """Tests that run Ray inside pytest (landmark and evaluation jobs) shut it down afterwards:
    a later test's `ray stop` would otherwise take pytest's own Ray, and pytest, down."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
