"""The training step: packing, sparse logits and checkpointing policies leave the loss unchanged; the plain step trains."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from emola.train.examples import collate, pack_rows
from emola.train.objective import AUX_AUS, TrainingObjective
from emola.train.step import TrainStep, decoder_layers, prepare_model
from tests.conftest import build_tiny

ANSWERS = ["A happy face.", "AU4 (Brow Lowerer) and AU25 (Lips Part) are present in this face, both clearly.",
           "Neutral.", "AU1 (Inner Brow Raiser) is present. AU2 (Outer Brow Raiser) too. AU5 as well.",
           "The face conveys joy and contentment with a broad smile."]


@pytest.fixture(scope="module")
def tiny(tiny_params, tiny_corpus):
    torch.manual_seed(0)
    model, processor, _ = build_tiny(tiny_params, tiny_corpus)
    return model, processor


def _numpy_batch(processor, n: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pairs = [processor.example_ids("What AUs are conveyed by this face?", ANSWERS[i % len(ANSWERS)]) for i in range(n)]
    ragged = lambda xs: np.array(xs + [None], dtype=object)[:-1]  # noqa: E731
    images = [rng.integers(0, 255, (96, 96, 3), np.uint8) for _ in range(n)]
    return {"input_ids": ragged([np.array(p[0]) for p in pairs]), "labels": ragged([np.array(p[1]) for p in pairs]),
            "loss_weights": ragged([np.where(np.array(p[1]) >= 0, 1.0 + i, 0.0).astype(np.float32)
                                    for i, p in enumerate(pairs)]),
            "pixel_values": processor.pixel_values(images).numpy(),
            "prior": rng.normal(size=(n, 136)).astype(np.float32),
            "au_targets": (rng.random((n, len(AUX_AUS))) > 0.7).astype(np.float32),
            "au_mask": np.array([1, 0, 1, 1, 0][:n]),
            "emotion_targets": np.array([-1, 2, -1, -1, 0][:n])}


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("num_")}


def test_pack_rows_fills_rows_first_fit_longest_first():
    assert pack_rows([100, 30, 80, 60, 20], 120) == [[0, 4], [2, 1], [3]]
    assert pack_rows([200, 10], 120) == [[0], [1]]   # a sample longer than a row gets its own


def test_packed_rows_restart_positions_and_carry_every_per_sample_input(tiny):
    _, processor = tiny
    batch = _numpy_batch(processor)
    lengths = [len(x) for x in batch["input_ids"]]
    packed = collate(batch, pad_id=0, pack_length=2 * max(lengths))
    padded = collate(batch, pad_id=0)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert int(packed["num_tokens"]) == int(padded["num_tokens"]) == sum(lengths)
    assert int(packed["num_samples"]) == 5
    order = [i for row in pack_rows(lengths, 2 * max(lengths)) for i in row]
    torch.testing.assert_close(packed["prior"], torch.as_tensor(batch["prior"][order]))
    assert packed["au_mask"].tolist() == batch["au_mask"][order].tolist()
    row0 = pack_rows(lengths, 2 * max(lengths))[0]
    first = lengths[row0[0]]
    assert packed["position_ids"][0, :first].tolist() == list(range(first))
    assert packed["position_ids"][0, first] == 0   # the next sample starts again at 0
    assert (packed["labels"] != -100).sum() == (padded["labels"] != -100).sum()


@pytest.mark.parametrize("sparse", [False, True])
def test_packed_and_unpacked_losses_are_equal(tiny, sparse):
    """The same objective (LM loss with per-token weights, AU head) on packed and padded rows: equal to 1e-5."""
    model, processor = tiny
    objective = TrainingObjective(model, aux_weight=0.5, sparse_logits=sparse).eval()
    batch = _numpy_batch(processor)
    with torch.no_grad():
        padded = objective(**_inputs(collate(batch, pad_id=0))).loss
        lm_padded = objective.last_lm_loss
        packed = objective(**_inputs(collate(batch, pad_id=0, pack_length=512))).loss
        lm_packed = objective.last_lm_loss
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lm_packed, lm_padded, atol=1e-5, rtol=1e-5)


def test_sparse_logits_give_the_same_loss_and_gradients(tiny):
    model, processor = tiny
    batch = _inputs(collate(_numpy_batch(processor), pad_id=0))
    results = []
    for sparse in (False, True):
        trained = copy.deepcopy(model).train()
        objective = TrainingObjective(trained, sparse_logits=sparse)
        loss = objective(**batch).loss
        loss.backward()
        results.append((loss.detach(), trained.prior_projector.linear_1.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("policy", ["all", "every_other", "every_fourth", "selective"])
def test_checkpointing_policies_keep_loss_and_gradients(tiny, tiny_params, policy):
    model, processor = tiny
    batch = _inputs(collate(_numpy_batch(processor), pad_id=0))
    results = {}
    for name in ("none", policy):
        trained = copy.deepcopy(model).train()
        prepare_model(trained, tiny_params.train.model_copy(update={"checkpointing": name, "compile": False}))
        loss = TrainingObjective(trained)(**batch).loss
        loss.backward()
        lora_grads = [p.grad.clone() for n, p in trained.named_parameters() if "lora_A" in n]
        results[name] = (loss.detach(), lora_grads)
        flags = [layer.gradient_checkpointing for layer in decoder_layers(trained)]
        if name in ("every_other", "every_fourth"):
            assert flags == [True, False]   # the tiny decoder has two layers: the first recomputes
        elif name != "none":
            assert all(flags)
        vision = trained.base_llava.model.vision_tower(batch["pixel_values"][:1]).last_hidden_state
        assert not vision.requires_grad   # the frozen tower records nothing for the backward pass
    torch.testing.assert_close(results[policy][0], results["none"][0])
    for a, b in zip(results[policy][1], results["none"][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_the_plain_step_trains_and_accumulates(tiny_params, tiny_corpus):
    from emola.model.builder import build_emola  # noqa: F401 - the same tiny model as the recipe's
    from tests.conftest import build_tiny as build

    model, processor, _ = build(tiny_params, tiny_corpus)
    cfg = tiny_params.train.model_copy(update={"grad_accum": 2, "lr": 3e-3, "packing": True})
    step = TrainStep(model, cfg, total_steps=20, engine="plain")
    batch = collate(_numpy_batch(processor), pad_id=processor.tokenizer.pad_token_id, pack_length=512)
    losses = []
    for _ in range(16):
        out = step(batch)
        if out is not None:
            losses.append(out.loss)
    assert len(losses) == 8                  # one optimizer step every two micro batches
    assert losses[-1] < 0.7 * losses[0]      # it fits the batch
    assert step.emola_model is model


def test_auto_checkpointing_recomputes_more_layers_as_micro_batches_grow():
    from emola.train.memory import ActivationMemory, recomputed_layers

    # The emola-7b shape's numbers: 32 layers, ~160 KiB per token per kept layer, 8 KiB per recomputed layer.
    memory = ActivationMemory(layers=32, per_layer=160 * 1024, layer_input=8192, other=20 * 1024, budget=76 * 2**30,
                              correction=1.0)
    held = 27 * 2**30
    chosen = [memory.choose(tokens, held) for tokens in (2_000, 11_152, 14_672, 40_000, 400_000)]
    assert chosen == [0, 4, 2, 1, 1], chosen
    assert [recomputed_layers(32, i) for i in (0, 4, 2, 1)] == [0, 8, 16, 32]
    for tokens, interval in zip((2_000, 11_152, 14_672), chosen):
        assert held + memory.estimate(tokens, interval) <= memory.budget
    # A measured peak above the estimate raises the correction: the next choice is more frugal.
    memory.observe(11_152, 4, held, peak=held + 1.3 * memory.estimate(11_152, 4))
    assert memory.correction == pytest.approx(1.3) and memory.choose(11_152, held) == 2
    memory.observe(11_152, 2, held, peak=held + 0.5 * memory.estimate(11_152, 2))   # a smaller ratio: kept
    assert memory.correction == pytest.approx(1.3)
    # Before any measurement the correction is 1.15; a first peak below that lowers it to what was seen.
    fresh = ActivationMemory(layers=32, per_layer=160 * 1024, layer_input=8192, other=20 * 1024, budget=76 * 2**30)
    fresh.observe(11_152, 4, held, peak=held + 1.02 * fresh.estimate(11_152, 4) / 1.15)
    assert fresh.correction == pytest.approx(1.02)


def test_the_probe_counts_what_each_layer_keeps_per_token(tiny, tiny_params):
    from emola.train.memory import probe

    model, processor = tiny
    trained = copy.deepcopy(model).train()
    prepare_model(trained, tiny_params.train.model_copy(update={"checkpointing": "auto", "compile": False}))
    objective = TrainingObjective(trained)
    measured = {}
    for rows in (2, 4):
        batch = _inputs(collate(_numpy_batch(processor, n=rows), pad_id=0))
        tokens = int(batch["input_ids"].numel())
        measured[rows] = probe(lambda: objective(**batch).loss, decoder_layers(trained), tokens, 64, 4,
                               objective.parameters(), budget=1e9)
    hidden = trained.base_llava.config.text_config.hidden_size
    two, four = measured[2], measured[4]
    assert two.per_layer >= 4 * hidden and two.other > 0   # a layer keeps several hidden-sized tensors per token
    assert four.per_layer == pytest.approx(two.per_layer, rel=0.25)   # per token: the batch size does not matter
    assert all(layer.gradient_checkpointing for layer in decoder_layers(trained))   # left recomputing every layer


@pytest.mark.parametrize("packing", [False, True])
def test_auto_checkpointing_chooses_per_micro_batch_and_keeps_the_loss(tiny_params, tiny_corpus, packing):
    from emola.train.step import TrainStep

    losses = {}
    for policy, budget in (("none", None), ("auto", None), ("auto", 1e-4)):
        torch.manual_seed(0)
        model, processor, _ = build_tiny(tiny_params, tiny_corpus)
        cfg = tiny_params.train.model_copy(update={"checkpointing": policy, "memory_budget_gib": budget,
                                                   "packing": packing, "grad_accum": 1, "compile": False})
        step = TrainStep(model, cfg, total_steps=10, engine="plain")
        batch = collate(_numpy_batch(processor), pad_id=0, pack_length=256 if packing else None)
        torch.manual_seed(1)
        losses[(policy, budget)] = step(batch).loss
        if policy == "auto":   # no budget on the CPU: nothing recomputes; a tiny one: every layer does
            assert step.intervals == ({0: 1} if budget is None else {1: 1}), step.intervals
            assert step.memory.per_layer > 0
    assert losses[("auto", None)] == pytest.approx(losses[("none", None)], abs=1e-6)
    assert losses[("auto", 1e-4)] == pytest.approx(losses[("none", None)], abs=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_the_readout_loss_is_the_same_on_packed_and_padded_rows_and_the_step_trains_the_head(
        tiny, tiny_params, tiny_corpus, sparse):
    from emola.model.readout import ReadoutHead

    model, processor = tiny
    with_head = copy.deepcopy(model)
    torch.manual_seed(2)
    with_head.readout = ReadoutHead(with_head.base_llava.config.text_config.hidden_size)
    objective = TrainingObjective(with_head, sparse_logits=sparse, readout_weight=1.0).eval()
    batch = _numpy_batch(processor)
    with torch.no_grad():
        padded = objective(**_inputs(collate(batch, pad_id=0))).loss
        readout_padded = objective.last_readout_loss
        packed = objective(**_inputs(collate(batch, pad_id=0, pack_length=512))).loss
        readout_packed = objective.last_readout_loss
        objective.readout_weight = 0.0
        plain = objective(**_inputs(collate(batch, pad_id=0))).loss
    torch.testing.assert_close(readout_packed, readout_padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded, plain + readout_padded, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="readout head"):
        TrainingObjective(model, readout_weight=1.0)
    if sparse:
        return
    # The plain step trains the head with the model: its loss falls on a batch it sees again and again.
    cfg = tiny_params.train.model_copy(update={"readout_weight": 1.0, "lr": 3e-3, "grad_accum": 1, "packing": True})
    step = TrainStep(copy.deepcopy(with_head).train(), cfg, total_steps=30, engine="plain")
    collated = collate(batch, pad_id=processor.tokenizer.pad_token_id, pack_length=512)
    losses = []
    for _ in range(12):
        step(collated)
        losses.append(float(step.objective.last_readout_loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_emotion_targets_come_from_the_label_or_the_answer():
    from emola.data.manifest import ManifestRow
    from emola.labels import EMOTIONS
    from emola.train.objective import emotion_target

    base = dict(uid="emotion/train/1", id="1", task="emotion", split="train", root=".", image="a.png",
                image_sha256="0" * 64, question="What emotions?")
    assert emotion_target(ManifestRow(**base, answer="The face looks sad.", emotion="fear")) == EMOTIONS.index("fear")
    assert emotion_target(ManifestRow(**base, answer="The face shows sadness, with lowered brows.")) == \
        EMOTIONS.index("sadness")
    assert emotion_target(ManifestRow(**{**base, "task": "au", "uid": "au/train/1"}, answer="AU1 is present.")) == -1
