"""Typed parameters: ``params.yaml`` loaded into pydantic models (see :mod:`.loader`)."""

from emola.config.loader import ParamsError, load_config, parse_overrides
from emola.config.schema import (
    DataConfig,
    EmolaConfig,
    EvaluateConfig,
    LandmarksConfig,
    ModelConfig,
    ServeConfig,
    TrainConfig,
    VideoConfig,
)

__all__ = [
    "DataConfig",
    "EmolaConfig",
    "EvaluateConfig",
    "LandmarksConfig",
    "ModelConfig",
    "ParamsError",
    "ServeConfig",
    "TrainConfig",
    "VideoConfig",
    "load_config",
    "parse_overrides",
]
