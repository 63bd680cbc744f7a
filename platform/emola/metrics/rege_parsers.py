"""The published FABA-Bench text parsers: description -> emotion class, description -> AUs.

Rule by rule as in the published EmoLA evaluation (its repository's scoring script). The one
deviation: where the published code crashes on text without sentence punctuation, the
whole text is taken as the first sentence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from emola.labels import AU_LISTS

#: Class test order of the parser (it decides first-sentence hits and breaks ties).
CLASS_ORDER: tuple[str, ...] = ("happiness", "sadness", "surprise", "anger", "neutral", "disgust", "fear")

VOCABULARY: dict[str, frozenset[str]] = {
    "happiness": frozenset(
        "happiness happy smiling smile pleasant content contentment relaxed relaxation cheerful joy amusement "
        "amused positivity positive lightheartedness joyful friendly warmth bright".split()
    ),
    "neutral": frozenset("neutral neutrality calm contemplative concerned thoughtful focused solemn mild".split()),
    "surprise": frozenset(
        "surprise surprised startled puzzled astonishment disbelief wonder curiosity curious confusion "
        "bewilderment skepticism excitement uncertainty".split()
    ),
    "fear": frozenset(
        "fear shock anxiety apprehension tension panic alertness focus worry alarm curiosity contemplation".split()
    ),
    "disgust": frozenset(
        "disgust distaste disgusted discomfort displeasure displeased disapproval disdain contempt".split()
    ),
    "anger": frozenset(
        "anger mad irate outraged agitation irritated enraged annoyed incensed serious frustration displeased "
        "stern".split()
    ),
    "sadness": frozenset("sadness crying distress concern discomfort anguish somber".split()),
}

#: Substrings whose presence drops a sentence (a substring test: "nose" contains "no").
NEGATIONS: tuple[str, ...] = ("not", "no", "isn't ", "nothing", "cannot", "won't", "shouldn't", "neither", "nor")

# Split at whitespace after "." or "?", except after "e.g."-like and "Mr."-like abbreviations.
_SENTENCE_SPLIT = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s")
_FIRST_SENTENCE = re.compile(r"^.*?[.!?]")
_WORD = re.compile(r"\b\w+\b")
#: An AU code as REGE reads it: case-sensitive, digits as written ("AU012" is not AU 12).
AU_CODE = re.compile(r"AU(\d+)")


def drop_negated_sentences(text: str) -> str:
    """Remove sentences that contain a negation substring; all gone -> the text unchanged."""
    kept = [s for s in _SENTENCE_SPLIT.split(text) if not any(n in s.lower() for n in NEGATIONS)]
    return " ".join(kept) if kept else text


def emotion_of(text: str) -> str:
    """The emotion class a description expresses, by the published rules."""
    text = drop_negated_sentences(text)
    match = _FIRST_SENTENCE.match(text)
    first = match.group(0) if match else text
    rest = text[match.end():] if match else ""
    for token in _WORD.findall(first.lower()):
        for name in CLASS_ORDER:
            if token in VOCABULARY[name]:
                return name
    tokens = _WORD.findall(rest.lower())
    hits = {name: sum(t in VOCABULARY[name] for t in tokens) for name in CLASS_ORDER}
    best = max(CLASS_ORDER, key=lambda name: (hits[name], -CLASS_ORDER.index(name)))
    return best if hits[best] > 0 else "happiness"


def aus_of(text: str, label_space: Sequence[int] = AU_LISTS["FABA"]) -> tuple[int, ...]:
    """AUs named in a description: case-sensitive ``AU(\\d+)``, no negation handling.

    The digits must spell an AU of ``label_space`` exactly: ``AU012`` is not AU12.
    """
    allowed = {str(au): au for au in label_space}
    return tuple(sorted({allowed[d] for d in AU_CODE.findall(text) if d in allowed}))
