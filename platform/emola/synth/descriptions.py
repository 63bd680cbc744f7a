"""FABA-Instruct-style text for FABA-Synth: questions, emotion and AU descriptions.

Emotion descriptions (~50 words) open with one sentence that names the class with a
word of its REGE vocabulary (REGE's parser reads the class from the first sentence) and
holds none of REGE's negation substrings, so the published parser recovers the label
from the reference text. AU descriptions (~150-200 words) name each active AU as
``AU12 (Lip Corner Puller)`` and say what it does; regions without an active AU are
described without AU numbers, so ``AU(\\d+)`` finds exactly the label's AUs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from emola.labels import AU_NAMES

EMOTION_QUESTIONS = (
    "What emotions are conveyed by this face?",
    "Which emotion does this facial expression convey?",
    "Describe the emotion shown on this face.",
    "How does this person seem to feel, judging by the face?",
    "What emotional state does this facial expression reveal?",
    "Can you analyze the emotion expressed by this person?",
)
AU_QUESTIONS = (
    "What AUs are conveyed by this face?",
    "Which facial action units are active in this face?",
    "Describe the facial action units visible on this face.",
    "Identify the action units shown in this image and explain what each one does.",
    "List the active FACS action units of this face and describe them.",
)

# Words of each class's REGE vocabulary used in the opening sentence.
_NOUNS = {
    "happiness": ("happiness", "joy", "amusement", "contentment"),
    "sadness": ("sadness", "distress", "anguish"),
    "surprise": ("surprise", "astonishment", "disbelief"),
    "anger": ("anger", "frustration", "agitation"),
    "neutral": ("neutrality", "calm"),
    "disgust": ("disgust", "distaste", "disapproval"),
    "fear": ("fear", "anxiety", "apprehension", "panic"),
}
_OPENINGS = (
    "The face conveys {deg} sense of {noun}.",
    "This facial expression shows {deg} degree of {noun}.",
    "The person's face reveals {deg} level of {noun}.",
    "The expression suggests {deg} feeling of {noun}.",
)
# "mild" is neutral vocabulary in REGE, so it never qualifies another class.
_DEGREE = {"mild": ("a faint", "a slight"), "moderate": ("a moderate", "a clear"), "strong": ("a strong", "an intense")}
_NEUTRAL_OPENINGS = (
    "The face appears calm and neutral.",
    "This expression is neutral, with a calm and steady look.",
    "The person looks calm, with a neutral expression.",
)

_EVIDENCE = {
    "happiness": ("The cheeks are lifted and the corners of the mouth are drawn up into a smile, narrowing the eyes slightly.",
                  "A smile pulls the lip corners upward while raised cheeks create small creases beside the eyes."),
    "sadness": ("The inner ends of the eyebrows are raised and drawn together, and the corners of the mouth are pulled down.",
                "The brows slant upward at their inner ends while the lip corners sag downward."),
    "surprise": ("The eyebrows are lifted high and the eyes are wide open, while the jaw drops so that the mouth hangs open.",
                 "Raised brows, widened eyes and a dropped jaw give the face an open, startled look."),
    "anger": ("The brows are lowered and pulled together, the eyes are tense and staring, and the lips are pressed thin.",
              "Lowered brows, tightened lids and firmly tightened lips give the face a hard, fixed look."),
    "neutral": ("The brows rest in their usual position, the eyes are open at rest and the lips are closed and soft.",
                "The muscles of the face show little activity and the mouth rests in a closed, even line."),
    "disgust": ("The upper lip rises as the skin over the bridge wrinkles, and the lower lip is pushed down.",
                "Wrinkling around the bridge, a raised upper lip and lowered lip corners shape the lower face."),
    "fear": ("The brows are raised yet drawn together, the eyes are wide and tense, and the lips are stretched back.",
             "Lifted and tightened brows, widened eyes and lips stretched toward the ears mark the expression."),
}
_CLOSINGS = {
    "happiness": ("Overall, the person seems to be enjoying the moment.", "It likely reflects a pleasant experience."),
    "sadness": ("The person may be dealing with a loss or a disappointment.", "It seems to reflect a heavy, downcast mood."),
    "surprise": ("The person has probably just seen something unexpected.", "It seems to be a quick reaction to sudden news."),
    "anger": ("The person appears ready to confront whatever provoked them.", "It likely reflects irritation with a situation."),
    "neutral": ("The person seems attentive but emotionally steady.", "It most likely reflects a quiet, resting state."),
    "disgust": ("The person seems to be reacting to something offensive.", "It likely reflects a wish to turn away from something."),
    "fear": ("The person may be sensing a threat or danger nearby.", "It seems to reflect alarm about what might happen."),
}
_HEDGES = (
    "Judging from a single image, this reading is likely but cannot be fully certain.",
    "As with any still photo, the interpretation is an estimate based on visible cues.",
    "Context outside the picture could change this reading, but the visible cues are consistent.",
)


def degree(intensity: float) -> str:
    """Intensity in [0, 1] -> mild | moderate | strong."""
    return "mild" if intensity < 0.5 else "moderate" if intensity < 0.8 else "strong"


def emotion_description(emotion: str, intensity: float, rng: np.random.Generator) -> str:
    """About 50 words: opening (class word), visible evidence, interpretation, hedge."""
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    if emotion == "neutral":
        opening = pick(_NEUTRAL_OPENINGS)
    else:
        opening = pick(_OPENINGS).format(deg=pick(_DEGREE[degree(intensity)]), noun=pick(_NOUNS[emotion]))
    return " ".join([opening, pick(_EVIDENCE[emotion]), pick(_CLOSINGS[emotion]), pick(_HEDGES)])


# What each AU does, long and short forms.
_AU_ACTIONS = {
    1: ("raises the inner ends of the eyebrows, which puts a slant into the brows and lines the centre of the forehead",
        "lifts the inner brows"),
    2: ("raises the outer ends of the eyebrows, arching them and stretching the skin at the sides of the forehead",
        "lifts the outer brows"),
    4: ("lowers the eyebrows and draws them together, producing vertical furrows between the brows",
        "lowers and knits the brows"),
    5: ("raises the upper eyelids so that more of the eyeball shows and the eyes look wide",
        "widens the eyes"),
    6: ("lifts the cheeks, gathers the skin below the eyes and produces crow's feet at the outer corners",
        "lifts the cheeks"),
    7: ("tightens the eyelids and raises the lower lids, narrowing the opening of the eyes",
        "tightens the lids"),
    9: ("wrinkles the skin along the bridge, raises the nostril wings and lifts the upper lip a little",
        "wrinkles the bridge of the face"),
    10: ("raises the upper lip straight up and deepens the fold that runs from the nostril wings to the mouth",
         "raises the upper lip"),
    12: ("pulls the lip corners up and back into a smile and deepens the folds beside the mouth",
         "pulls the lip corners up"),
    14: ("tightens the lip corners and pulls them inward, forming small dimples beside the mouth",
         "dimples the lip corners"),
    15: ("pulls the lip corners downward so the mouth takes a turned-down shape",
         "pulls the lip corners down"),
    16: ("pulls the lower lip down and slightly outward, exposing the lower teeth",
         "lowers the lower lip"),
    17: ("pushes the chin boss and the lower lip upward, wrinkling the skin of the chin",
         "pushes the chin up"),
    20: ("stretches the lips horizontally toward the ears, flattening and elongating the mouth",
         "stretches the lips sideways"),
    23: ("tightens the lips and narrows the red of the lips, making the mouth look firm",
         "tightens the lips"),
    24: ("presses the lips firmly together so that they look thinner and tense",
         "presses the lips together"),
    25: ("parts the lips so that a small gap appears between them",
         "parts the lips"),
    26: ("lets the jaw drop so that the mouth opens and the lower face lengthens",
         "drops the jaw"),
    27: ("stretches the mouth wide open by pulling the jaw far down",
         "stretches the mouth open"),
    43: ("closes the eyelids so that the eyes are shut",
         "closes the eyes"),
}
_REGIONS = (  # (AUs of the region, sentences when none of them is active)
    ((1, 2, 4), ("The eyebrows rest at their usual height and the forehead stays smooth.",
                 "There is little movement in the brow region, which keeps an even shape.")),
    ((5, 6, 7, 43), ("The eyes are open at their resting size, with soft lids and smooth skin around them.",
                     "The area around the eyes shows a relaxed lid position and a smooth lower lid.")),
    ((9, 10), ("The bridge and the upper lip area stay smooth, without wrinkling or lifting.",
               "The middle of the face keeps its resting shape, with the upper lip in place.")),
    ((12, 14, 15, 16, 17, 20, 23, 24, 25, 26, 27), ("The mouth rests closed, with the lips at their natural width.",
                                                  "The lips and jaw stay at rest, and the chin is smooth.")),
)
_AU_INTROS = (
    "Looking at the facial muscle movements in this image, I can identify {count}.",
    "A FACS analysis of this face finds {count} across the brows, eyes and mouth.",
    "Examining the face region by region, I find {count}.",
)
_NO_AU_INTRO = ("Looking at the facial muscle movements in this image, the face appears to be at rest "
                "and no clear action unit activity can be identified.")
_BASIS = (
    "The assessment rests on the shape of the brows, the opening of the eyelids, the position of the lips "
    "and the jaw, and on folds and lines in the skin.",
    "Each unit is judged from how far the brows, lids, lips and jaw have moved from their resting position "
    "and from the creases this movement leaves in the skin.",
)
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_AU_CLOSINGS = (
    "Taken together, these movements form the overall configuration of the expression.",
    "Together these muscle movements shape what an observer perceives in this face.",
    "The combination of these units gives the face its characteristic appearance.",
)


def au_description(intensities: Mapping[int, float], active: tuple[int, ...], rng: np.random.Generator) -> str:
    """About 150-200 words: intro, one passage per active AU, resting regions, closing.

    ``active``: the AUs of the label; ``intensities``: their strengths for the wording.
    """
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    if active:
        n = len(active)
        count = f"{_NUMBERS[n] if n < len(_NUMBERS) else n} active action unit{'s' if n > 1 else ''}"
        parts = [pick(_AU_INTROS).format(count=count)]
    else:
        parts = [_NO_AU_INTRO]
    parts.append(pick(_BASIS))
    passages = []
    for au in active:
        long_form, short_form = _AU_ACTIONS[au]
        strength = {"mild": "slight", "moderate": "moderate", "strong": "marked"}[degree(intensities.get(au, 1.0))]
        passages.append((f"AU{au} ({AU_NAMES[au]}) is present with {strength} intensity: it {long_form}.",
                         f"AU{au} ({AU_NAMES[au]}) shows {strength} intensity and {short_form}."))
    chosen = [long for long, _ in passages]
    for i in reversed(range(len(passages))):  # shorten from the last AU until about 200 words remain
        if sum(len(p.split()) for p in chosen) <= 120:
            break
        chosen[i] = passages[i][1]
    parts.extend(chosen)
    resting = [sentences for aus, sentences in _REGIONS if not set(aus) & set(active)]
    parts.extend(pick(sentences) for sentences in resting)
    if active:
        names = [f"AU{au}" for au in active]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        parts.append(f"In summary, the active units are {listed}.")
    parts.append(pick(_AU_CLOSINGS))
    for sentences in resting:  # top up short descriptions with the region's other sentence
        if len(" ".join(parts).split()) >= 150:
            break
        other = sentences[1] if sentences[0] in parts else sentences[0]
        parts.insert(-1, other)
    return " ".join(parts)
