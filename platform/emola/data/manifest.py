"""The platform's normalized manifest: one JSON Lines row per (image, task, question, answer).

Every later stage (landmarks, train, evaluate) reads manifests, never release files, so
the release format is parsed in one place. A manifest folder holds::

    train.jsonl     rows of both tasks, split "train"
    test.jsonl      rows of both tasks, split "test"
    rejects.jsonl   one line per skipped record: file, index, id, reasons
    summary.json    row counts per task and split, and the reject count

Paths in a row are relative to its ``root`` (the release folder), and ``root`` is written
relative to the manifest's own folder (``../release``): :func:`read_manifest` resolves it
there, so a row names the same image whatever the reader's working directory (a Ray
worker's, or the copy of the repository ``ray job submit`` runs in), and a manifest and its
release move together. Rows written before (``root_base: cwd``) keep a root relative to
the working directory the pipeline ran in.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from emola.labels import EVAL_QUESTIONS
from emola.data.release import CheckedRecord, FileReport, RecordIssue
from emola.data.records import TrainRecord
from emola.fileio import atomic_write_lines

MANIFEST_VERSION = 2


class ManifestRow(BaseModel):
    """One sample as every stage sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uid: str                      # "{task}/{split}/{id}", unique across the manifest
    id: str                       # release id (train) or image path (test)
    task: Literal["emotion", "au"]
    split: Literal["train", "test"]
    root: str                     # release root the paths below are relative to
    root_base: Literal["manifest", "cwd"] = "cwd"   # what a relative root is relative to
    image: str
    image_sha256: str             # content key shared with the landmark cache
    question: str
    answer: str
    emotion: str | None = None    # class name, emotion task (train rows only when the release has it)
    aus: list[int] | None = None  # active AUs, AU task
    label_raw: str | int | None = None
    landmark: str | None = None   # annotation file shipped with the release
    landmark_layout: str | None = None  # ibug68 | insightface106
    source: str | None = None

    def image_path(self) -> Path:
        return Path(self.root) / self.image

    def landmark_path(self) -> Path | None:
        return Path(self.root) / self.landmark if self.landmark else None


def to_row(checked: CheckedRecord, task: str, root: str) -> ManifestRow:
    """Normalize one checked release record."""
    record = checked.record
    if isinstance(record, TrainRecord):
        record_id, question, answer = str(record.id), record.question, record.answer
        label_raw, source = getattr(record, "label", None), record.source
    else:
        record_id, question, answer = record.image, EVAL_QUESTIONS[task], record.gpt4.strip()
        label_raw, source = record.label, getattr(record, "source", None)
    return ManifestRow(
        uid=f"{task}/{checked.split}/{record_id}",
        id=record_id,
        task=task,
        split=checked.split,
        root=root,
        image=record.image,
        image_sha256=checked.image_sha256,
        question=question,
        answer=answer,
        emotion=checked.emotion,
        aus=list(checked.aus) if checked.aus is not None else None,
        label_raw=label_raw,
        landmark=record.landmark,
        landmark_layout=checked.landmark_layout,
        source=source,
    )


def write_manifests(reports: Iterable[FileReport], out_dir: Path | str, root: str | Path) -> dict:
    """Convert checked release files into manifests under ``out_dir``; return the summary.

    Good records are converted; bad ones go to ``rejects.jsonl``. Each file is written
    atomically, so an interrupted run never leaves a half-written manifest. ``root`` (the
    release folder) is recorded relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = os.path.relpath(Path(root).resolve(), out_dir.resolve())
    rows: dict[str, list[ManifestRow]] = {"train": [], "test": []}
    rejects: list[RecordIssue] = []
    for report in reports:
        if report.task is None:
            raise ValueError(f"{report.file}: the task must be known to convert (pass it explicitly)")
        rows[report.split].extend(to_row(c, report.task, root).model_copy(update={"root_base": "manifest"})
                                  for c in report.good)
        rejects.extend(report.issues)
    for split, split_rows in rows.items():
        atomic_write_lines(out_dir / f"{split}.jsonl", (r.model_dump_json() for r in split_rows))
    atomic_write_lines(out_dir / "rejects.jsonl", (json.dumps(i.to_dict()) for i in rejects))
    counts = Counter(f"{r.task}_{r.split}" for split_rows in rows.values() for r in split_rows)
    summary = {
        "version": MANIFEST_VERSION,
        "rows": {key: counts.get(key, 0) for key in ("emotion_train", "emotion_test", "au_train", "au_test")},
        "images": len({r.image_sha256 for split_rows in rows.values() for r in split_rows}),
        "rejected": len(rejects),
    }
    atomic_write_lines(out_dir / "summary.json", [json.dumps(summary, indent=2)])
    return summary


def read_manifest(path: Path | str) -> Iterator[ManifestRow]:
    """Rows of one manifest file, their roots made absolute when they are relative to the manifest;
    a bad line raises naming its line number."""
    path = Path(path)
    base = path.parent.resolve()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = ManifestRow.model_validate_json(line)
                except ValueError as err:
                    raise ValueError(f"{path}: line {lineno}: {err}") from None
                if row.root_base == "manifest" and not Path(row.root).is_absolute():
                    row = row.model_copy(update={"root": os.path.normpath(base / row.root)})
                yield row
