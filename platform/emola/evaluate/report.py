"""The evaluation's reports: the files DVC tracks and the figures MLflow keeps.

    metrics.json            DVC metrics: emotion.S_re/S_ge/S_rege and au.S_re/S_ge/S_rege (and, for a model
                            with a readout head, readout.au_macro_f1 and readout.emotion_accuracy)
    predictions.jsonl       one line per test sample (``emola rege`` reads it; with the head's probabilities)
    details.json            per-class accuracy, confusion matrix, per-AU P/R/F1, rouge-score; the head's per-AU F1
    baselines.json          the same six numbers for prior_off, the untrained model and any --baseline
    plots/confusion.csv     actual,predicted (DVC confusion plot)
    plots/per_au_f1.csv     au,f1
    plots/train_loss.csv    step,loss from the training run in MLflow (step,loss,model: one model per task)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emola.fileio import atomic_write_lines


def write_reports(reports: Path, records: list[dict], metrics: dict, results: dict, baseline_metrics: dict,
                  train_loss: dict[str, list[tuple[int, float]]], readout: dict | None = None) -> None:
    """Every file above, each written atomically (``readout``: :func:`emola.metrics.readout.readout_scores`)."""
    atomic_write_lines(reports / "predictions.jsonl", (json.dumps(r) for r in records))
    atomic_write_lines(reports / "metrics.json", [json.dumps(metrics, indent=2)])
    details = {t: r.to_dict() for t, r in results.items()}
    if readout:
        details["readout"] = readout
    atomic_write_lines(reports / "details.json", [json.dumps(details, indent=2)])
    atomic_write_lines(reports / "baselines.json", [json.dumps(baseline_metrics, indent=2)])
    write_plots(reports, results, train_loss)


def write_plots(reports: Path, results: dict, train_loss: dict[str, list[tuple[int, float]]]) -> None:
    plots = reports / "plots"
    if "emotion" in results:
        labels = results["emotion"].extras["confusion_matrix"]["labels"]
        rows = results["emotion"].extras["confusion_matrix"]["rows"]
        lines = ["actual,predicted"] + [f"{labels[i]},{labels[j]}" for i, row in enumerate(rows)
                                        for j, count in enumerate(row) for _ in range(count)]
        atomic_write_lines(plots / "confusion.csv", lines)
    if "au" in results:
        per_au = results["au"].extras["per_au"]
        atomic_write_lines(plots / "per_au_f1.csv", ["au,f1"] + [f"AU{au},{v['f1']:.3f}" for au, v in per_au.items()])
    if len(train_loss) > 1:  # one model per task: a series per model
        lines = ["step,loss,model"] + [f"{s},{v:.5f},{name}" for name, series in train_loss.items() for s, v in series]
    else:
        lines = ["step,loss"] + [f"{s},{v:.5f}" for series in train_loss.values() for s, v in series]
    atomic_write_lines(plots / "train_loss.csv", lines)


def figures(results: dict, train_loss) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    if "emotion" in results:
        cm = results["emotion"].extras["confusion_matrix"]
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.imshow(np.array(cm["rows"]), cmap="Blues")
        ax.set_xticks(range(7), cm["labels"], rotation=45, ha="right")
        ax.set_yticks(range(7), cm["labels"])
        ax.set_xlabel("predicted"), ax.set_ylabel("actual"), ax.set_title("emotion confusion matrix")
        fig.tight_layout()
        figures["confusion_matrix.png"] = fig
    if "au" in results:
        per_au = results["au"].extras["per_au"]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([f"AU{a}" for a in per_au], [v["f1"] for v in per_au.values()])
        ax.set_ylabel("F1 (%)"), ax.set_title("per-AU F1"), ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        figures["per_au_f1.png"] = fig
    if any(train_loss.values()):
        fig, ax = plt.subplots(figsize=(5, 3))
        for name, series in train_loss.items():
            ax.plot([s for s, _ in series], [v for _, v in series], label=name)
        if len(train_loss) > 1:
            ax.legend()
        ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title("training loss")
        fig.tight_layout()
        figures["train_loss.png"] = fig
    return figures
