"""MLflow conventions: where runs go, and what a run records about its inputs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DEFAULT_DB = "mlflow.db"


def tracking_uri(repo_root: Path | str = ".") -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<repo>/mlflow.db`` (absolute: Ray workers run elsewhere)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(repo_root).resolve() / DEFAULT_DB}"


def configure(repo_root: Path | str = ".") -> str:
    """Point mlflow at the tracking URI; return it. MLflow's own INFO lines (database set-up, a new
    experiment, input-example checks) stay off the terminal; warnings still show."""
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri(repo_root)
    mlflow.set_tracking_uri(uri)
    return uri


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}`` (MLflow params are strings, <= 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def git_commit(repo_root: Path | str = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_data_hashes(repo_root: Path | str = ".", stages: tuple[str, ...] = ("data", "landmarks")) -> dict[str, str]:
    """Content hashes of the data the run used, from ``dvc.lock`` (``dvc.<stage>.<path>`` -> md5)."""
    lock = Path(repo_root) / "dvc.lock"
    if not lock.is_file():
        return {}
    stages_lock = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    hashes = {}
    for stage in stages:
        for out in stages_lock.get(stage, {}).get("outs", []):
            hashes[f"dvc.{stage}.{out['path']}"] = out.get("md5", "")
    return hashes
