"""What an EmoLA checkpoint is: saved as ``emola_config.json`` beside the weights.

Loading reads this file only; it never looks at folder names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

CONFIG_FILE = "emola_config.json"
FORMAT_VERSION = 1


class EmolaModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    profile: str
    base: str | None                   # hub id or path of the HF LLaVA base; None: embedded in base/
    vision: Literal["clip", "none"]
    prior: Literal["landmarks", "none"]
    prior_dim: int
    prior_align: bool = False          # projector aligns landmark points to its reference shape
    landmark_backend: str              # name@version of the backend the prior vectors come from
    template: str
    image_size: int
    num_image_tokens: int
    image_token: str = "<image>"
    prior_token: str = "<prior>"
    lora: dict                         # r, alpha, dropout, targets, modules_to_save
    merged: bool = False               # LoRA merged into base/ (``emola export --merge``)
    tasks: list[str] = ["emotion", "au"]
    readout: dict | None = None        # the readout head's aus, emotions, hidden (readout.safetensors)

    def save(self, directory: Path | str) -> None:
        Path(directory, CONFIG_FILE).write_text(json.dumps(self.model_dump(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path | str) -> "EmolaModelConfig":
        path = Path(directory, CONFIG_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: not an EmoLA checkpoint ({CONFIG_FILE} missing)")
        return cls.model_validate_json(path.read_text(encoding="utf-8"))
