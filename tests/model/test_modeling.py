"""The prior token, the multimodal merge, label masking and ablations (generation: tests/engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emola.model.processing import IGNORE_INDEX
from emola.model.templates import get_template
from tests.conftest import build_tiny


@pytest.fixture(scope="module")
def tiny(tiny_params, tiny_corpus):
    model, processor, config = build_tiny(tiny_params, tiny_corpus)
    return model.eval(), processor, config


def _images(n, size=120):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 10 * i, 3), np.uint8)) for i in range(n)]


def test_prior_token_sits_right_after_the_image_tokens(tiny):
    _, processor, config = tiny
    ids = processor.prompt_ids("What emotions are conveyed by this face?")
    image_positions = [i for i, t in enumerate(ids) if t == processor.image_token_id]
    prior_positions = [i for i, t in enumerate(ids) if t == processor.prior_token_id]
    assert len(image_positions) == config.num_image_tokens == 36
    assert image_positions == list(range(image_positions[0], image_positions[0] + 36))  # contiguous
    assert prior_positions == [image_positions[-1] + 1]  # exactly one, right after the last image token
    text = processor.tokenizer.decode(ids[: image_positions[0]])
    assert text.endswith("questions. USER: ")  # the Vicuna v1 system prompt and role


def test_a_question_that_spells_special_tokens_stays_text(tiny):
    """A user's question holding "<image>", "<prior>" or "</s>" is tokenized as those characters: the prompt
    still has one image's tokens, one prior token and no end token, and decodes back to the question."""
    _, processor, config = tiny
    question = "Is this <image> an <prior> face? </s> Say."
    ids = processor.prompt_ids(question)
    tok = processor.tokenizer
    assert ids.count(processor.image_token_id) == config.num_image_tokens and ids.count(processor.prior_token_id) == 1
    assert tok.eos_token_id not in ids
    assert question in tok.decode(ids[ids.index(processor.prior_token_id) + 1:])


def test_merged_embeddings_are_the_projector_outputs(tiny):
    model, processor, _ = tiny
    priors = np.random.default_rng(1).normal(size=(2, 136)).astype(np.float32)
    batch = processor.generation_batch(["Q one?", "A longer question two?"], _images(2), priors)
    with torch.no_grad():
        embeds = model.merge_inputs(batch["input_ids"], batch["pixel_values"], batch["prior"])
        words = model.base_llava.get_input_embeddings()(batch["input_ids"])
        features = model.image_features(batch["pixel_values"])
        projected = model.prior_projector(batch["prior"])
    for b in range(2):
        ids = batch["input_ids"][b]
        prior_at = (ids == processor.prior_token_id).nonzero().item()
        assert torch.equal(embeds[b, prior_at], projected[b])
        image_at = (ids == processor.image_token_id).nonzero().squeeze(1)
        assert torch.equal(embeds[b, image_at], features[b])
        text_at = (ids != processor.prior_token_id) & (ids != processor.image_token_id)
        assert torch.equal(embeds[b, text_at], words[b, text_at])
    # A different prior changes exactly one position per sample.
    with torch.no_grad():
        other = model.merge_inputs(batch["input_ids"], batch["pixel_values"], batch["prior"] + 1)
    changed = (other != embeds).any(-1)
    assert changed.sum(1).tolist() == [1, 1]


def test_labels_cover_only_the_answer_and_its_end(tiny):
    _, processor, _ = tiny
    ids, labels = processor.example_ids("What AUs are conveyed by this face?", "AU12 (Lip Corner Puller) is present.")
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert all(lab == IGNORE_INDEX for lab in labels[:first])
    assert labels[first:] == ids[first:] and labels[-1] == processor.tokenizer.eos_token_id
    assert processor.decode(labels[first:]) == "AU12 (Lip Corner Puller) is present."
    assert processor.tokenizer.decode(ids[:first]).endswith("ASSISTANT:")


def test_training_forward_gives_a_loss_and_gradients_reach_the_projectors(tiny):
    model, processor, _ = tiny
    model.train()
    batch = processor.training_batch(["Q?", "Q2?"], ["A happy face.", "A sad face."], _images(2),
                                     np.zeros((2, 136), np.float32))
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.prior_projector.linear_1.weight.grad is not None
    assert model.base_llava.model.multi_modal_projector.linear_1.weight.grad is not None
    model.zero_grad()
    model.eval()


@pytest.mark.parametrize("vision, prior", [("none", "landmarks"), ("clip", "none"), ("none", "none")])
def test_ablation_switches(tiny_params, tiny_corpus, vision, prior):
    model, processor, config = build_tiny(tiny_params, tiny_corpus, vision=vision, prior=prior)
    ids = processor.prompt_ids("Q?")
    assert (processor.image_token_id in ids) == (vision == "clip")
    assert (processor.prior_token_id in ids) == (prior == "landmarks")
    assert (model.prior_projector is not None) == (prior == "landmarks")
    batch = processor.training_batch(["Q?"], ["A."], _images(1) if vision == "clip" else None,
                                     np.zeros((1, 136)) if prior == "landmarks" else None)
    assert ("pixel_values" in batch) == (vision == "clip") and ("prior" in batch) == (prior == "landmarks")
    assert torch.isfinite(model(**batch).loss)
    assert (config.vision, config.prior) == (vision, prior)


def test_missing_media_is_a_clear_error(tiny):
    model, processor, _ = tiny
    with pytest.raises(ValueError, match="pass one prior vector per sample"):
        processor.generation_batch(["Q?"], _images(1), None)
    batch = processor.generation_batch(["Q?"], _images(1), np.zeros((1, 136)))
    with pytest.raises(ValueError, match="no pixel_values"):
        model.merge_inputs(batch["input_ids"], None, batch["prior"])


def test_templates_are_data():
    with pytest.raises(ValueError, match="unknown conversation template 'chatml'"):
        get_template("chatml")
