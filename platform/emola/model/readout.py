"""The readout head: calibrated AU and emotion probabilities from one forward pass, no generation.

EmoLA describes a face in words; per-frame analysis (video) needs numbers for every frame,
and generating a description per frame costs hundreds of decode steps. The readout head
reads the language model's final hidden state (after its last norm, the LM head's input)
at the ``<prior>`` token, or at the last ``<image>`` token when the model has no prior:
the position where the model has seen the whole face and nothing of the question, so one
forward pass of the prompt's prefix gives both outputs whatever is asked.

- AU logits ``(N, len(aus))``: multi-label (sigmoid), the FABA AU list;
- emotion logits ``(N, len(emotions))``: one class (softmax), FABA-Instruct's seven.

It is trained beside the language-model loss (``train.readout_weight``) and exported with
the checkpoint as an optional part (``readout.safetensors``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from emola.labels import AU_LISTS, EMOTIONS


class ReadoutHead(nn.Module):
    """``(N, hidden)`` states -> AU logits ``(N, len(aus))`` and emotion logits ``(N, len(emotions))``."""

    def __init__(self, hidden: int, aus: Sequence[int] = AU_LISTS["FABA"], emotions: Sequence[str] = EMOTIONS):
        super().__init__()
        self.aus, self.emotions = tuple(int(a) for a in aus), tuple(str(e) for e in emotions)
        self.au = nn.Linear(hidden, len(self.aus))
        self.emotion = nn.Linear(hidden, len(self.emotions))

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = states.to(self.au.weight.dtype)
        return self.au(states), self.emotion(states)

    def probabilities(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """AU probabilities (independent) and the emotion distribution, float32."""
        au, emotion = self(states)
        return torch.sigmoid(au.float()), torch.softmax(emotion.float(), dim=-1)

    def spec(self) -> dict:
        """What the checkpoint's config records about the head."""
        return {"aus": list(self.aus), "emotions": list(self.emotions), "hidden": self.au.in_features}


def ensure_readout(model) -> ReadoutHead:
    """The model's readout head, a fresh one (in the model's dtype) attached when it has none."""
    if model.readout is None:
        llava = model.base_llava
        model.readout = ReadoutHead(llava.config.text_config.hidden_size).to(llava.dtype)
    return model.readout


def readout_positions(input_ids: torch.Tensor, prior_token_id: int | None, image_token_id: int | None) -> torch.Tensor:
    """``(N, 2)`` (row, column) of each sample's readout token, in sample order (row by row).

    The ``<prior>`` tokens when the prompts have them, else the last ``<image>`` token of
    each run of image tokens (one run per sample, packed rows included).
    """
    if prior_token_id is not None and bool((input_ids == prior_token_id).any()):
        return (input_ids == prior_token_id).nonzero()
    if image_token_id is None or not bool((input_ids == image_token_id).any()):
        raise ValueError("the readout head reads the <prior> or <image> token: the prompts have neither")
    image = input_ids == image_token_id
    after = torch.zeros_like(image)
    after[:, :-1] = image[:, 1:]
    return (image & ~after).nonzero()   # image tokens whose next token is not one
