"""The traditional benchmarks the paper reports beside FABA-Bench, on the user's own data.

- RAF-DB (basic emotions): accuracy of the emotion parsed from each description. RAF-DB's
  integer labels use its own order (1 surprise, 2 fear, 3 disgust, 4 happiness,
  5 sadness, 6 anger, 7 neutral), not FABA's; names are accepted too. The published
  EmoLA reaches 92.05.
- DISFA, BP4D, GFT (AU detection): the per-AU F1 macro mean over the data set's AU list
  (:data:`emola.metrics.rege.SCORED_AUS`, same exclusions as REGE) on each of the three
  subject-exclusive folds, then the mean over folds. Published: 65.1, 64.2, 62.1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emola.labels import parse_emotion_label
from emola.metrics.rege import au_recognition, emotion_recognition

RAFDB_LABELS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
AU_BENCHMARKS = ("DISFA", "BP4D", "GFT")
FOLDS = 3


def rafdb_label(label: object) -> str:
    """A RAF-DB label (1-7 in RAF-DB's order, or a class name) as the platform's class name."""
    if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
        value = int(label)
        if value not in RAFDB_LABELS:
            raise ValueError(f"RAF-DB label {label!r} is not in 1..7")
        return RAFDB_LABELS[value]
    return parse_emotion_label(label)


def rafdb_accuracy(predictions: Sequence[str], labels: Sequence[object]) -> dict:
    """Accuracy (percent), mean per-class accuracy and the confusion matrix."""
    accuracy, details = emotion_recognition(predictions, [rafdb_label(label) for label in labels])
    per_class = [v for v in details["per_class_accuracy"].values() if v is not None]
    return {"benchmark": "RAF-DB", "accuracy": accuracy, "mean_class_accuracy": float(np.mean(per_class)),
            "n": len(predictions), "per_class_accuracy": details["per_class_accuracy"],
            "confusion_matrix": details["confusion_matrix"]}


def au_fold_f1(dataset: str, folds: Sequence[tuple[Sequence[str], Sequence[object]]]) -> dict:
    """Mean F1 per fold and over the three folds; ``folds``: (predictions, labels) per fold."""
    if dataset not in AU_BENCHMARKS:
        raise ValueError(f"unknown AU benchmark {dataset!r} ({', '.join(AU_BENCHMARKS)})")
    if len(folds) != FOLDS:
        raise ValueError(f"{dataset} is scored on {FOLDS} subject-exclusive folds; got {len(folds)}")
    per_fold, per_au = [], []
    for predictions, labels in folds:
        mean, details = au_recognition(predictions, labels, dataset)
        per_fold.append(mean)
        per_au.append(details["per_au_f1"])
    aus = sorted({au for fold in per_au for au in fold})
    return {"benchmark": dataset, "mean_f1": float(np.mean(per_fold)), "fold_f1": per_fold,
            "per_au_f1": {str(au): float(np.mean([f[au] for f in per_au if au in f])) for au in aus},
            "n": [len(p) for p, _ in folds]}
