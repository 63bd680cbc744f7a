"""The ``data`` pipeline stage: produce a release (synthesize or import) and its manifests."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from emola.config import DataConfig
from emola.data.manifest import write_manifests
from emola.data.release import FileReport, check_release_file
from emola.fileio import replace_dir
from emola.synth.dataset import generate


def check_release(root: Path | str, cfg: DataConfig) -> list[FileReport]:
    """Check the four release files of ``cfg.files`` under ``root``."""
    return [
        check_release_file(Path(root) / rel, root, split=split, task=task, max_pixels=cfg.max_image_pixels)
        for (task, split), rel in cfg.files.by_task_split().items()
    ]


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same file system: no extra space, and the source is never modified
    except OSError:
        shutil.copy2(src, dst)


def import_release(source_root: Path | str, cfg: DataConfig) -> list[FileReport]:
    """Copy the good records of a user's FABA-Instruct release into ``cfg.release``.

    Only records that pass every check are copied (with their image and landmark files);
    the reports name the rest. The copy is assembled aside and moved into place whole.
    """
    source_root = Path(source_root)
    reports = check_release(source_root, cfg)
    target = Path(cfg.release)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        for report, rel in zip(reports, cfg.files.by_task_split().values()):
            for checked in report.good:
                for path in (checked.record.image, checked.record.landmark):
                    if not (staging / path).exists():
                        _link_or_copy(source_root / path, staging / path)
            good = [c.record.model_dump(by_alias=True) for c in report.good]
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(json.dumps(good, indent=1) + "\n", encoding="utf-8")
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return reports


def run_data_stage(cfg: DataConfig, log=print) -> dict:
    """Synthesize or import the release, then convert it to manifests; return the summary."""
    started = time.perf_counter()
    if cfg.source == "synth":
        s = cfg.synth
        synth = generate(cfg.release, train=s.train, test=s.test, seed=s.seed, image_size=s.image_size,
                         au_only_fraction=s.au_only_fraction, workers=s.workers,
                         files=cfg.files.by_task_split(), overwrite=True)
        log(f"data: FABA-Synth rendered {s.train + s.test} images in {synth['seconds']:.1f} s -> {cfg.release}")
        reports = check_release(cfg.release, cfg)  # self-check: the generator's output must validate
    else:
        reports = import_release(cfg.faba_instruct.root, cfg)
        log(f"data: imported FABA-Instruct from {cfg.faba_instruct.root} -> {cfg.release}")
    for report in reports:
        for issue in report.issues:
            log(f"data: skipped {issue.message()}")
    summary = write_manifests(reports, cfg.manifests, root=cfg.release)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    log(f"data: manifests {summary['rows']} ({summary['rejected']} rejected) -> {cfg.manifests}")
    return summary
