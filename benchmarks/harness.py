"""What the lasting benchmarks share: the repository root, the default pipeline's training
inputs, and writing results to ``benchmarks/results/<name>.json`` beside printing them.

Imported by the scripts in this folder (``python benchmarks/<name>.py`` puts it on the path).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "platform") not in sys.path:     # runs from a checkout without the package installed too
    sys.path.insert(1, str(ROOT / "platform"))


def results_path(name: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"{name}.json"


def write_results(name: str, results: dict, out: str | Path | None = None) -> Path:
    """Write ``results`` with the date and the machine to ``out`` (default ``results/<name>.json``)."""
    path = Path(out) if out else results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpus": os.cpu_count(), "processor": platform.machine(), "python": platform.python_version()},
              **results}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def training_inputs(cfg) -> tuple[list, str, dict]:
    """The default pipeline's training rows, the landmark backend key the landmarks stage stored
    them under, and their prior vectors (run ``dvc repro`` first)."""
    from emola.data.manifest import read_manifest
    from emola.landmarks.cache import prior_vectors
    from emola.landmarks.registry import manifest_backend_key

    manifest = ROOT / cfg.data.manifests / "train.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} not found: run `dvc repro` first")
    rows = list(read_manifest(manifest))
    key = manifest_backend_key(cfg.landmarks, rows)
    return rows, key, prior_vectors(ROOT / cfg.landmarks.cache, key, {r.image_sha256 for r in rows})
