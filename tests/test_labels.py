import pytest

from emola.labels import AU_LISTS, EMOTIONS, LabelError, format_au_label, parse_au_label, parse_emotion_label


@pytest.mark.parametrize("value, expected", [
    (0, "happiness"), (6, "fear"), ("4", "neutral"), ("Happiness", "happiness"), ("happy", "happiness"),
    ("Angry", "anger"), (" SAD ", "sadness"), ("disgusted", "disgust"), ("surprise", "surprise"),
])
def test_emotion_labels_normalize(value, expected):
    assert parse_emotion_label(value) == expected


@pytest.mark.parametrize("value", [7, -1, "contempt", "", None, True, 1.0, "happiness!"])
def test_unknown_emotion_labels_are_rejected(value):
    with pytest.raises(LabelError):
        parse_emotion_label(value)


def test_integer_order_is_fabas():
    assert EMOTIONS == ("happiness", "sadness", "surprise", "anger", "neutral", "disgust", "fear")


@pytest.mark.parametrize("value, expected", [
    ("4, 9, 15", (4, 9, 15)), ("15, 4", (4, 15)), ("12", (12,)), (12, (12,)), ("AU6, AU12", (6, 12)), ("", ()),
])
def test_au_labels_parse(value, expected):
    assert parse_au_label(value) == expected


@pytest.mark.parametrize("value", ["4, 8", "4; 9", "four", "4,, 9", None, 4.0, "AU99"])
def test_bad_au_labels_are_rejected(value):
    with pytest.raises(LabelError):
        parse_au_label(value)


def test_au_label_space_can_be_a_benchmarks():
    assert parse_au_label("9, 25", AU_LISTS["DISFA"]) == (9, 25)
    with pytest.raises(LabelError, match="AU5 is not in the label space"):
        parse_au_label("5", AU_LISTS["DISFA"])


def test_format_round_trips():
    assert format_au_label((15, 4, 9)) == "4, 9, 15"
    assert parse_au_label(format_au_label((1, 2, 43))) == (1, 2, 43)
