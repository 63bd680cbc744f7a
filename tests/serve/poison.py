"""The application with a model deployment that dies on a chosen question: a request that kills its replica.

``serve run`` imports :func:`build_app` by name (``tests.serve.poison:build_app``); everything but the crash
is the real application.
"""

from __future__ import annotations

import os

from ray import serve

from serve import app
from serve.model import EmolaModel

POISON = "POISON"


class _Crashing(EmolaModel.func_or_class):
    async def generate(self, item: dict) -> dict:
        if POISON in item["question"]:
            os._exit(1)   # what a decoder crash or an out-of-memory kill does to the replica
        return await super().generate(item)

    async def stream(self, item: dict):
        async for piece in super().stream(item):
            yield piece
            if POISON in item["question"] and not isinstance(piece, dict):
                os._exit(1)   # dies mid-stream, after the first text piece went out


CrashingModel = serve.deployment(name="EmolaModel")(_Crashing)


def build_app(args: dict | None = None):
    return app.make_app(args, CrashingModel)
