"""The Analyzer API and ``emola analyze`` on a real photo."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest

from emola import Analyzer
from emola.config.schema import GenerationConfig
from tests.conftest import VENV_BIN


@pytest.fixture(scope="module")
def analyzer(tiny_checkpoint):
    return Analyzer.from_checkpoint(tiny_checkpoint, generation=GenerationConfig(temperature=0.01, top_p=0.5, max_new_tokens=16))


def test_analyze_a_real_photo(analyzer, real_photos):
    result = analyzer.analyze(real_photos["grace_hopper"], task="emotion")
    assert result.status == "ok" and isinstance(result.description, str)
    assert result.emotion in {"happiness", "sadness", "surprise", "anger", "neutral", "disgust", "fear"}
    assert result.face is not None and len(result.face.box) == 4 and len(result.face.landmarks) == 68
    assert result.landmark_backend == "dlib-68@1"  # annotation-trained priors: dlib-68 shares their normalization
    assert {"decode", "landmarks", "generate", "total"} <= set(result.timings_ms)


def test_au_task_and_free_questions_and_batches(analyzer, real_photos, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    results = analyzer.analyze_many([real_photos["astronaut"], tmp_path / "bad.jpg", real_photos["tom_hanks"]], task="au")
    assert [r.status for r in results] == ["ok", "unreadable", "ok"]
    assert all(isinstance(r.aus, list) for r in results if r.status == "ok")
    free = analyzer.analyze(real_photos["astronaut"].read_bytes(), question="Is this person calm?")
    assert free.question == "Is this person calm?" and free.status == "ok"


def test_cli_analyze_json_and_csv(tiny_checkpoint, real_photos, tmp_path):
    base = [VENV_BIN / "emola", "analyze", real_photos["grace_hopper"]]
    options = ["--checkpoint", tiny_checkpoint, "--max-new-tokens", "8"]
    run = subprocess.run([*map(str, base + options)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["description"] is not None and record["emotion"] and len(record["face"]["box"]) == 4

    out = tmp_path / "table.csv"
    run = subprocess.run([*map(str, base + [real_photos["t1"]] + options), "--csv", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and rows[0]["emotion"] and rows[0]["face_x0"]
