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
