"""Typed records of the published FABA-Instruct files (docs/reproducing-emola.md).

Train record::

    {"id", "image", "landmark", "source",
     "conversations": [{"from": "human", "value": "<question>\\n<image>"},
                       {"from": "gpt", "value": "<description>"}]}

Test record::

    {"image", "landmark", "label", "gpt4"}

``image`` and ``landmark`` are paths relative to the release root. Extra keys are
allowed (releases carry bookkeeping fields); the ones listed are required. The optional
annotations FABA-Synth adds are checked when present: ``label`` on a train record (parsed
against the file's task), ``intensity`` (the emotion's, 0..1) and ``au_intensities``
(AU number -> intensity 0..1, one per AU of the label).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

IMAGE_TOKEN = "<image>"


class Turn(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)

    speaker: Literal["human", "gpt"] = Field(alias="from")
    value: str


class TrainRecord(BaseModel):
    """One instruction-tuning sample: a face, its landmarks and a question-answer pair."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str | int
    image: str = Field(min_length=1)
    landmark: str = Field(min_length=1)
    source: str | None = None
    conversations: list[Turn] = Field(min_length=2)
    label: str | int | None = None
    intensity: float | None = Field(default=None, ge=0, le=1)
    au_intensities: dict[str, float] | None = None

    @field_validator("au_intensities")
    @classmethod
    def _intensities_per_au(cls, values: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (values or {}).items():
            if not key.isdigit():
                raise ValueError(f"key {key!r} is not an AU number")
            if not 0 <= value <= 1:
                raise ValueError(f"AU{key} intensity {value} is outside 0..1")
        return values

    @field_validator("conversations")
    @classmethod
    def _one_question_one_answer(cls, turns: list[Turn]) -> list[Turn]:
        speakers = [t.speaker for t in turns]
        if speakers != ["human", "gpt"]:
            raise ValueError(
                f"expected one human turn then one gpt turn, got {speakers} "
                "(FABA-Instruct is single-turn)"
            )
        if turns[0].value.count(IMAGE_TOKEN) != 1:
            raise ValueError(f"the human turn must hold exactly one {IMAGE_TOKEN} token")
        if not turns[1].value.strip():
            raise ValueError("the gpt turn (the description) is empty")
        return turns

    @property
    def question(self) -> str:
        """The question with the image token and its separating newline removed."""
        return " ".join(self.conversations[0].value.replace(IMAGE_TOKEN, " ").split())

    @property
    def answer(self) -> str:
        return self.conversations[1].value.strip()


class TestRecord(BaseModel):
    """One FABA-Bench sample: a face, its landmarks, the label and the reference description."""

    model_config = ConfigDict(extra="allow", strict=True)

    image: str = Field(min_length=1)
    landmark: str = Field(min_length=1)
    label: str | int
    gpt4: str = Field(min_length=1)
