"""How much per-face information the landmark prior carries, raw against aligned.

    python benchmarks/prior_alignment.py [--manifests data/manifests] [--cache data/landmarks]

A linear probe (logistic regression, scikit-learn, which MLflow already installs) reads
the prior vectors of the train split and predicts the test split's labels: emotion
accuracy, and per-AU F1 with their macro mean over FABA's 12 scored AUs (REGE's AU score
computed from labels instead of text). "raw" is the vector the landmark stage cached;
"aligned" is the same vector after :class:`~emola.model.prior_projector.PriorProjector`'s
similarity alignment, fitted on the train split exactly as training fits it. Both get
per-coordinate standardization. The probe is an upper-bound-style check on what the
prior token can tell the model, not the model's score.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def load(manifests: Path, cache: Path, backend_key: str | None) -> tuple[dict, dict, str]:
    from emola.data.manifest import read_manifest
    from emola.faces.cache import LandmarkCache
    from emola.faces.pipeline import prior_vectors

    rows = {split: list(read_manifest(manifests / f"{split}.jsonl")) for split in ("train", "test")}
    if backend_key is None:
        keys = sorted(set(LandmarkCache(cache).read().column("backend").to_pylist()))
        if len(keys) != 1:
            raise SystemExit(f"{cache} holds {keys}: pass --backend")
        backend_key = keys[0]
    priors = prior_vectors(cache, backend_key, {r.image_sha256 for rs in rows.values() for r in rs})
    return rows, priors, backend_key


def probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    model = LogisticRegression(max_iter=3000)
    return model.fit((x_train - mean) / std, y_train).predict((x_test - mean) / std)


def main() -> None:
    import torch
    from sklearn.metrics import f1_score

    from emola.data.labels import FABA_SCORED_AUS
    from emola.model.prior_projector import PriorProjector

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", type=Path, default=Path("data/manifests"))
    parser.add_argument("--cache", type=Path, default=Path("data/landmarks"))
    parser.add_argument("--backend", default=None, help="landmark backend key (default: the cache's only one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prior_alignment.json"))
    args = parser.parse_args()

    rows, priors, backend_key = load(args.manifests, args.cache, args.backend)
    train_vectors = np.stack([priors[r.image_sha256] for r in rows["train"] if r.image_sha256 in priors])
    projector = PriorProjector(train_vectors.shape[1], 8, align=True)
    started = time.perf_counter()
    projector.fit_normalization(torch.tensor(train_vectors), standardize=False)
    fit_seconds = time.perf_counter() - started
    views = {"raw": lambda v: v,
             "aligned": lambda v: projector.align_to_reference(torch.tensor(v)).numpy()}

    results: dict = {"backend": backend_key, "fit_seconds": round(fit_seconds, 3)}
    for name, view in views.items():
        out: dict = {}
        for task in ("emotion", "au"):
            train = [r for r in rows["train"] if r.task == task and r.image_sha256 in priors]
            test = [r for r in rows["test"] if r.task == task and r.image_sha256 in priors]
            x_train = view(np.stack([priors[r.image_sha256] for r in train]))
            x_test = view(np.stack([priors[r.image_sha256] for r in test]))
            if task == "emotion":
                predicted = probe(x_train, np.array([r.emotion for r in train]), x_test)
                out["emotion_accuracy"] = round(100 * float(np.mean(predicted == np.array([r.emotion for r in test]))), 1)
            else:
                per_au = {}
                for au in FABA_SCORED_AUS:
                    y_train = np.array([au in r.aus for r in train], int)
                    y_test = np.array([au in r.aus for r in test], int)
                    if len(set(y_train)) < 2 or len(set(y_test)) < 2:
                        continue  # REGE leaves such AUs out of the mean too
                    per_au[au] = round(100 * f1_score(y_test, probe(x_train, y_train, x_test), zero_division=0), 1)
                out["au_macro_f1"] = round(float(np.mean(list(per_au.values()))), 1)
                out["per_au_f1"] = per_au
        results[name] = out
        print(f"{name:8s} emotion accuracy {out['emotion_accuracy']:5.1f}   AU macro F1 {out['au_macro_f1']:5.1f}   "
              f"per AU {out['per_au_f1']}")
    gain = results["aligned"]["au_macro_f1"] - results["raw"]["au_macro_f1"]
    print(f"alignment: AU macro F1 {gain:+.1f} points (reference fit on {len(train_vectors)} faces in {fit_seconds:.2f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
