"""The training objective: AU targets of a row, the AU head on the prior token, AU-code token weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emola.data.manifest import ManifestRow
from emola.train.examples import Preprocess, au_code_weights, build_examples, collate
from emola.train.objective import AUX_AUS, TrainingObjective, au_targets, next_token_losses
from tests.conftest import build_tiny

AU_ANSWER = "I can identify two active action units. AU4 (Brow Lowerer) is present. AU012 is a typo. AU25 parts the lips."


def _row(task: str, answer: str, aus=None, uid="r") -> ManifestRow:
    return ManifestRow(uid=uid, id=uid, task=task, split="train", root="/data", image="a.jpg", image_sha256="sha",
                       question="What AUs are conveyed by this face?", answer=answer, aus=aus)


def test_au_targets_use_the_label_else_the_aus_the_answer_names():
    labelled = au_targets(_row("au", AU_ANSWER, aus=[1, 43]))
    assert [au for au, v in zip(AUX_AUS, labelled) if v] == [1, 43]  # the label wins over the text
    parsed = au_targets(_row("au", AU_ANSWER))
    assert [au for au, v in zip(AUX_AUS, parsed) if v] == [4, 25]  # REGE's rule: AU012 is not AU12
    assert au_targets(_row("emotion", "The face conveys joy.")) is None


def test_examples_carry_targets_and_a_mask_through_preprocessing_and_collate(tiny_checkpoint):
    rows = [_row("au", AU_ANSWER, uid="a"), _row("emotion", "The face conveys joy.", uid="e")]
    examples = build_examples(rows, ["emotion", "au"], {"sha": np.zeros(136, np.float32)}).rows
    assert examples[1]["au_targets"] == [0.0] * len(AUX_AUS)
    batch = {k: np.array([e[k] for e in examples], dtype=object if k in ("question", "answer", "image") else None)
             for k in ("question", "answer", "task", "prior", "au_targets")}
    for aux_targets in (False, True):
        stage = Preprocess(str(tiny_checkpoint), max_length=512, aux_targets=aux_targets)
        stage.processor.use_image = False  # no image files here; the targets do not depend on them
        tensors = collate(stage(batch), pad_id=0)
        if not aux_targets:  # the published recipe's batches stay model inputs only
            assert "au_targets" not in tensors and "au_mask" not in tensors
    assert tensors["au_mask"].tolist() == [1, 0]
    assert tensors["au_targets"].shape == (2, len(AUX_AUS)) and tensors["au_targets"][0].sum() == 2


def test_examples_name_their_image_by_an_absolute_path(tmp_path, monkeypatch):
    # The train workers preprocess images in their own working directory, not the driver's,
    # so a release root relative to the driver's (params.yaml's data/release) must not reach them.
    monkeypatch.chdir(tmp_path)
    row = _row("au", AU_ANSWER).model_copy(update={"root": "data/release"})
    (example,) = build_examples([row], ["au"], {"sha": np.zeros(136, np.float32)}).rows
    assert example["image"] == str(tmp_path / "data/release/a.jpg")


@pytest.fixture(scope="module")
def tiny_batch(tiny_params, tiny_corpus):
    torch.manual_seed(0)
    model, processor, _ = build_tiny(tiny_params, tiny_corpus)
    images = [Image.fromarray(np.full((96, 96, 3), 120 + 40 * i, np.uint8)) for i in range(3)]
    batch = processor.training_batch(["What AUs are conveyed by this face?"] * 3,
                                     [AU_ANSWER, "The face conveys joy.", "AU1 (Inner Brow Raiser) is present."],
                                     images, np.random.default_rng(0).normal(size=(3, 136)).astype(np.float32))
    targets = torch.zeros(3, len(AUX_AUS))
    targets[0, [AUX_AUS.index(4), AUX_AUS.index(25)]] = 1
    targets[2, AUX_AUS.index(1)] = 1
    return model, batch, targets


def test_loss_is_the_lm_loss_plus_the_weighted_bce_of_the_au_rows(tiny_batch):
    model, batch, targets = tiny_batch
    objective = TrainingObjective(model, aux_weight=0.5).eval()
    mask = torch.tensor([1, 0, 1])
    loss = objective(au_targets=targets, au_mask=mask, **batch).loss
    lm = model(**batch).loss
    logits = objective.head(model.prior_projector(batch["prior"][[0, 2]]))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[[0, 2]])
    torch.testing.assert_close(loss, lm + 0.5 * bce)
    torch.testing.assert_close(objective.last_lm_loss, lm.detach())
    torch.testing.assert_close(objective.last_aux_loss, bce.detach())
    # A batch without AU rows is the language-model loss alone...
    no_au = objective(au_targets=targets, au_mask=torch.zeros(3, dtype=torch.long), **batch).loss
    torch.testing.assert_close(no_au, lm)
    # ...yet the head is in its graph: every data-parallel rank must reduce the same gradients.
    objective.zero_grad()
    no_au.backward()
    assert objective.head.weight.grad is not None and not objective.head.weight.grad.any()


def test_the_au_loss_reaches_the_prior_projector_and_nothing_else_of_the_model(tiny_batch):
    model, batch, targets = tiny_batch
    objective = TrainingObjective(model, aux_weight=1.0).eval()
    grads = {}
    for weight in (0.0, 1.0):
        objective.aux_weight = weight
        objective.zero_grad()
        objective(au_targets=targets, au_mask=torch.tensor([1, 0, 1]), **batch).loss.backward()
        grads[weight] = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
    changed = {n for n in grads[1.0] if n not in grads[0.0] or not torch.allclose(grads[1.0][n], grads[0.0][n])}
    assert any(n.startswith("head.") for n in changed)
    assert any(n.startswith("model.prior_projector.") for n in changed)
    assert all(n.startswith(("head.", "model.prior_projector.")) for n in changed), sorted(changed)


def test_a_model_without_a_prior_token_is_refused(tiny_params, tiny_corpus):
    model, _, _ = build_tiny(tiny_params, tiny_corpus, prior="none")
    with pytest.raises(ValueError, match="prior_aux_weight"):
        TrainingObjective(model, aux_weight=1.0)


# ------------------------------------------------------------------ AU-code token weights
def test_au_code_weights_mark_every_token_of_each_au_code_and_line_up_with_the_labels(tiny_checkpoint):
    processor = Preprocess(str(tiny_checkpoint), max_length=512).processor
    weights = au_code_weights(processor, AU_ANSWER, 5.0)
    ids, labels = processor.example_ids("What AUs are conveyed by this face?", AU_ANSWER)
    answer_ids = [i for i in labels if i != -100]
    assert len(weights) == len(answer_ids) and weights[-1] == 1.0  # the end token weighs 1
    marked = [i for i, w in zip(answer_ids, weights) if w == 5.0]
    # Every token that spells part of a code, however the tokenizer splits it (AU012 is a code as written).
    assert processor.tokenizer.decode(marked).replace(" ", "") == "AU4AU012AU25"
    assert set(weights) == {1.0, 5.0}
    assert au_code_weights(processor, "The face conveys joy.", 5.0) == [1.0] * len(
        [i for i in processor.example_ids("q", "The face conveys joy.")[1] if i != -100])


def test_preprocessing_passes_weights_aligned_with_the_labels_only_when_asked(tiny_checkpoint):
    answers = [AU_ANSWER, "The face conveys joy."]
    batch = {"question": np.array(["What AUs are conveyed by this face?"] * 2, dtype=object),
             "answer": np.array(answers, dtype=object), "task": np.array(["au", "emotion"], dtype=object),
             "prior": np.zeros((2, 136), np.float32)}
    stage = Preprocess(str(tiny_checkpoint), max_length=512, au_code_weight=3.0)
    stage.processor.use_image = False
    tensors = collate(stage(batch), pad_id=0)
    weights, labels = tensors["loss_weights"], tensors["labels"]
    assert weights.shape == labels.shape
    assert not weights[labels == -100].any()  # prompt and padding carry no weight
    assert set(weights[labels != -100].tolist()) == {1.0, 3.0}
    assert not (weights[1] == 3.0).any()  # the emotion answer names no AU code
    marked = labels[0][weights[0] == 3.0].tolist()
    assert stage.processor.tokenizer.decode(marked).replace(" ", "") == "AU4AU012AU25"
    published = Preprocess(str(tiny_checkpoint), max_length=512)
    published.processor.use_image = False
    assert "loss_weights" not in collate(published(batch), pad_id=0)


def test_unit_weights_give_the_models_own_loss_and_code_weights_scale_their_terms(tiny_batch):
    model, batch, targets = tiny_batch
    model.eval()
    objective = TrainingObjective(model).eval()
    assert objective.head is None  # no AU head at aux_weight 0
    reference = model(**batch)
    labels = batch["labels"]
    ones = torch.ones(labels.shape)
    torch.testing.assert_close(objective(loss_weights=ones, **batch).loss, reference.loss)
    losses, labelled = next_token_losses(reference.logits, labels)
    torch.testing.assert_close(losses.sum() / labelled.sum(), reference.loss)
    weights = ones.clone()
    picked = [(row, int((labels[row] != -100).nonzero()[-2])) for row in (0, 2)]  # one answer token per row
    for row, position in picked:
        weights[row, position] = 4.0
    # losses[:, t - 1] is the loss of predicting labels[:, t]
    expected = (losses.sum() + 3.0 * sum(losses[row, position - 1] for row, position in picked)) / labelled.sum()
    weighted = objective(loss_weights=weights, **batch)
    torch.testing.assert_close(weighted.loss, expected)
    torch.testing.assert_close(objective.last_lm_loss, reference.loss.detach())  # logged: the plain loss
    # With the head as well, the AU term adds on top of the weighted language-model loss.
    with_head = TrainingObjective(model, aux_weight=0.5).eval()
    mask = torch.tensor([1, 0, 1])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        with_head.head(model.prior_projector(batch["prior"][[0, 2]])), targets[[0, 2]])
    torch.testing.assert_close(with_head(au_targets=targets, au_mask=mask, loss_weights=weights, **batch).loss,
                               expected + 0.5 * bce)
    with pytest.raises(ValueError, match="au_targets"):
        with_head(**batch)


def test_token_weights_need_no_prior_token(tiny_params, tiny_corpus):
    model, processor, _ = build_tiny(tiny_params, tiny_corpus, prior="none")
    images = [Image.fromarray(np.full((96, 96, 3), 100, np.uint8))]
    batch = processor.training_batch(["What AUs are conveyed by this face?"], [AU_ANSWER], images)
    loss = TrainingObjective(model)(loss_weights=torch.full(batch["labels"].shape, 2.0), **batch).loss
    torch.testing.assert_close(loss, 2.0 * model(**batch).loss)


# ------------------------------------------------------------------ prior warm-up
def test_prior_warm_up_fits_projector_and_head_and_touches_nothing_else(tiny_params, tiny_corpus):
    from emola.train.launcher import warm_up
    from emola.train.objective import au_head, warm_up_prior

    torch.manual_seed(0)
    model, _, _ = build_tiny(tiny_params, tiny_corpus)
    rng = np.random.default_rng(0)
    priors = torch.tensor(rng.normal(size=(64, 136)), dtype=torch.float32)
    targets = (priors[:, :len(AUX_AUS)] > 0).float()  # each AU readable from one coordinate
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head = au_head(model)
    start = torch.nn.functional.binary_cross_entropy_with_logits(head(model.prior_projector(priors)), targets).item()
    loss = warm_up_prior(model, head, priors, targets, steps=60, lr=1e-2)
    assert loss < 0.1 < start
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("prior_projector.") for n in changed)
    # The objective starts from the warmed head.
    objective = TrainingObjective(model, aux_weight=1.0, head_state=head.state_dict())
    torch.testing.assert_close(objective.head.weight, head.weight)

    class Settings:  # the TrainConfig fields warm_up reads
        prior_warmup_steps, prior_warmup_lr, seed = 5, 1e-2, 1

    rows = [{"task": "au", "prior": priors[i].tolist(), "au_targets": targets[i].tolist()} for i in range(8)]
    lines = []
    assert warm_up(model, rows, Settings, log=lines.append) is not None and "8 AU examples, 5 steps" in lines[0]
    assert warm_up(model, [{**r, "task": "emotion"} for r in rows], Settings) is None  # no AU examples
    Settings.prior_warmup_steps = 0
    assert warm_up(model, rows, Settings) is None
