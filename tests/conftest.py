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
