"""REGE over many predictions: the platform's scorer against a naive per-sample loop.

    python benchmarks/evaluate.py [--n 10000]     # -> benchmarks/results/evaluate.json

Predictions and references are FABA-Synth-style descriptions (emotion and AU). The naive
loop is how REGE is often written: a new ``Rouge()`` and every regex compiled anew per
sample, one process. Both must give the same numbers; the script checks that. The
extras the reports keep beside REGE (``rouge-score``'s rouge1/2/L/Lsum) are timed too:
the package's ``RougeScorer`` against ``emola.metrics.rege.rouge_score_extras``, which must
give the same numbers bit for bit.
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
from harness import write_results


def texts(n: int, seed: int, task: str) -> tuple[list[str], list[str], list]:
    from emola.labels import EMOTION_PROTOTYPES, EMOTIONS, format_au_label
    from emola.synth.descriptions import au_description, emotion_description

    rng = np.random.default_rng(seed)
    preds, refs, labels = [], [], []
    for _ in range(n):
        emotion = EMOTIONS[int(rng.integers(7))]
        if task == "emotion":
            labels.append(emotion)
            preds.append(emotion_description(EMOTIONS[int(rng.integers(7))], rng.uniform(0.3, 1), rng))
            refs.append(emotion_description(emotion, rng.uniform(0.3, 1), rng))
        else:
            aus = EMOTION_PROTOTYPES[emotion] or (12,)
            labels.append(format_au_label(aus))
            guess = tuple(a for a in aus if rng.random() < 0.8) or (4,)
            preds.append(au_description({a: 0.7 for a in guess}, guess, rng))
            refs.append(au_description({a: 0.7 for a in aus}, aus, rng))
    return preds, refs, labels


def naive(task: str, preds, refs, labels) -> tuple[float, float]:
    from rouge import Rouge

    from emola.metrics.rege import SCORED_AUS
    from emola.metrics.rege_parsers import CLASS_ORDER, NEGATIONS, VOCABULARY

    ge = []
    correct = 0
    counts = {au: [0, 0, 0] for au in SCORED_AUS["FABA"]}
    for p, r, label in zip(preds, refs, labels):
        ge.append(Rouge().get_scores(p, r)[0]["rouge-l"]["f"] if p.strip() else 0.0)
        if task == "emotion":
            kept = [s for s in re.split(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s", p)
                    if not any(n in s.lower() for n in NEGATIONS)]
            text = " ".join(kept) if kept else p
            m = re.match(r"^.*?[.!?]", text)
            first, rest = (m.group(0), text[m.end():]) if m else (text, "")
            guess = None
            for token in re.findall(r"\b\w+\b", first.lower()):
                guess = next((c for c in CLASS_ORDER if token in VOCABULARY[c]), None)
                if guess:
                    break
            if guess is None:
                hits = {c: sum(t in VOCABULARY[c] for t in re.findall(r"\b\w+\b", rest.lower())) for c in CLASS_ORDER}
                best = max(CLASS_ORDER, key=lambda c: (hits[c], -CLASS_ORDER.index(c)))
                guess = best if hits[best] else "happiness"
            correct += guess == label
        else:
            predicted = {int(d) for d in re.findall(r"AU(\d+)", p) if int(d) in SCORED_AUS["FABA"] and str(int(d)) == d}
            target = {int(x) for x in label.split(", ")}
            for au in counts:
                counts[au][0] += au in predicted and au in target
                counts[au][1] += au in predicted and au not in target
                counts[au][2] += au not in predicted and au in target
    s_ge = 100 * float(np.mean(ge))
    if task == "emotion":
        return 100 * correct / len(preds), s_ge
    f1s = []
    for au, (tp, fp, fn) in counts.items():
        support_y, support_p = tp + fn, tp + fp
        if support_y in (0, len(preds)) and support_p in (0, len(preds)) and (support_y == support_p):
            continue
        f1s.append(0.0 if tp == 0 else 200 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)), s_ge


def rouge_score_timing(task: str, preds: list[str], refs: list[str]) -> dict[str, float]:
    """The package's four F means against the platform's (the package imported beforehand: its import, about
    2.4 s of nltk here, is not counted)."""
    from rouge_score import rouge_scorer

    from emola.metrics.rege import rouge_score_extras

    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    started = time.perf_counter()
    scorer, totals = rouge_scorer.RougeScorer(list(keys)), dict.fromkeys(keys, 0.0)
    for p, r in zip(preds, refs):
        for key, score in scorer.score(r, p).items():
            totals[key] += score.fmeasure
    package = {k: 100.0 * v / len(preds) for k, v in totals.items()}
    package_s = time.perf_counter() - started
    started = time.perf_counter()
    ours = rouge_score_extras(preds, refs)
    ours_s = time.perf_counter() - started
    assert ours == package, (task, ours, package)
    print(f"{task:7s} rouge-score extras: platform {ours_s:6.2f} s, package {package_s:6.2f} s, "
          f"ratio {package_s / ours_s:.2f}x (rougeL {ours['rougeL']:.2f}, equal)")
    return {"rouge_score_platform_s": round(ours_s, 3), "rouge_score_package_s": round(package_s, 3),
            "rouge_score_ratio": round(package_s / ours_s, 2)}


def main() -> None:
    from emola.metrics.rege import rege

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--out", help="results file (default benchmarks/results/evaluate.json)")
    args = parser.parse_args()
    results = {}
    for task in ("emotion", "au"):
        preds, refs, labels = texts(args.n, 0, task)
        started = time.perf_counter()
        ours = rege(task, preds, refs, labels, extras=False)
        ours_s = time.perf_counter() - started
        started = time.perf_counter()
        s_re, s_ge = naive(task, preds, refs, labels)
        naive_s = time.perf_counter() - started
        assert abs(s_ge - ours.S_ge) < 1e-6 and abs(s_re - ours.S_re) < 1e-6, (task, s_re, ours.S_re, s_ge, ours.S_ge)
        print(f"{task:7s} {args.n} predictions: platform {ours_s:6.2f} s, naive loop {naive_s:6.2f} s, "
              f"ratio {naive_s / ours_s:.2f}x (S_re {ours.S_re:.2f}, S_ge {ours.S_ge:.2f}, equal)")
        results[task] = {"predictions": args.n, "platform_s": round(ours_s, 3), "naive_s": round(naive_s, 3),
                         "ratio": round(naive_s / ours_s, 2), **rouge_score_timing(task, preds, refs)}
    write_results("evaluate", results, args.out)


if __name__ == "__main__":
    main()
