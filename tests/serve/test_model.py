"""The model deployment's class in this process (no Ray): how it turns a request item into an engine request."""

from __future__ import annotations

import pytest

from emola.config import load_config
from emola.labels import EVAL_QUESTIONS
from tests.conftest import REPO


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from serve.model import EmolaModel

    inference = load_config(REPO / "params.yaml", ["inference.max_batch=2"]).inference.model_dump()
    replica = EmolaModel.func_or_class(str(tiny_checkpoint), inference)
    yield replica
    replica.engine.stop()


def test_prompts_are_tokenized_once_and_equal_the_processors(model):
    processor = model.processor
    question = EVAL_QUESTIONS["emotion"]
    first = model._prompt_ids(question)
    assert first == processor.prompt_ids(question)
    first.append(-1)                                  # a caller changing its list changes no one else's
    assert model._prompt_ids(question) == processor.prompt_ids(question)
    assert question in model._prompts

    long_question = "Describe the face. " * 100          # over 1,000 characters: not kept
    assert model._prompt_ids(long_question) == processor.prompt_ids(long_question)
    assert long_question not in model._prompts

    for i in range(1100):                              # at most 1,024 kept, the oldest dropped first
        model._prompt_ids(f"question {i}")
    assert len(model._prompts) == 1024
    assert "question 1099" in model._prompts and question not in model._prompts
    assert model._prompt_ids("question 5") == processor.prompt_ids("question 5")
