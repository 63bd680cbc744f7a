"""FABA label spaces: the 7 emotion classes and the FACS action units.

Orders matter: ``EMOTIONS`` is FABA-Instruct's integer encoding (Happiness 0 ... Fear 6).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: FABA-Instruct's integer label order.
EMOTIONS: tuple[str, ...] = ("happiness", "sadness", "surprise", "anger", "neutral", "disgust", "fear")

# Adjective and noun forms seen in emotion data sets (AffectNet, RAF-DB) mapped to a class.
_EMOTION_ALIASES = {
    "happy": "happiness", "happiness": "happiness", "joy": "happiness",
    "sad": "sadness", "sadness": "sadness",
    "surprise": "surprise", "surprised": "surprise",
    "anger": "anger", "angry": "anger",
    "neutral": "neutral",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear",
}

#: FACS names of the AUs in the FABA label space.
AU_NAMES: dict[int, str] = {
    1: "Inner Brow Raiser", 2: "Outer Brow Raiser", 4: "Brow Lowerer", 5: "Upper Lid Raiser",
    6: "Cheek Raiser", 7: "Lid Tightener", 9: "Nose Wrinkler", 10: "Upper Lip Raiser",
    12: "Lip Corner Puller", 14: "Dimpler", 15: "Lip Corner Depressor", 16: "Lower Lip Depressor",
    17: "Chin Raiser", 20: "Lip Stretcher", 23: "Lip Tightener", 24: "Lip Pressor",
    25: "Lips Part", 26: "Jaw Drop", 27: "Mouth Stretch", 43: "Eyes Closed",
}

#: AU label space of each benchmark (as FABA-Bench's REGE scores them).
AU_LISTS: dict[str, tuple[int, ...]] = {
    "FABA": (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 16, 17, 20, 23, 24, 25, 26, 27, 43),
    "DISFA": (1, 2, 4, 6, 9, 12, 25, 26),
    "BP4D": (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24),
    "GFT": (1, 2, 4, 6, 10, 12, 14, 15, 23, 24),
    "EmotioNet": (1, 2, 4, 5, 6, 9, 12, 17, 20, 25, 26, 43),
}

#: The FABA AUs FABA-Bench scores.
FABA_SCORED_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 10, 12, 17, 24, 25, 26, 43)

#: EMFACS prototypes (neutral: no AU).
EMOTION_PROTOTYPES: dict[str, tuple[int, ...]] = {
    "happiness": (6, 12),
    "sadness": (1, 4, 15),
    "surprise": (1, 2, 5, 26),
    "fear": (1, 2, 4, 5, 7, 20, 26),
    "anger": (4, 5, 7, 23),
    "disgust": (9, 15, 16),
    "neutral": (),
}

#: Evaluation prompts of FABA-Bench.
EVAL_QUESTIONS: dict[str, str] = {
    "emotion": "What emotions are conveyed by this face?",
    "au": "What AUs are conveyed by this face?",
}


class LabelError(ValueError):
    """A label that is not in the task's label space."""


def parse_emotion_label(value: object) -> str:
    """Normalize a published emotion label (name or FABA integer) to a class name.

    >>> parse_emotion_label(0), parse_emotion_label("Happy"), parse_emotion_label("4")
    ('happiness', 'happiness', 'neutral')
    """
    if isinstance(value, bool):
        raise LabelError(f"emotion label {value!r} is a boolean")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if 0 <= index < len(EMOTIONS):
            return EMOTIONS[index]
        raise LabelError(f"emotion label {value!r} is outside 0..{len(EMOTIONS) - 1}")
    if isinstance(value, str):
        name = _EMOTION_ALIASES.get(value.strip().lower())
        if name:
            return name
    raise LabelError(f"unknown emotion label {value!r} (expected one of {', '.join(EMOTIONS)} or 0..6)")


_AU_ITEM = re.compile(r"(?:AU)?0*(\d+)")


def parse_au_label(value: object, label_space: Sequence[int] = AU_LISTS["FABA"]) -> tuple[int, ...]:
    """Parse a published AU label such as ``"4, 9, 15"`` into sorted AU numbers.

    An empty string means no active AU. Every AU must be in ``label_space``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        items = [str(value)]
    elif isinstance(value, str):
        items = [p.strip() for p in value.split(",")] if value.strip() else []
    elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        items = [str(v) for v in value]
    else:
        raise LabelError(f"AU label {value!r} is not a string like '4, 9, 15'")
    aus = set()
    for item in items:
        match = _AU_ITEM.fullmatch(item)
        if not match:
            raise LabelError(f"AU label {value!r}: {item!r} is not an AU number")
        au = int(match.group(1))
        if au not in label_space:
            raise LabelError(f"AU label {value!r}: AU{au} is not in the label space")
        aus.add(au)
    return tuple(sorted(aus))


def format_au_label(aus: Sequence[int]) -> str:
    """The published AU label string: ``(4, 9, 15)`` -> ``"4, 9, 15"``."""
    return ", ".join(str(a) for a in sorted(aus))
