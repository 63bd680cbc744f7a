"""REGE: S_ge against the rouge package, S_re rules computed by hand."""

from __future__ import annotations

import random

import pytest
from rouge import Rouge

from emola.metrics.rege import au_recognition, generation_score, rege, rouge_l_f, rouge_score_extras, rouge_score_f


def _random_texts(n, seed):
    rng = random.Random(seed)
    words = "the brows are raised and the mouth opens . eyes wide smile AU12 AU4 calm face shows".split()
    texts = []
    for _ in range(n):
        tokens = [rng.choice(words) for _ in range(rng.randint(3, 40))]
        texts.append(" ".join(tokens).replace(" .", "."))
    return texts


def test_s_ge_equals_the_rouge_packages_average():
    predictions, references = _random_texts(60, 1), _random_texts(60, 2)
    expected = 100 * Rouge().get_scores(predictions, references, avg=True)["rouge-l"]["f"]
    assert generation_score(predictions, references) == pytest.approx(expected, abs=1e-9)


def test_rouge_l_is_not_rouge_scores_rougeL():
    from rouge_score import rouge_scorer

    p, r = "The cat sat. On the mat it sat", "the cat sat on the mat. A dog barked"
    ours = rouge_l_f(p, r)
    theirs = rouge_scorer.RougeScorer(["rougeL"]).score(r, p)["rougeL"].fmeasure
    assert ours != pytest.approx(theirs, abs=1e-3)  # case and sentence handling differ
    assert ours == pytest.approx(Rouge().get_scores(p, r)[0]["rouge-l"]["f"])


def _package(prediction, reference):
    """The package behind the scorer's published deviation: a blank text scores 0, so does one it rejects."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    try:
        return Rouge(metrics=["rouge-l"]).get_scores(prediction, reference)[0]["rouge-l"]["f"]
    except (ValueError, RecursionError):
        return 0.0


def _text_pairs(seed: int, odd: list[str], most_odd_words: int, extra: list[str]) -> list[tuple[str, str]]:
    """Descriptions as the scorer sees them, random texts of ``odd`` tokens and ``extra`` texts, paired at random
    and each with the next."""
    import numpy as np

    from emola.labels import EMOTION_PROTOTYPES, EMOTIONS
    from emola.synth.descriptions import au_description, emotion_description

    rng, pyrng = np.random.default_rng(seed), random.Random(seed)
    texts = []
    for _ in range(60):
        emotion = EMOTIONS[int(rng.integers(7))]
        texts.append(emotion_description(emotion, rng.uniform(0.3, 1), rng))
        aus = EMOTION_PROTOTYPES[emotion] or (12,)
        texts.append(au_description({a: 0.7 for a in aus}, aus, rng))
    texts += [" ".join(pyrng.choice(odd) for _ in range(pyrng.randint(0, most_odd_words))) for _ in range(200)]
    texts += extra
    return [(pyrng.choice(texts), pyrng.choice(texts)) for _ in range(1500)] + list(zip(texts, texts[1:]))


def test_rouge_l_equals_the_rouge_package_bit_for_bit():
    """The scorer's own LCS against the package on descriptions, their near misses and odd tokenisations."""
    odd = "the a brow lip . , .. eye AU12 smile x y".split(" ") + ["", "", "\t", "\n"]
    pairs = _text_pairs(0, odd, 50, ["...", " . ", "word", "a. a. a. a", "a  b\tc .d",
                                     "no period " * 120])   # one long sentence
    mismatched = [(p, r) for p, r in pairs if rouge_l_f(p, r) != _package(p, r)]
    assert not mismatched, mismatched[:3]


def _scoring_corpus() -> list[tuple[str, str]]:
    """Descriptions, near misses, odd tokenisations (case, accents, digits) and several-line texts."""
    odd = "the a The BROW brow lip . , .. eye AU12 au12 smile x y café naïve İ 3rd 12 -".split(" ")
    odd += ["", "\t", "\n"]
    return _text_pairs(1, odd, 60, ["", "...", "\n\n", "word", "a a a a", "x\ny\nx y", "no line break " * 150])


def test_rouge_score_numbers_equal_the_rouge_score_package_bit_for_bit():
    """Our rouge1/2/L/Lsum against ``rouge-score``'s ``RougeScorer`` (the extras the reports keep)."""
    from rouge_score import rouge_scorer

    package = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    pairs = _scoring_corpus()
    assert sum("\n" in p or "\n" in r for p, r in pairs) > 100   # several-line texts are in the corpus
    mismatched = [(r, p) for r, p in pairs
                  if rouge_score_f(r, p) != {k: s.fmeasure for k, s in package.score(r, p).items()}]
    assert not mismatched, mismatched[:3]
    predictions, references = [p for _, p in pairs], [r for r, _ in pairs]
    totals = dict.fromkeys(("rouge1", "rouge2", "rougeL", "rougeLsum"), 0.0)
    for r, p in pairs:
        for key, score in package.score(r, p).items():
            totals[key] += score.fmeasure
    assert rouge_score_extras(predictions, references) == {k: 100.0 * v / len(pairs) for k, v in totals.items()}


def test_very_long_sentences_go_to_the_package():
    long_a, long_b = " ".join(f"w{i}" for i in range(400)), " ".join(f"w{i}" for i in range(0, 600, 3))
    assert rouge_l_f(long_a, long_b) == _package(long_a, long_b) > 0


def test_empty_prediction_scores_zero_instead_of_crashing():
    assert rouge_l_f("", "a reference") == 0.0
    assert generation_score(["", "a b c"], ["x y", "a b c"]) == pytest.approx(50.0, abs=1e-6)


def test_emotion_s_re_is_accuracy_with_the_published_parser():
    predictions = [
        "The face shows happiness.",                 # happiness
        "The nose wrinkles in anger. He looks calm.",  # "nose" sentence dropped -> neutral
        "A plain face. Fear fear anger.",            # first sentence no hit; fear wins the count
        "no punctuation and no hit",                 # all sentences negated -> whole text; no hit -> happiness
    ]
    labels = [0, "Neutral", "fear", "sadness"]
    result = rege("emotion", predictions, ["ref"] * 4, labels)
    assert result.S_re == pytest.approx(75.0)
    matrix = result.extras["confusion_matrix"]["rows"]
    assert matrix[1][0] == 1  # sadness predicted as happiness
    assert result.S_rege == pytest.approx(result.S_re + result.S_ge)


def test_au_f1_rules_by_hand():
    # AU12: TP 1, FP 1, FN 0 -> F1 2/3. AU4: TP 0, FP 0, FN 1 -> F1 0 (counted: the targets vary).
    # AU1: never in targets or predictions -> left out. "AU012" is not AU12, "au6" not AU6.
    predictions = ["AU12 is active", "AU12 and AU012", "au6 and nothing"]
    labels = ["12", "", "4"]
    mean, details = au_recognition(predictions, labels, "FABA")
    assert details["per_au_f1"][12] == pytest.approx(100 * 2 / 3)
    assert details["per_au_f1"][4] == 0.0
    assert 1 in details["excluded_aus"] and 6 in details["excluded_aus"]
    assert set(details["per_au_f1"]) == {4, 12}
    assert mean == pytest.approx((100 * 2 / 3 + 0) / 2)


def test_au_present_everywhere_in_targets_and_predictions_is_left_out():
    mean, details = au_recognition(["AU12", "AU12"], ["12", "12"], "FABA")
    assert 12 in details["excluded_aus"] and details["per_au_f1"] == {} and mean == 0.0


def test_au_lists_of_other_benchmarks():
    mean, details = au_recognition(["AU9 AU5", "AU9"], ["9", "5"], "DISFA")  # AU5 is not a DISFA AU
    assert set(details["per_au"]) == {1, 2, 4, 6, 9, 12, 25, 26}
    assert details["per_au_f1"][9] == pytest.approx(100 * 2 / 3)


def test_rege_reports_percent_and_per_au_f1():
    result = rege("au", ["AU12 (Lip Corner Puller) lifts the corners."], ["AU12 (Lip Corner Puller) is present."], ["12, 6"])
    d = result.to_dict()
    assert set(d) >= {"S_re", "S_ge", "S_rege", "per_au_f1", "n"}
    assert 0 <= d["S_ge"] <= 100 and "rouge_score" in d["extras"]
