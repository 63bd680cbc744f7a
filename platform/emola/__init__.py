"""EmoLA Platform: train, evaluate and serve EmoLA for facial affective behaviour analysis."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The Analyzer pulls in torch and transformers: import it only when asked for.
    if name in ("Analyzer", "AnalysisResult"):
        from emola import analyzer

        return getattr(analyzer, name)
    raise AttributeError(f"module 'emola' has no attribute {name!r}")
