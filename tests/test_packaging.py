"""Repository shape and packaging rules that are easy to break."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN


@pytest.fixture(scope="module")
def pyproject(repo_root):
    return tomllib.loads((repo_root / "pyproject.toml").read_text())


def _names(requirements):
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_platform_folder_is_not_a_package(repo_root):
    assert not (repo_root / "platform/__init__.py").exists()
    # From the repository root (first on sys.path), `import platform` is still the standard library's.
    script = "import platform, sysconfig, emola; print(platform.__file__); print(sysconfig.get_paths()['stdlib'])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo_root, check=True)
    module, stdlib = out.stdout.split()
    assert Path(module).parent == Path(stdlib), module


def test_mission_dependencies_are_declared_with_lower_bounds(pyproject):
    deps = pyproject["project"]["dependencies"]
    names = _names(deps)
    for name in ("ray", "torch", "transformers", "peft", "deepspeed", "mlflow", "dvc", "rouge-score", "pydantic"):
        assert name in names, name
    assert all(">=" in d for d in deps), [d for d in deps if ">=" not in d]
    assert "ray[train,serve,data]>=2.60" in deps


def test_onnxruntime_flavours_never_share_an_environment(pyproject):
    base = _names(pyproject["project"]["dependencies"])
    extras = {k: _names(v) for k, v in pyproject["project"]["optional-dependencies"].items()}
    assert not base & {"onnxruntime", "onnxruntime-gpu", "insightface"}  # insightface requires the CPU wheel
    assert "onnxruntime" in extras["cpu"] and "insightface" in extras["cpu"]
    assert "onnxruntime-gpu" in extras["gpu"] and "onnxruntime" not in extras["gpu"]
    for name, extra in extras.items():
        assert not {"onnxruntime", "onnxruntime-gpu"} <= extra, name


def test_console_script_runs():
    out = subprocess.run([VENV_BIN / "emola", "--help"], capture_output=True, text=True, check=True)
    for command in ("data", "params"):
        assert command in out.stdout


def test_ci_runs_the_readmes_test_command(repo_root):
    readme = (repo_root / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    commands = [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) >= 2
    assert "dvc repro" in commands[0] and "scripts/setup.sh" in commands[0]
    assert "pytest" in commands[1]
    ci = (repo_root / ".ci/run").read_text()
    assert commands[1] in ci
