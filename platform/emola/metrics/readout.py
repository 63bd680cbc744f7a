"""Scores of the readout head on the test split, beside REGE: AU F1 and emotion accuracy.

The head gives probabilities (:mod:`emola.model.readout`); an AU counts as predicted when
its probability is at least ``threshold`` (0.5), the emotion is the most probable class.
The AU score is the macro F1 over the FABA AUs that occur in the labels or the
predictions (an AU neither labelled nor predicted anywhere has no F1 and does not count),
in percent like REGE's S_re; the emotion score is the accuracy in percent.
"""

from __future__ import annotations

from collections.abc import Sequence

from emola.labels import AU_LISTS


def readout_scores(records: Sequence[dict], threshold: float = 0.5,
                   aus: Sequence[int] = AU_LISTS["FABA"]) -> dict[str, dict]:
    """``{"au": {"macro_f1", "per_au", "n"}, "emotion": {"accuracy", "n"}}`` over the records that carry a
    ``readout`` (``{"aus": {au: p}, "emotions": {name: p}}``) and a label; a task without such records is left out."""
    out: dict[str, dict] = {}
    au_records = [r for r in records if r["task"] == "au" and r.get("readout")]
    if au_records:
        counts = {au: [0, 0, 0] for au in aus}   # true positives, false positives, false negatives
        for r in au_records:
            truth = {int(a) for a in str(r["label"]).replace(",", " ").split() if a.strip().isdigit()}
            predicted = {int(a) for a, p in r["readout"]["aus"].items() if p >= threshold}
            for au in aus:
                c = counts[au]
                c[0] += au in truth and au in predicted
                c[1] += au not in truth and au in predicted
                c[2] += au in truth and au not in predicted
        per_au = {au: 100.0 * 2 * tp / (2 * tp + fp + fn) for au, (tp, fp, fn) in counts.items() if tp + fp + fn}
        out["au"] = {"macro_f1": round(sum(per_au.values()) / max(len(per_au), 1), 3),
                     "per_au": {f"AU{au}": round(v, 2) for au, v in per_au.items()}, "n": len(au_records)}
    emotion_records = [r for r in records if r["task"] == "emotion" and r.get("readout") and r.get("label")]
    if emotion_records:
        right = sum(max(r["readout"]["emotions"], key=r["readout"]["emotions"].get) == r["label"]
                    for r in emotion_records)
        out["emotion"] = {"accuracy": round(100.0 * right / len(emotion_records), 3), "n": len(emotion_records)}
    return out
