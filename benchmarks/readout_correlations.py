"""Do AU correlations help the readout head? Independent AU probabilities against a stacked correction.

    python benchmarks/readout_correlations.py [--checkpoint models/emola] [--out FILE]

The head gives each AU its own sigmoid. AUs co-occur (an emotion prototype moves several at
once), so a second stage could read them jointly: per AU, a logistic regression over every
AU logit and the emotion log-probabilities (27 inputs), fitted on the training split's AU
rows, thresholded at 0.5 like the head. Also measured: per-AU thresholds tuned on the
training split. Scored on the test split's AU rows with :func:`emola.metrics.readout.readout_scores`
(macro F1), against the head alone. Run ``dvc repro`` first (the pipeline's model, manifests
and landmark cache).

The training split's readouts come from the model trained on those faces, so they are more
confident than on unseen faces; a stacker fitted on them learns corrections for the faces it
knows best. So both corrections are also cross-fitted on the test split itself (5 folds:
fitted on four, applied to the fifth, scored over all): what they would give with readouts
of faces the model has not seen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from harness import ROOT, training_inputs, write_results


def readouts(engine, rows, priors) -> tuple[np.ndarray, np.ndarray]:
    """``(N, n_aus)`` AU probabilities and ``(N, n_emotions)`` emotion probabilities of the rows' faces."""
    from emola.imaging import read_image_file

    aus, emotions = [], []
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        images = [read_image_file(Path(r.image_path()), 10**9)[0] for r in chunk]
        requests = engine.requests(["?"] * len(chunk), images, np.stack([priors[r.image_sha256] for r in chunk]))
        for readout in engine.readout(requests):
            aus.append(list(readout.aus.values()))
            emotions.append(list(readout.emotions.values()))
    return np.asarray(aus, np.float64), np.asarray(emotions, np.float64)


def features(aus: np.ndarray, emotions: np.ndarray) -> np.ndarray:
    clipped = np.clip(aus, 1e-6, 1 - 1e-6)
    return np.hstack([np.log(clipped / (1 - clipped)), np.log(np.clip(emotions, 1e-6, 1))])


def fit_stacker(x: np.ndarray, y: np.ndarray, l2: float = 1e-5):
    """Per-AU logistic regression over ``x`` (standardized), full batch L-BFGS; returns a predict function."""
    import torch

    mean, std = x.mean(0), x.std(0) + 1e-6
    inputs = torch.tensor((x - mean) / std, dtype=torch.float64)
    targets = torch.tensor(y, dtype=torch.float64)
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(inputs @ weight + bias, targets)
        loss = loss + l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = torch.tensor((z - mean) / std, dtype=torch.float64) @ weight + bias
        return torch.sigmoid(logits).numpy()

    return predict


def macro_f1(probabilities: np.ndarray, labels: list[str], aus: list[int], thresholds=0.5) -> dict:
    from emola.metrics.readout import readout_scores

    thresholds = np.broadcast_to(np.asarray(thresholds, np.float64), (len(aus),))
    # readout_scores thresholds at 0.5: shift each AU's probability so that its own threshold lands there.
    shifted = np.clip(probabilities - thresholds + 0.5, 0, 1)
    records = [{"task": "au", "label": label, "readout": {"aus": {str(a): float(p) for a, p in zip(aus, row)}}}
               for row, label in zip(shifted, labels)]
    return readout_scores(records, aus=aus)["au"]


def tuned_thresholds(probabilities: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per AU, the threshold in 0.05..0.95 with the best F1 on the given rows (0.5 for an AU never labelled)."""
    grid = np.arange(0.05, 0.96, 0.05)
    best = np.full(truth.shape[1], 0.5)
    for j in range(truth.shape[1]):
        if truth[:, j].sum() == 0:
            continue
        f1 = [2 * ((p := probabilities[:, j] >= t) & (truth[:, j] > 0)).sum() / max(p.sum() + truth[:, j].sum(), 1)
              for t in grid]
        best[j] = grid[int(np.argmax(f1))]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "models/emola"))
    parser.add_argument("--out")
    args = parser.parse_args()

    import torch

    from emola.config import load_config
    from emola.data.manifest import read_manifest
    from emola.engine import InferenceEngine
    from emola.landmarks.cache import prior_vectors

    torch.set_num_threads(2)
    cfg = load_config(ROOT / "params.yaml")
    engine = InferenceEngine.from_checkpoint(args.checkpoint)
    if engine.model.readout is None:
        raise SystemExit(f"{args.checkpoint}: no readout head")
    head_aus = list(engine.model.readout.aus)
    train_rows, key, train_priors = training_inputs(cfg)
    test_rows = list(read_manifest(ROOT / cfg.data.manifests / "test.jsonl"))
    priors = {**train_priors, **prior_vectors(ROOT / cfg.landmarks.cache, key, {r.image_sha256 for r in test_rows})}
    split = {}
    for name, rows in (("train", train_rows), ("test", test_rows)):
        rows = [r for r in rows if r.task == "au" and r.aus is not None and r.image_sha256 in priors]
        aus, emotions = readouts(engine, rows, priors)
        truth = np.array([[a in set(r.aus) for a in head_aus] for r in rows], np.float64)
        split[name] = (features(aus, emotions), aus, truth, [", ".join(map(str, r.aus)) for r in rows])
        print(f"{name}: {len(rows)} AU rows read out")
    x_train, p_train, y_train, _ = split["train"]
    x_test, p_test, _, labels = split["test"]
    results = {"train_rows": len(y_train), "test_rows": len(labels)}
    variants = {
        "independent (the head)": macro_f1(p_test, labels, head_aus),
        "per-AU thresholds tuned on train": macro_f1(p_test, labels, head_aus, tuned_thresholds(p_train, y_train)),
    }
    for l2 in (1e-2, 1e-4, 1e-5):   # the L2 weight on the stacker's weights (its loss is a mean over rows and AUs)
        variants[f"stacked logistic regression, L2 {l2:g}"] = macro_f1(fit_stacker(x_train, y_train, l2)(x_test),
                                                                       labels, head_aus)
    _, _, y_test, _ = split["test"]
    folds = np.arange(len(labels)) % 5
    stacked, thresholded = np.zeros_like(p_test), np.zeros_like(p_test)
    for k in range(5):
        fit, held = folds != k, folds == k
        stacked[held] = fit_stacker(x_test[fit], y_test[fit], 1e-5)(x_test[held])
        thresholded[held] = np.clip(p_test[held] - tuned_thresholds(p_test[fit], y_test[fit]) + 0.5, 0, 1)
    variants["per-AU thresholds, 5-fold cross-fitted on test"] = macro_f1(thresholded, labels, head_aus)
    variants["stacked (L2 1e-5), 5-fold cross-fitted on test"] = macro_f1(stacked, labels, head_aus)
    for name, scores in variants.items():
        print(f"{name:52s} AU macro F1 {scores['macro_f1']:.1f}")
        results[name] = {"macro_f1": scores["macro_f1"], "per_au": scores["per_au"]}
    write_results("readout_correlations", results, args.out)


if __name__ == "__main__":
    main()
