"""Checks a job makes in its driver before any Ray worker starts: the paths it reads and writes, and tracking.

A job run through ``ray job submit --working-dir .`` runs in Ray's temporary copy of the
repository, which holds the code but not the DVC-tracked data, and disappears with the
job. So a relative input path there names nothing, and a relative output path (or the
default sqlite tracking store) would be written into the copy and lost. Each check raises
:class:`JobInputError` with the path and what to pass instead; the jobs print it and exit
2, in seconds, without starting (or restarting) workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

SUBMITTED_HINT = ("the job runs in Ray's temporary copy of the repository (ray job submit --working-dir), which "
                  "holds the code only: pass absolute paths every Ray worker can read, e.g. {key}=$PWD/{value}")


class JobInputError(ValueError):
    """A job's input, output or tracking setting that cannot work; the message says what to pass."""


def submitted_working_dir() -> Path | None:
    """The uploaded working-dir copy this process runs in under ``ray job submit``, else None.

    Ray hands a submitted job's driver its runtime environment in ``RAY_JOB_CONFIG_JSON_ENV_VAR``;
    the working dir is the current directory then.
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return Path.cwd() if runtime_env.get("working_dir") else None


def _hint(key: str, value: Path | str) -> str:
    return SUBMITTED_HINT.format(key=key, value=value) if submitted_working_dir() else f"pass {key}=<an existing path>"


def require_file(path: Path | str, key: str, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise JobInputError(f"{what} {path} not found ({path.absolute()}); {_hint(key, path)}")
    return path


def require_dir(path: Path | str, key: str, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise JobInputError(f"{what} {path} not found ({path.absolute()}); {_hint(key, path)}")
    return path


def require_images(rows: Iterable, manifest: Path, shown: int = 3) -> None:
    """Every row's image file exists (the manifest's rows resolve against their release root)."""
    missing = [r for r in rows if not r.image_path().is_file()]
    if missing:
        examples = ", ".join(str(r.image_path()) for r in missing[:shown])
        raise JobInputError(f"{manifest}: {len(missing)} image file(s) not found, e.g. {examples}; the release the "
                            "manifest names must be readable by every Ray worker (run the data stage, or `dvc pull`)")


def require_some_images(manifests: Iterable[Path]) -> None:
    """At least one image of the manifests exists: a release that is not where the manifests say
    (rather than a few unreadable images, which the landmarks stage reports as rejects)."""
    from emola.data.manifest import read_manifest

    rows = [row for manifest in manifests for row in read_manifest(manifest)]
    if rows and not any(r.image_path().is_file() for r in rows):
        raise JobInputError(f"none of the {len(rows)} manifest images exists (e.g. {rows[0].image_path()}); the "
                            "release must be readable by every Ray worker (run the data stage, or `dvc pull`)")


def require_output(path: Path | str, key: str) -> Path:
    """A folder the job writes: refused when relative inside a submitted job's temporary copy."""
    remote = "://" in str(path)   # s3://, gs://: not a local path (Path() would fold the double slash)
    path = Path(path)
    if submitted_working_dir() and not remote and not path.is_absolute():
        raise JobInputError(f"{key}={path} would be written into Ray's temporary copy of the repository and lost with "
                            f"the job; pass an absolute path (or s3://...) every Ray worker can write, "
                            f"e.g. {key}=$PWD/{path}")
    return path


def require_tracking() -> None:
    """A submitted job must log to a store that outlives it: ``MLFLOW_TRACKING_URI``."""
    if submitted_working_dir() and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise JobInputError("MLflow: without MLFLOW_TRACKING_URI the run would go to mlflow.db inside Ray's temporary "
                            "copy of the repository and be lost; set it in the job's runtime environment, e.g. "
                            "--runtime-env-json '{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"sqlite:///'$PWD'/mlflow.db\"}}' "
                            "(the store the local pipeline uses) or http://<mlflow server>:5000")
