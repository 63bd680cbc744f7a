"""RAF-DB accuracy and the 3-fold AU F1 of DISFA, BP4D and GFT, by hand-computed cases."""

from __future__ import annotations

import json

import pytest

from emola.cli.main import main
from emola.metrics.protocols import au_fold_f1, rafdb_accuracy, rafdb_label


def test_rafdb_labels_use_rafdb_order():
    assert [rafdb_label(i) for i in range(1, 8)] == ["surprise", "fear", "disgust", "happiness", "sadness",
                                                    "anger", "neutral"]
    assert rafdb_label("4") == "happiness" and rafdb_label("Anger") == "anger"
    with pytest.raises(ValueError):
        rafdb_label(8)


def test_rafdb_accuracy():
    predictions = ["The person looks happy.", "The face shows sadness.", "She is surprised.", "He looks calm."]
    result = rafdb_accuracy(predictions, [4, 5, 2, 7])   # happiness, sadness, fear (wrong), neutral
    assert result["accuracy"] == pytest.approx(75.0)
    assert result["per_class_accuracy"]["fear"] == 0.0 and result["per_class_accuracy"]["happiness"] == 100.0
    assert result["mean_class_accuracy"] == pytest.approx(75.0)


def test_disfa_three_fold_mean_uses_the_disfa_au_list():
    # Fold 0: AU1 perfect, AU2 never right; AU12 outside nothing; AU14 is not a DISFA AU: ignored.
    fold0 = (["AU1 and AU14", "AU2", "nothing"], ["1", "", "2"])
    fold1 = (["AU1", "AU1"], ["1", "1, 2"])
    fold2 = (["AU4", "none"], ["4", "2"])
    result = au_fold_f1("DISFA", [fold0, fold1, fold2])
    # fold0: AU1 F1 100, AU2 F1 0 (fp and fn) -> 50; fold1: AU1 is 1 in every target and prediction,
    # so it is left out, AU2 0 -> 0; fold2: AU2 0, AU4 100 -> 50. Mean over folds: 33.3.
    assert result["fold_f1"] == pytest.approx([50.0, 0.0, 50.0])
    assert result["mean_f1"] == pytest.approx(100 / 3)
    assert "14" not in result["per_au_f1"]
    with pytest.raises(ValueError, match="3 subject-exclusive folds"):
        au_fold_f1("BP4D", [fold0, fold1])


def test_protocol_cli(tmp_path, capsys):
    path = tmp_path / "pred.jsonl"
    lines = [{"prediction": "AU1", "label": "1", "fold": f} for f in range(3)] + [{"prediction": "AU2", "label": "1"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    assert main(["protocol", "GFT", "--input", str(path)]) == 1   # bad lines reported, the rest scored
    out = capsys.readouterr()
    assert json.loads(out.out)["benchmark"] == "GFT" and json.loads(out.out)["n"] == [1, 1, 1]
    assert "line 4: needs fold 0, 1 or 2" in out.err and "line 5" in out.err


def test_rege_cli_reports_bad_lines_by_number_and_scores_the_rest(tmp_path, capsys):
    path = tmp_path / "pred.jsonl"
    good = {"prediction": "The person looks happy.", "reference": "A happy face.", "label": "happiness"}
    path.write_text("\n".join([json.dumps(good), "{oops", json.dumps({"prediction": "x"}),
                               json.dumps({**good, "label": "bored"}), json.dumps([1])]) + "\n")
    assert main(["rege", "--task", "emotion", "--input", str(path)]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["S_re"] == 100.0 and json.loads(out.out)["n"] == 1
    assert "line 2: not valid JSON" in out.err
    assert "line 3: missing reference, label" in out.err
    assert "line 4: bad label 'bored'" in out.err
    assert "line 5: not a JSON object" in out.err


def test_rege_cli_scores_one_task_of_a_file_that_holds_both(tmp_path, capsys):
    """The evaluate stage's reports/predictions.jsonl has emotion and AU lines: each task scores its own."""
    path = tmp_path / "predictions.jsonl"
    emotion = {"task": "emotion", "prediction": "The person looks happy.", "reference": "A happy face.",
               "label": "happiness"}
    au = {"task": "au", "prediction": "AU12 is active.", "reference": "AU12 and AU6.", "label": "6, 12"}
    path.write_text("\n".join(json.dumps(x) for x in (emotion, au, emotion)) + "\n")
    assert main(["rege", "--task", "emotion", "--input", str(path)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["n"] == 2 and out.err == ""
    assert main(["rege", "--task", "au", "--input", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1
