"""Conversion of a release into the normalized manifests."""

from __future__ import annotations

import json

from emola.labels import EVAL_QUESTIONS, parse_au_label
from emola.data.manifest import read_manifest, write_manifests
from emola.data.release import check_release_file
from emola.imaging import sha256_bytes


def _convert(root, files, out):
    reports = [check_release_file(root / rel, root, split=s, task=t) for (t, s), rel in files.items()]
    return write_manifests(reports, out, root=str(root))


def test_manifests_cover_both_tasks_and_splits(synth_release, release_files, tmp_path):
    summary = _convert(synth_release, release_files, tmp_path)
    for (task, split), rel in release_files.items():
        n = len(json.loads((synth_release / rel).read_text()))
        assert summary["rows"][f"{task}_{split}"] == n
    assert summary["rejected"] == 0 and summary["images"] == 60
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "rejects.jsonl").read_text() == ""
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_rows_hold_what_later_stages_need(synth_release, release_files, tmp_path):
    _convert(synth_release, release_files, tmp_path)
    train = list(read_manifest(tmp_path / "train.jsonl"))
    test = list(read_manifest(tmp_path / "test.jsonl"))
    assert len({r.uid for r in train + test}) == len(train + test)
    for row in train + test:
        assert row.image_sha256 == sha256_bytes(row.image_path().read_bytes())
        assert row.landmark_path().is_file() and row.landmark_layout == "ibug68"
        assert "<image>" not in row.question and row.answer
        if row.task == "emotion":
            assert row.emotion is not None and row.aus is None
        else:
            assert row.aus == list(parse_au_label(row.label_raw)) and row.emotion is None
    for row in test:
        assert row.question == EVAL_QUESTIONS[row.task]
    train_questions = {r.question for r in train if r.task == "emotion"}
    assert len(train_questions) > 1  # questions come from a pool of paraphrases


def test_rows_name_their_images_wherever_the_reader_runs(synth_release, tmp_path, monkeypatch):
    """The release root is recorded relative to the manifest and resolved against it, not the working directory."""
    import json as _json

    from emola.config import load_config
    from emola.data.manifest import read_manifest, write_manifests
    from emola.data.stage import check_release
    from tests.conftest import REPO

    cfg = load_config(REPO / "params.yaml")
    write_manifests(check_release(synth_release, cfg.data), tmp_path / "manifests", root=synth_release)
    raw = _json.loads((tmp_path / "manifests/train.jsonl").read_text().splitlines()[0])
    assert raw["root_base"] == "manifest" and not raw["root"].startswith("/")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    row = next(read_manifest(tmp_path / "manifests/train.jsonl"))
    assert row.image_path().is_absolute() and row.image_path().is_file()
