"""EmoLA Platform: train, evaluate and serve EmoLA for facial affective behaviour analysis."""

__version__ = "0.1.0"
