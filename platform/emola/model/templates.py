"""Conversation templates as data: how a question, an image and a prior become a prompt.

A prompt is a sequence of *segments*: text, the image placeholder (expanded to one
``<image>`` token per image feature) and the prior placeholder (one ``<prior>`` token).
The published EmoLA layout (Vicuna v1)::

    {system} USER: <image>x576<prior>\\n{question} ASSISTANT: {answer}</s>
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE = "<image>"
PRIOR = "<prior>"


@dataclass(frozen=True)
class ConversationTemplate:
    name: str
    system: str
    user: str          # text before the media and the question
    assistant: str     # text after the question, before the answer
    answer_prefix: str  # text that starts the answer (part of the supervised tokens)
    stop: str          # end of the answer (the EOS token)

    def prompt_segments(self, question: str, *, image: bool, prior: bool) -> list[str]:
        """Segments of the prompt up to where the answer starts.

        Media segments are :data:`IMAGE` and :data:`PRIOR`; the prior comes right after
        the image, as published.
        """
        segments = [f"{self.system}{self.user}"]
        if image:
            segments.append(IMAGE)
        if prior:
            segments.append(PRIOR)
        separator = "\n" if (image or prior) else ""
        segments.append(f"{separator}{question}{self.assistant}")
        return segments


TEMPLATES: dict[str, ConversationTemplate] = {
    "vicuna_v1": ConversationTemplate(
        name="vicuna_v1",
        system=("A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions."),
        user=" USER: ",
        assistant=" ASSISTANT:",
        answer_prefix=" ",
        stop="</s>",
    ),
}


def get_template(name: str) -> ConversationTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r} (known: {', '.join(TEMPLATES)})") from None
