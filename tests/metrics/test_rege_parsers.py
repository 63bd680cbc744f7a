"""The published REGE parsers, rule by rule."""

import pytest

from emola.metrics.rege_parsers import aus_of, drop_negated_sentences, emotion_of


def test_negation_is_a_substring_test_that_drops_nose_sentences():
    assert drop_negated_sentences("The nose is wrinkled. She smiles.") == "She smiles."
    assert emotion_of("The nose wrinkles in anger. The face is happy.") == "happiness"


def test_all_sentences_negated_keeps_the_whole_text():
    text = "There is no anger. Nothing is sad."
    assert drop_negated_sentences(text) == text


def test_abbreviations_do_not_split_sentences():
    assert drop_negated_sentences("Mr. Smith looks calm. It is not anger.") == "Mr. Smith looks calm."
    assert drop_negated_sentences("Cues, e.g. raised brows, show surprise. Not anger.") == "Cues, e.g. raised brows, show surprise."


def test_first_sentence_first_token_in_class_order_decides():
    assert emotion_of("A happy yet sad face. Fear fear fear.") == "happiness"
    assert emotion_of("A somber yet happy face.") == "sadness"  # "sad" is not in the vocabulary
    assert emotion_of("He seems displeased.") == "anger"      # displeased: disgust and anger; anger is tested first
    assert emotion_of("Signs of discomfort.") == "sadness"    # sadness before disgust


def test_rest_of_text_counts_with_ties_to_the_earlier_class():
    assert emotion_of("The face is plain. Fear and fear, then anger.") == "fear"
    assert emotion_of("The face is plain. Calm and stern.") == "anger"  # tie: anger precedes neutral
    assert emotion_of("The face is plain. Nothing here is known.") == "happiness"  # no hits


def test_no_sentence_punctuation_uses_the_whole_text():
    assert emotion_of("a calm face") == "neutral"


@pytest.mark.parametrize("text, expected", [
    ("AU12 and AU6 are active", (6, 12)),
    ("AU012 is not AU12", (12,)),
    ("au12 is lowercase", ()),
    ("AU8 and AU99 are outside the list", ()),
    ("AU4 is not active", (4,)),  # no negation handling
])
def test_au_extraction(text, expected):
    assert aus_of(text) == expected


def test_au_extraction_uses_the_datasets_list():
    assert aus_of("AU5 AU9", label_space=(1, 2, 4, 6, 9, 12, 25, 26)) == (9,)
