"""The readout head: where it reads, what it returns, and that it travels with the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emola.labels import AU_LISTS, EMOTIONS
from emola.model.checkpoint import load_checkpoint, save_checkpoint
from emola.model.readout import ReadoutHead, readout_positions
from tests.conftest import build_tiny

IMG, PRIOR, PAD = 7, 9, 0


def test_readout_positions_are_the_prior_tokens_or_the_last_image_token_of_each_sample():
    ids = torch.tensor([[1, IMG, IMG, PRIOR, 4, 5, PAD, PAD],
                        [1, IMG, IMG, PRIOR, 4, 1, IMG, IMG]])   # a packed row: a second sample without its prior
    assert readout_positions(ids, PRIOR, IMG).tolist() == [[0, 3], [1, 3]]
    no_prior = torch.tensor([[1, IMG, IMG, 4, PAD], [1, IMG, IMG, IMG, 4]])
    assert readout_positions(no_prior, None, IMG).tolist() == [[0, 2], [1, 3]]
    packed = torch.tensor([[1, IMG, IMG, 4, 1, IMG, IMG, 5]])
    assert readout_positions(packed, PRIOR, IMG).tolist() == [[0, 2], [0, 6]]   # no prior in the prompts
    with pytest.raises(ValueError, match="neither"):
        readout_positions(torch.tensor([[1, 4, 5]]), PRIOR, IMG)


def test_the_head_gives_independent_au_probabilities_and_one_emotion_distribution():
    torch.manual_seed(0)
    head = ReadoutHead(16)
    aus, emotions = head.probabilities(torch.randn(3, 16))
    assert aus.shape == (3, len(AU_LISTS["FABA"])) and emotions.shape == (3, len(EMOTIONS))
    assert ((aus > 0) & (aus < 1)).all()
    torch.testing.assert_close(emotions.sum(-1), torch.ones(3))
    assert head.spec() == {"aus": list(AU_LISTS["FABA"]), "emotions": list(EMOTIONS), "hidden": 16}


def test_the_readout_head_is_saved_and_loaded_with_the_checkpoint(tiny_params, tiny_corpus, tmp_path):
    model, processor, config = build_tiny(tiny_params, tiny_corpus)
    torch.manual_seed(1)
    model.readout = ReadoutHead(model.base_llava.config.text_config.hidden_size)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (96, 96, 3), np.uint8))
    batch = processor.generation_batch(["What emotions are conveyed by this face?"], [image],
                                       rng.normal(size=(1, 136)).astype(np.float32))
    model.eval()
    before = model.readout_probabilities(**batch)
    # The question does not matter: the head reads the prior token, which comes before it.
    other = processor.generation_batch(["What AUs?"], [image], batch["prior"].numpy())
    torch.testing.assert_close(model.readout_probabilities(**other)[1], before[1])
    save_checkpoint(model, processor, config, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "readout.safetensors").is_file()
    loaded, _, loaded_config = load_checkpoint(tmp_path / "ckpt")
    assert loaded_config.readout == model.readout.spec()
    after = loaded.readout_probabilities(**batch)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b)
    # A model trained without the head has none, and says so when asked.
    plain, processor2, config2 = build_tiny(tiny_params, tiny_corpus)
    save_checkpoint(plain, processor2, config2, tmp_path / "plain")
    reloaded, _, plain_config = load_checkpoint(tmp_path / "plain")
    assert plain_config.readout is None and reloaded.readout is None
    assert not (tmp_path / "plain" / "readout.safetensors").exists()
    with pytest.raises(ValueError, match="no readout head"):
        reloaded.readout_probabilities(**batch)
