"""The readout head's scores: macro F1 over the AUs that occur, and emotion accuracy."""

from __future__ import annotations

import pytest

from emola.metrics.readout import readout_scores


def _au(label: str, probabilities: dict[int, float]) -> dict:
    return {"task": "au", "label": label, "readout": {"aus": {str(a): p for a, p in probabilities.items()},
                                                       "emotions": {"neutral": 1.0}}}


def test_au_macro_f1_counts_only_aus_that_occur_and_emotion_accuracy_the_top_class():
    records = [
        _au("1, 12", {1: 0.9, 12: 0.6, 4: 0.1}),     # AU1 tp, AU12 tp
        _au("4", {1: 0.7, 4: 0.4}),                  # AU1 fp, AU4 fn
        _au("", {}),                                 # nothing labelled, nothing predicted
        {"task": "emotion", "label": "happiness", "readout": {"aus": {}, "emotions": {"happiness": 0.6, "fear": 0.4}}},
        {"task": "emotion", "label": "fear", "readout": {"aus": {}, "emotions": {"happiness": 0.6, "fear": 0.4}}},
        {"task": "emotion", "label": "fear", "prediction": "no head"},   # no readout: not counted
    ]
    scores = readout_scores(records)
    # AU1: 2*1/(2+1) = 66.67; AU12: 100; AU4: 0 -> macro 55.56 over the three AUs that occur.
    assert scores["au"]["per_au"] == {"AU1": 66.67, "AU4": 0.0, "AU12": 100.0}
    assert scores["au"]["macro_f1"] == pytest.approx(55.556, abs=1e-3) and scores["au"]["n"] == 3
    assert scores["emotion"] == {"accuracy": 50.0, "n": 2}
    assert readout_scores([{"task": "au", "label": "1", "prediction": "x"}]) == {}
