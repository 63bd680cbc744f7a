"""FABA-Bench's REGE metric: S_rege = S_re + S_ge, all in percent.

- ``S_ge``: the mean over samples of ROUGE-L F as the ``rouge`` package 1.0.1 computes it
  (summary-level union LCS, sentences split on ".", whitespace tokens, no lowercasing or
  stemming; :func:`rouge_l_f` repeats its arithmetic, faster, and is tested against it).
  Deviation from the published code, which crashes there: an empty prediction scores 0.
- ``S_re`` for emotion: accuracy of the class parsed from each prediction
  (:func:`~emola.metrics.rege_parsers.emotion_of`) against the label.
- ``S_re`` for AUs: unweighted mean of per-AU F1 over the data set's scored AUs; F1 is 0
  when an AU has no true positive; an AU whose targets and predictions hold one value over
  the whole test set (all 0 or all 1) is left out of the mean. Predicted AUs come from
  :func:`~emola.metrics.rege_parsers.aus_of`; targets from the label split on ", ".

Alongside REGE, not part of it: ``rouge-score``'s rouge1/2/L/Lsum (:func:`rouge_score_f`: the
package's numbers bit for bit, faster, tested against it), per-class accuracy and the confusion
matrix for emotions, per-AU precision, recall and F1.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from emola.labels import AU_LISTS, EMOTIONS, FABA_SCORED_AUS, parse_emotion_label
from emola.metrics.rege_parsers import aus_of, emotion_of

#: AUs each data set scores (FABA scores 12 of its 20-AU label space).
SCORED_AUS: dict[str, tuple[int, ...]] = {**AU_LISTS, "FABA": FABA_SCORED_AUS}


_ROUGE = None
#: Sentence pairs longer than this (words of both) go to the ``rouge`` package itself: its
#: recursive LCS reconstruction may raise RecursionError there, which scores the pair 0.
_OWN_LCS_MAX_WORDS = 500


def _sentences(text: str) -> list[list[str]]:
    """The ``rouge`` package's tokens: sentences split on ".", whitespace runs made one space, then split on
    " " (a sentence of spaces alone is one empty word)."""
    return [" ".join(part.split()).split(" ") for part in text.split(".") if len(part) > 0]


def _lcs_words(x: list[str], y: list[str]) -> set[str]:
    """The words of the longest common subsequence of ``x`` and ``y`` that the ``rouge`` package's
    ``_recon_lcs(x, y)`` reconstructs: the same table, the same tie-break walking back (up only where the
    cell above is larger), in lists and a loop instead of a dict and recursion."""
    n, m = len(x), len(y)
    table = [[0] * (m + 1)]
    for i in range(1, n + 1):
        word, above, row, best = x[i - 1], table[i - 1], [0] * (m + 1), 0
        for j in range(1, m + 1):
            if word == y[j - 1]:
                best = above[j - 1] + 1
            elif above[j] > best:
                best = above[j]
            row[j] = best
        table.append(row)
    words: set[str] = set()
    i, j = n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def _package_rouge_l_f(prediction: str, reference: str) -> float:
    global _ROUGE
    if _ROUGE is None:
        from rouge import Rouge

        _ROUGE = Rouge(metrics=["rouge-l"])
    return _ROUGE.get_scores(prediction, reference)[0]["rouge-l"]["f"]


def rouge_l_f(prediction: str, reference: str) -> float:
    """ROUGE-L F of one pair as the ``rouge`` package 1.0.1 computes it (``rouge_l_summary_level``, exclusive:
    the union over every reference and predicted sentence of the reconstructed LCS words, as a set, over the
    distinct words of each side); 0 for an empty prediction or one the package rejects.

    The same arithmetic as the package, about 7x faster; the test suite compares the two on every kind of
    text the scorer sees."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    predicted, referenced = _sentences(prediction), _sentences(reference)
    if not predicted or not referenced:   # only punctuation: the package raises ValueError
        return 0.0
    if max(map(len, predicted)) + max(map(len, referenced)) > _OWN_LCS_MAX_WORDS:
        try:
            return _package_rouge_l_f(prediction, reference)
        except (ValueError, RecursionError):
            return 0.0
    union: set[str] = set()
    for x in referenced:
        for y in predicted:
            union |= _lcs_words(x, y)
    recall = len(union) / len({w for sentence in referenced for w in sentence})
    precision = len(union) / len({w for sentence in predicted for w in sentence})
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def _rouge_chunk(pairs: list[tuple[str, str]]) -> list[float]:
    return [rouge_l_f(p, r) for p, r in pairs]


def generation_score(predictions: Sequence[str], references: Sequence[str], workers: int | None = None) -> float:
    """S_ge in percent. Large inputs are scored on ``workers`` processes (default: every CPU)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    if not predictions:
        return 0.0
    pairs = list(zip(predictions, references))
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(pairs) >= 2000:
        size = -(-len(pairs) // (workers * 4))
        # Spawned, not forked: the caller may hold Ray's or torch's threads, which a fork can deadlock on.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            scores = [s for chunk in pool.map(_rouge_chunk, [pairs[i:i + size] for i in range(0, len(pairs), size)])
                      for s in chunk]
    else:
        scores = _rouge_chunk(pairs)
    return 100.0 * float(np.mean(scores))


_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_ROUGE_SCORE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_ROUGE_SCORER = None


def _rs_tokens(text: str) -> list[str]:
    """``rouge-score``'s default tokens (no stemming): lowercased, every run of characters other than a-z and
    0-9 a separator."""
    return _NOT_ALNUM.sub(" ", text.lower()).split()


def _lcs_length(a: list[str], b: list[str]) -> int:
    """The length of a longest common subsequence of ``a`` and ``b``, one bit per word of ``a`` (Hyyrö's
    bit-parallel recurrence: what the dynamic-programming table's last cell holds, a word of ``b`` per
    step)."""
    masks: dict[str, int] = {}
    for i, word in enumerate(a):
        masks[word] = masks.get(word, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for word in b:
        u = v & masks.get(word, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _f(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngram_f(target: list[str], prediction: list[str], n: int) -> float:
    grams_t = Counter(zip(*(target[i:] for i in range(n))))
    grams_p = Counter(zip(*(prediction[i:] for i in range(n))))
    overlap = sum(min(count, grams_p[gram]) for gram, count in grams_t.items())
    return _f(overlap / max(sum(grams_p.values()), 1), overlap / max(sum(grams_t.values()), 1))


def _package_rouge_lsum_f(target: str, prediction: str) -> float:
    global _ROUGE_SCORER
    if _ROUGE_SCORER is None:
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(["rougeLsum"])
    return _ROUGE_SCORER.score(target, prediction)["rougeLsum"].fmeasure


def rouge_score_f(target: str, prediction: str) -> dict[str, float]:
    """``rouge-score``'s F of rouge1, rouge2, rougeL and rougeLsum for one pair (``RougeScorer`` of those four
    types, no stemming), bit for bit: the same tokens, counts and divisions. The LCS length comes from a
    bit-parallel recurrence instead of the package's table (the same integer, many times faster). rougeLsum
    over texts of one line each is rougeL's number (the union of one LCS is that LCS); a text of several lines
    goes to the package. The test suite compares the two on every kind of text the scorer sees."""
    t, p = _rs_tokens(target), _rs_tokens(prediction)
    lcs = _lcs_length(t, p) if t and p else 0
    rouge_l = _f(lcs / len(p), lcs / len(t)) if t and p else 0.0
    lines = sum(1 for line in target.split("\n") if line), sum(1 for line in prediction.split("\n") if line)
    rouge_lsum = rouge_l if max(lines) <= 1 else _package_rouge_lsum_f(target, prediction)
    return {"rouge1": _ngram_f(t, p, 1), "rouge2": _ngram_f(t, p, 2), "rougeL": rouge_l, "rougeLsum": rouge_lsum}


def rouge_score_extras(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``rouge-score``'s rouge1/2/L/Lsum F (percent, the mean over pairs; :func:`rouge_score_f`): reported
    beside REGE, never inside it."""
    totals = dict.fromkeys(_ROUGE_SCORE_KEYS, 0.0)
    for p, r in zip(predictions, references):
        for key, score in rouge_score_f(r, p).items():
            totals[key] += score
    n = max(len(predictions), 1)
    return {k: 100.0 * v / n for k, v in totals.items()}


@dataclass
class RegeResult:
    task: str
    dataset: str
    S_re: float
    S_ge: float
    S_rege: float
    n: int
    per_au_f1: dict[int, float] | None = None
    scored_aus: list[int] | None = None
    extras: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"task": self.task, "dataset": self.dataset, "S_re": self.S_re, "S_ge": self.S_ge,
               "S_rege": self.S_rege, "n": self.n}
        if self.per_au_f1 is not None:
            out["per_au_f1"] = {str(k): v for k, v in self.per_au_f1.items()}
            out["scored_aus"] = self.scored_aus
        if self.extras:
            out["extras"] = self.extras
        return out


def emotion_recognition(predictions: Sequence[str], labels: Sequence[object]) -> tuple[float, dict]:
    """(accuracy in percent, extras: per-class accuracy and confusion matrix rows=label, cols=prediction)."""
    truth = [parse_emotion_label(label) for label in labels]
    guessed = [emotion_of(p) for p in predictions]
    matrix = np.zeros((len(EMOTIONS), len(EMOTIONS)), dtype=int)
    for t, g in zip(truth, guessed):
        matrix[EMOTIONS.index(t), EMOTIONS.index(g)] += 1
    per_class = {e: (100.0 * matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None for i, e in enumerate(EMOTIONS)}
    accuracy = 100.0 * float(np.trace(matrix)) / max(len(truth), 1)
    return accuracy, {"per_class_accuracy": per_class, "confusion_matrix": {"labels": list(EMOTIONS), "rows": matrix.tolist()},
                      "predicted_classes": guessed}


def au_targets(label: object) -> set[int]:
    """The published target parsing: the label string split on ", "."""
    if isinstance(label, (list, tuple)):
        return {int(a) for a in label}
    text = str(label).strip()
    return {int(item) for item in text.split(", ") if item.strip()} if text else set()


def au_recognition(predictions: Sequence[str], labels: Sequence[object], dataset: str = "FABA") -> tuple[float, dict]:
    """(mean per-AU F1 in percent over the scored AUs, extras)."""
    scored = SCORED_AUS[dataset]
    predicted = [set(aus_of(p, AU_LISTS[dataset])) for p in predictions]
    targets = [au_targets(label) for label in labels]
    per_au, details = {}, {}
    for au in scored:
        y = np.array([au in t for t in targets])
        p = np.array([au in s for s in predicted])
        tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
        details[au] = {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1, "support": int(y.sum())}
        if len(set(y.tolist()) | set(p.tolist())) == 1:  # one value over targets and predictions: left out
            continue
        per_au[au] = 100.0 * f1
    mean = float(np.mean(list(per_au.values()))) if per_au else 0.0
    return mean, {"per_au": details, "excluded_aus": [a for a in scored if a not in per_au], "per_au_f1": per_au}


def rege(task: str, predictions: Sequence[str], references: Sequence[str], labels: Sequence[object],
         dataset: str = "FABA", extras: bool = True) -> RegeResult:
    """REGE of one task's predictions; see the module docstring for the rules."""
    if not (len(predictions) == len(references) == len(labels)):
        raise ValueError("predictions, references and labels must have the same length")
    s_ge = generation_score(predictions, references)
    if task == "emotion":
        s_re, details = emotion_recognition(predictions, labels)
        result = RegeResult(task, dataset, s_re, s_ge, s_re + s_ge, len(predictions))
    elif task == "au":
        s_re, details = au_recognition(predictions, labels, dataset)
        result = RegeResult(task, dataset, s_re, s_ge, s_re + s_ge, len(predictions),
                            per_au_f1=details["per_au_f1"], scored_aus=list(SCORED_AUS[dataset]))
    else:
        raise ValueError(f"unknown task {task!r} (emotion or au)")
    if extras:
        details.pop("predicted_classes", None)
        details.pop("per_au_f1", None)
        result.extras = {**details, "rouge_score": rouge_score_extras(predictions, references)}
    return result
