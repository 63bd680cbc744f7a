"""The validator on FABA-Synth and on a copy corrupted in every listed way."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from emola.data.manifest import read_manifest, write_manifests
from emola.data.release import check_release_file
from tests.conftest import VENV_BIN


def _check_all(root, files):
    return [check_release_file(root / rel, root, split=split, task=task) for (task, split), rel in files.items()]


def test_synth_release_validates_cleanly(synth_release, release_files):
    for report in _check_all(synth_release, release_files):
        assert report.ok, [i.message() for i in report.issues]
        assert report.good


def test_split_and_task_are_inferred(synth_release, release_files):
    for (task, split), rel in release_files.items():
        report = check_release_file(synth_release / rel, synth_release)
        assert report.split == split
        if split == "test":
            assert report.task == task


def _corrupt_train(root, rel):
    """Break records 1..8 of a train file, one way each; return {index: expected reason}."""
    path = root / rel
    records = json.loads(path.read_text())
    del records[1]["image"]
    records[2]["label"] = "contempt"
    (root / records[3]["image"]).unlink()
    (root / records[4]["image"]).write_bytes(b"this is not a JPEG")
    np.save(root / records[5]["landmark"], np.zeros((5, 3), np.float32))
    records[6]["image"] = "../../outside.jpg"
    records[7]["id"] = records[0]["id"]
    data = (root / records[8]["image"]).read_bytes()
    (root / records[8]["image"]).write_bytes(data[: len(data) // 3])
    path.write_text(json.dumps(records))
    return {
        1: "missing field 'image'",
        2: "unknown emotion label 'contempt'",
        3: "file not found",
        4: "not a readable image",
        5: "landmark array has shape (5, 3)",
        6: "escapes the release root",
        7: f"duplicate id {records[0]['id']!r} (first at record 0)",
        8: "truncated",
    }


def test_every_bad_record_is_named_once_and_good_ones_still_convert(release_copy, release_files, tmp_path):
    rel = release_files[("emotion", "train")]
    expected = _corrupt_train(release_copy, rel)
    total = len(json.loads((release_copy / rel).read_text()))
    report = check_release_file(release_copy / rel, release_copy, task="emotion")

    assert sorted(i.index for i in report.issues) == sorted(expected)  # one issue per bad record
    for issue in report.issues:
        assert expected[issue.index] in issue.message()
        assert f"record {issue.index}" in issue.message()
        if issue.index != 1:  # every record here has an id; the message names it
            assert f"(id synth-train-" in issue.message()
    assert len(report.good) == total - len(expected)

    out = tmp_path / "manifests"
    summary = write_manifests([report], out, root=str(release_copy))
    assert summary["rows"]["emotion_train"] == total - len(expected)
    assert summary["rejected"] == len(expected)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rejects) == sorted(expected)
    assert len(list(read_manifest(out / "train.jsonl"))) == total - len(expected)


def test_test_records_unknown_labels_and_bad_landmarks(release_copy, release_files):
    rel = release_files[("au", "test")]
    records = json.loads((release_copy / rel).read_text())
    records[0]["label"] = "4, 8"          # AU8 is not in the FABA label space
    del records[1]["gpt4"]
    records[2]["landmark"] = "/etc/passwd"  # absolute
    np.save(release_copy / records[3]["landmark"], np.array([1.0, np.nan] * 68, np.float32))
    np.save(release_copy / records[4]["landmark"], np.array([{"x": 1}], dtype=object), allow_pickle=True)
    records[5]["image"] = records[6]["image"]  # the same image twice in a test file
    (release_copy / rel).write_text(json.dumps(records))
    report = check_release_file(release_copy / rel, release_copy, task="au")
    reasons = {i.index: i.message() for i in report.issues}
    assert "AU8 is not in the label space" in reasons[0]
    assert "missing field 'gpt4'" in reasons[1]
    assert "is absolute" in reasons[2]
    assert "NaN or infinite" in reasons[3]
    assert "landmark file unreadable" in reasons[4]  # object arrays are never unpickled
    assert "duplicate image" in reasons[6]
    assert set(reasons) == {0, 1, 2, 3, 4, 6}


@pytest.mark.parametrize("task", ["au", None])
def test_train_records_optional_annotations_are_checked(release_copy, release_files, task):
    """FABA-Synth's train records carry a label and intensities: each is checked, with or without the file's task."""
    rel = release_files[("au", "train")]
    records = json.loads((release_copy / rel).read_text())
    records[0]["label"] = "confusion"
    records[1]["au_intensities"] = {"1": 1.5}
    records[2]["intensity"] = "high"
    records[3]["au_intensities"] = {"AU1": 0.5}
    records[4]["au_intensities"] = {"9": 0.5}     # names an AU its label does not have
    records[5]["comment"] = "bookkeeping"          # unknown keys stay allowed
    (release_copy / rel).write_text(json.dumps(records))
    report = check_release_file(release_copy / rel, release_copy, split="train", task=task)
    reasons = {i.index: i.message() for i in report.issues}
    assert ("is not an AU number" if task else "neither an emotion nor a list of AUs") in reasons[0]
    assert "AU1 intensity 1.5 is outside 0..1" in reasons[1]
    assert "field 'intensity'" in reasons[2]
    assert "key 'AU1' is not an AU number" in reasons[3]
    assert set(reasons) == ({0, 1, 2, 3, 4} if task else {0, 1, 2, 3})
    if task:
        assert "au_intensities name AUs [9]" in reasons[4]


def test_decompression_bombs_are_rejected_before_decoding(release_copy, release_files):
    rel = release_files[("emotion", "test")]
    records = json.loads((release_copy / rel).read_text())
    Image.new("L", (6000, 6000)).save(release_copy / records[0]["image"], format="PNG")
    report = check_release_file(release_copy / rel, release_copy, max_pixels=10_000_000)
    assert [i.index for i in report.issues] == [0]
    assert "6000x6000 exceeds the cap of 10000000 pixels" in report.issues[0].message()


def test_cli_validate_reports_all_and_exits_nonzero(release_copy, release_files):
    rel = release_files[("emotion", "train")]
    expected = _corrupt_train(release_copy, rel)
    run = subprocess.run([VENV_BIN / "emola", "data", "validate", release_copy / rel, "--root", release_copy,
                          "--task", "emotion"], capture_output=True, text=True)
    assert run.returncode == 1
    lines = run.stdout.strip().splitlines()
    assert len(lines) == len(expected)
    for line, (index, reason) in zip(lines, sorted(expected.items())):
        assert f"record {index}" in line and reason in line
    assert f"{len(expected)} bad" in run.stderr


def test_cli_validate_clean_file_exits_zero(synth_release, release_files):
    rel = release_files[("au", "test")]
    run = subprocess.run([VENV_BIN / "emola", "data", "validate", synth_release / rel, "--root", synth_release],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == ""
    assert "0 bad" in run.stderr and "task au" in run.stderr


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "cannot tell train from test records"),
])
def test_cli_validate_unreadable_file_exits_2(tmp_path, content, message):
    path = tmp_path / "anno.json"
    if content is not None:
        path.write_text(content)
    run = subprocess.run([VENV_BIN / "emola", "data", "validate", path, "--root", tmp_path],
                         capture_output=True, text=True)
    assert run.returncode == 2 and message in run.stderr


def test_json_lines_files_are_read(release_copy, release_files):
    rel = release_files[("emotion", "test")]
    records = json.loads((release_copy / rel).read_text())
    jsonl = release_copy / "eval.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    report = check_release_file(jsonl, release_copy)
    assert report.ok and len(report.good) == len(records) and report.task == "emotion"


def test_symlink_escaping_the_root_is_rejected(release_copy, release_files, tmp_path):
    rel = release_files[("emotion", "test")]
    records = json.loads((release_copy / rel).read_text())
    outside = tmp_path / "outside.jpg"
    shutil.copy(release_copy / records[0]["image"], outside)
    (release_copy / records[0]["image"]).unlink()
    (release_copy / records[0]["image"]).symlink_to(outside)
    report = check_release_file(release_copy / rel, release_copy)
    assert [i.index for i in report.issues] == [0]
    assert "escapes the release root" in report.issues[0].message()
