"""Reading FABA-Instruct release files and checking every record against its release root.

:func:`check_release_file` never stops at the first problem: it returns every good
record (with the facts later stages need: task, split, image hash, landmark layout) and
one :class:`RecordIssue` per bad record naming its index, its id and every reason.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ValidationError

from emola.labels import LabelError, parse_au_label, parse_emotion_label
from emola.data.records import TestRecord, TrainRecord
from emola.imaging import ImageProblem, read_image_file

Split = Literal["train", "test"]
Task = Literal["emotion", "au"]

#: Landmark layouts recognised in release files: flat or (N, 2) arrays.
LANDMARK_LAYOUTS: dict[int, str] = {68: "ibug68", 106: "insightface106"}


class ReleaseFileError(ValueError):
    """The file as a whole cannot be read (missing, not JSON, not a list of records)."""


@dataclass(frozen=True)
class RecordIssue:
    """Everything wrong with one record."""

    file: str
    index: int
    record_id: str | None
    reasons: tuple[str, ...]

    def message(self) -> str:
        who = f"record {self.index}" + (f" (id {self.record_id})" if self.record_id is not None else "")
        return f"{self.file}: {who}: " + "; ".join(self.reasons)

    def to_dict(self) -> dict:
        return {"file": self.file, "index": self.index, "id": self.record_id, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class CheckedRecord:
    """A record that passed every check, with the facts the checks established."""

    index: int
    split: Split
    task: Task | None
    record: TrainRecord | TestRecord
    image_sha256: str
    landmark_layout: str
    emotion: str | None = None
    aus: tuple[int, ...] | None = None


@dataclass
class FileReport:
    file: str
    split: Split
    task: Task | None
    good: list[CheckedRecord] = field(default_factory=list)
    issues: list[RecordIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues


def read_release_records(path: Path) -> list:
    """Load a release file: a JSON array (the official format) or JSON Lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReleaseFileError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReleaseFileError(f"{path}: cannot read: {err}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ReleaseFileError(f"{path}: not valid JSON: {err}") from None
        return records
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ReleaseFileError(f"{path}: line {lineno}: not valid JSON: {err}") from None
    if not records:
        raise ReleaseFileError(f"{path}: no records (expected a JSON array or JSON Lines)")
    return records


def infer_split(records: list) -> Split:
    """A file's split from its records' shape: ``conversations`` means train, ``gpt4`` test."""
    votes = Counter(
        "train" if "conversations" in r else "test"
        for r in records
        if isinstance(r, dict) and ("conversations" in r or "gpt4" in r)
    )
    if not votes:
        raise ReleaseFileError("cannot tell train from test records: none has 'conversations' or 'gpt4'")
    return votes.most_common(1)[0][0]


def _parses(fn, value) -> bool:
    try:
        fn(value)
        return True
    except LabelError:
        return False


def infer_task(records: list) -> Task | None:
    """A test file's task from its labels: all parse as emotions -> emotion, else AU."""
    labels = [r["label"] for r in records if isinstance(r, dict) and "label" in r]
    if not labels:
        return None
    emotion = sum(_parses(parse_emotion_label, v) for v in labels)
    au = sum(_parses(parse_au_label, v) for v in labels)
    if emotion == len(labels):  # "4" is both neutral and AU4: all-parseable means emotion
        return "emotion"
    return "emotion" if emotion > au else "au"


def resolve_inside(root: Path, relative: str) -> Path:
    """Resolve ``relative`` under ``root``; raise ``ValueError`` if it escapes the root."""
    if Path(relative).is_absolute():
        raise ValueError(f"path {relative!r} is absolute (must be relative to the release root)")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"path {relative!r} escapes the release root")
    return resolved


#: ``np.load`` parses each ``.npy`` header with ``ast.literal_eval``, and CPython 3.11's parser is not safe to
#: enter from several threads at once ("AST constructor recursion depth mismatch", seen in the release check's
#: thread pool): one thread at a time reads a landmark file.
_NPY_LOCK = threading.Lock()


def load_landmarks(path: Path) -> np.ndarray:
    """Load a landmark ``.npy`` (no pickles) as an ``(N, 2)`` float32 array of a known layout."""
    try:
        with _NPY_LOCK:
            array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError("landmark file not found") from None
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"landmark file unreadable: {err}") from None
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"landmark array has dtype {array.dtype}, expected numbers")
    flat_points = array.size // 2
    shape_ok = (array.ndim == 1 and array.size % 2 == 0) or (array.ndim == 2 and array.shape[1] == 2)
    if not shape_ok or flat_points not in LANDMARK_LAYOUTS:
        raise ValueError(
            f"landmark array has shape {array.shape}, expected 68 or 106 points "
            "((136,), (68, 2), (212,) or (106, 2))"
        )
    points = array.reshape(-1, 2).astype(np.float32)
    if not np.isfinite(points).all():
        raise ValueError("landmark array holds NaN or infinite values")
    return points


def _check_one(
    index: int, raw: object, split: Split, task: Task | None, root: Path, max_pixels: int
) -> CheckedRecord | tuple[str | None, list[str]]:
    """Check one record; return it checked, or ``(id, reasons)``."""
    if not isinstance(raw, dict):
        return None, [f"not a JSON object ({type(raw).__name__})"]
    record_id = str(raw["id"]) if split == "train" and "id" in raw else None
    model = TrainRecord if split == "train" else TestRecord
    try:
        record = model.model_validate(raw)
    except ValidationError as err:
        reasons = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"])
            reasons.append(f"missing field {where!r}" if e["type"] == "missing" else f"field {where!r}: {e['msg']}")
        return record_id, reasons

    reasons: list[str] = []
    emotion = aus = None
    label = record.label
    if label is not None and task is not None:
        try:
            if task == "emotion":
                emotion = parse_emotion_label(label)
            else:
                aus = parse_au_label(label)
        except LabelError as err:
            reasons.append(str(err))
    elif label is not None and not (_parses(parse_emotion_label, label) or _parses(parse_au_label, label)):
        reasons.append(f"label {label!r} is neither an emotion nor a list of AUs")
    intensities = getattr(record, "au_intensities", None)
    if intensities is not None and aus is not None and {int(k) for k in intensities} != set(aus):
        reasons.append(f"au_intensities name AUs {sorted(int(k) for k in intensities)}, the label {list(aus)}")

    image_sha = ""
    layout = ""
    try:
        _, image_sha = read_image_file(resolve_inside(root, record.image), max_pixels)
    except ImageProblem as err:
        reasons.append(f"image {record.image!r}: {err}")
    except ValueError as err:  # escapes the root
        reasons.append(f"image: {err}")
    try:
        layout = LANDMARK_LAYOUTS[len(load_landmarks(resolve_inside(root, record.landmark)))]
    except ValueError as err:
        reasons.append(f"landmark {record.landmark!r}: {err}")

    if reasons:
        return record_id, reasons
    return CheckedRecord(index, split, task, record, image_sha, layout, emotion, aus)


def check_release_file(
    path: Path | str,
    root: Path | str,
    *,
    split: Split | None = None,
    task: Task | None = None,
    max_pixels: int = 40_000_000,
    threads: int = 8,
) -> FileReport:
    """Check every record of a release file against the release ``root``.

    ``split`` and ``task`` are inferred from the records when not given (train files
    carry no label, so their task stays ``None`` unless given). Image decoding runs on
    ``threads`` threads: Pillow releases the GIL while decoding.
    """
    path, root = Path(path), Path(root)
    if not root.is_dir():
        raise ReleaseFileError(f"{root}: release root is not a folder")
    records = read_release_records(path)
    if not isinstance(records, list):
        raise ReleaseFileError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    split = split or infer_split(records)
    if task is None and split == "test":
        task = infer_task(records)
    report = FileReport(file=str(path), split=split, task=task)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda ir: _check_one(ir[0], ir[1], split, task, root, max_pixels), enumerate(records)))

    # Duplicates: the id for train records, the image path for test records (which have no id).
    first_seen: dict[str, int] = {}
    for index, (raw, result) in enumerate(zip(records, results)):
        key = None
        if isinstance(raw, dict):
            key = str(raw["id"]) if split == "train" and "id" in raw else raw.get("image") if split == "test" else None
        duplicate = None
        if isinstance(key, str):
            if key in first_seen:
                what = "id" if split == "train" else "image"
                duplicate = f"duplicate {what} {key!r} (first at record {first_seen[key]})"
            else:
                first_seen[key] = index
        if isinstance(result, CheckedRecord) and duplicate is None:
            report.good.append(result)
            continue
        record_id, reasons = (getattr(result.record, "id", None), []) if isinstance(result, CheckedRecord) else result
        if duplicate:
            reasons = [*reasons, duplicate]
        report.issues.append(
            RecordIssue(str(path), index, None if record_id is None else str(record_id), tuple(reasons))
        )
    return report
