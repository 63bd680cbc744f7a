"""The training objective: the language-model loss, optionally reweighted, plus an optional AU loss.

EmoLA as published trains on the plain language-model loss (``train.au_code_weight: 1``,
``train.prior_aux_weight: 0``). :class:`TrainingObjective` computes it, and can add two
training devices:

- AU-code token weights (``train.au_code_weight``): the tokens that spell an AU code
  (``AU12``) count ``w`` times in the language-model loss. Why: a description is ~250
  tokens of phrasing, much of it drawn at random per sample and never predictable, and a
  handful of AU-code tokens, the only ones the AU score reads; their share of the gradient
  is too small for the AUs seen in few images.
- The AU head (``train.prior_aux_weight``): a linear head reads the AU multi-label target
  of each AU-task sample off its projected prior token. Why: the language-model gradient
  reaching the prior projector is weak and noisy, so the projector learns the AU geometry
  slowly; the head gives it a direct signal (measured: docs/experiments.md, 2026-11-21).

Both are training devices only: the exported checkpoint is the wrapped model, and
inference never sees the weights or the head.

The readout head (``train.readout_weight``, :mod:`emola.model.readout`) is not: it is part
of the model and exported with it. Its loss, ``BCE(AU logits, AU targets)`` over AU-task
samples plus ``CE(emotion logits, class)`` over emotion-task samples with a known class,
reads the decoder states the language-model loss computes anyway.

With ``sparse_logits`` the LM head runs only at the positions that take a loss (the
answer tokens, a ninth of an ``emola-7b`` sequence), instead of producing the logits of
every position and discarding most: the same loss, without the ``(B, L, vocabulary)``
tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emola.labels import AU_LISTS, EMOTIONS
from emola.data.manifest import ManifestRow
from emola.metrics.rege_parsers import aus_of, emotion_of
from emola.model.modeling import EmolaForConditionalGeneration
from emola.model.processing import IGNORE_INDEX

#: The warmed AU head beside the initial checkpoint of a run (:func:`warm_up_prior`).
AUX_HEAD_FILE = "aux_head.safetensors"

#: Targets of the auxiliary head: the FABA label space, a superset of every benchmark's list.
AUX_AUS: tuple[int, ...] = AU_LISTS["FABA"]


def au_targets(row: ManifestRow) -> list[float] | None:
    """Multi-hot ``(len(AUX_AUS),)`` target of an AU-task row; None for other tasks.

    The row's label when it has one (FABA-Synth); otherwise the AUs its answer names, read
    with REGE's own ``AU(\\d+)`` rule (official FABA-Instruct train files carry no label).
    """
    if row.task != "au":
        return None
    active = set(row.aus) if row.aus is not None else set(aus_of(row.answer, AUX_AUS))
    return [float(au in active) for au in AUX_AUS]


def emotion_target(row: ManifestRow) -> int:
    """The class index (:data:`emola.labels.EMOTIONS`) of an emotion-task row, -1 for other rows or no class.

    The row's label when it has one; otherwise the emotion its answer names, read with
    REGE's own parser (official FABA-Instruct train files carry no label)."""
    if row.task != "emotion":
        return -1
    name = row.emotion if row.emotion is not None else emotion_of(row.answer)
    return EMOTIONS.index(name) if name in EMOTIONS else -1


def au_head(model: EmolaForConditionalGeneration) -> nn.Linear:
    """A fresh linear AU head on ``model``'s projected prior token: hidden -> ``len(AUX_AUS)`` logits."""
    if model.prior_projector is None:
        raise ValueError("train.prior_aux_weight > 0 needs a model with a prior token (model.prior: landmarks)")
    return nn.Linear(model.prior_projector.linear_2.out_features, len(AUX_AUS))


@torch.enable_grad()
def warm_up_prior(model: EmolaForConditionalGeneration, head: nn.Linear, priors: torch.Tensor, targets: torch.Tensor,
                  steps: int, lr: float) -> float:
    """Fit the prior projector and the AU head to the AU labels before training; returns the last loss.

    ``priors`` ``(N, prior_dim)`` and ``targets`` ``(N, len(AUX_AUS))`` of the AU-task
    training samples. Full-batch AdamW for ``steps`` steps: a few seconds for thousands of
    samples, as the projector and head are small. Why: like LLaVA's projector pre-training
    stage, it lets the language model start from a prior token that already separates the
    AUs; in the joint run the projector sees each sample a few times only, and the AUs of a
    few dozen images (17, 24, 25 in FABA-Synth) are still unlearned when training ends.
    """
    params = [*model.prior_projector.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        logits = head(model.prior_projector(priors.to(head.weight.dtype)))
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for param in params:
        param.grad = None
    return float(loss.detach())


def next_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy of predicting ``labels[:, t]`` from ``logits[:, t - 1]``.

    ``logits`` ``(B, L, V)``, ``labels`` ``(B, L)`` with -100 where no loss is taken.
    Returns ``(losses, labelled)``, both ``(B, L - 1)``, aligned with ``labels[:, 1:]``;
    ``losses`` is 0 where ``labelled`` is False. The plain mean, ``losses.sum() /
    labelled.sum()``, is the Hugging Face causal-LM loss.
    """
    targets = labels[:, 1:]
    losses = nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                         ignore_index=IGNORE_INDEX, reduction="none").view_as(targets)
    return losses, targets != IGNORE_INDEX


@dataclass
class TrainingOutput:
    loss: torch.Tensor


class TrainingObjective(nn.Module):
    """``model`` and the loss it trains on.

    ``forward`` takes the model's inputs with ``labels`` plus, optionally:

    - ``loss_weights`` ``(B, L)``, aligned with ``labels``: the language-model loss becomes
      ``sum(weight * token loss) / number of labelled tokens``, so all-ones weights give the
      plain loss;
    - ``au_targets`` ``(B, len(AUX_AUS))`` and ``au_mask`` ``(B,)`` (1 for AU-task samples),
      needed when ``aux_weight > 0``: the loss gains ``aux_weight * BCE(head(prior token),
      au_targets)`` over the masked samples.

    It returns a :class:`TrainingOutput` with that ``loss``; ``last_lm_loss`` (the plain,
    unweighted language-model loss, comparable across settings) and ``last_aux_loss`` keep
    the terms for logging.
    """

    def __init__(self, model: EmolaForConditionalGeneration, aux_weight: float = 0.0,
                 head_state: dict[str, torch.Tensor] | None = None, sparse_logits: bool = False,
                 readout_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.aux_weight = aux_weight
        self.sparse_logits = sparse_logits
        if readout_weight > 0 and model.readout is None:
            raise ValueError("train.readout_weight > 0 needs a model with a readout head (emola.model.readout)")
        self.readout_weight = readout_weight
        self.last_readout_loss = torch.tensor(float("nan"))
        self.head = None
        if aux_weight > 0:
            self.head = au_head(model)
            if head_state is not None:  # warmed up with the prior projector (:func:`warm_up_prior`)
                self.head.load_state_dict(head_state)
        self.last_lm_loss = self.last_aux_loss = torch.tensor(float("nan"))

    def forward(self, au_targets: torch.Tensor | None = None, au_mask: torch.Tensor | None = None,
                loss_weights: torch.Tensor | None = None, emotion_targets: torch.Tensor | None = None,
                **inputs) -> TrainingOutput:
        labels = inputs.pop("labels")
        inputs.setdefault("use_cache", False)   # a cache would also hide packed rows from the attention mask
        targets = labels[:, 1:]
        taken = targets != IGNORE_INDEX                        # (B, L - 1), aligned with labels[:, 1:]
        states = None
        if self.sparse_logits or self.readout_weight > 0:
            states = self.model.decoder_states(**inputs)                    # (B, L, hidden)
        if self.sparse_logits:
            hidden = states[:, :-1][taken]                                  # (N, hidden)
            losses = nn.functional.cross_entropy(self.model.lm_head(hidden).float(), targets[taken], reduction="none")
        elif states is not None:
            losses = next_token_losses(self.model.lm_head(states), labels)[0][taken]
        else:
            losses = next_token_losses(self.model(**inputs).logits, labels)[0][taken]
        count = taken.sum().clamp_min(1)
        lm_loss = losses.sum() / count
        self.last_lm_loss = lm_loss.detach()
        loss = lm_loss if loss_weights is None else (losses * loss_weights[:, 1:][taken].to(losses.dtype)).sum() / count
        if self.head is not None:
            loss = loss + self.aux_weight * self._aux_loss(inputs["prior"], au_targets, au_mask)
        if self.readout_weight > 0:
            loss = loss + self.readout_weight * self._readout_loss(states, inputs["input_ids"], au_targets, au_mask,
                                                                   emotion_targets)
        return TrainingOutput(loss)

    def _readout_loss(self, states: torch.Tensor, input_ids: torch.Tensor, au_targets: torch.Tensor | None,
                      au_mask: torch.Tensor | None, emotion_targets: torch.Tensor | None) -> torch.Tensor:
        if au_targets is None or au_mask is None or emotion_targets is None:
            raise ValueError("the readout head needs au_targets, au_mask and emotion_targets in every batch")
        # As for the AU head: every sample goes through, masks zero the others (equal gradient buffers on all ranks).
        au_logits, emotion_logits = self.model.readout(self.model.readout_states(states, input_ids))
        au_mask = au_mask.float()
        per_sample = nn.functional.binary_cross_entropy_with_logits(
            au_logits.float(), au_targets.float(), reduction="none").mean(-1)
        au_loss = (per_sample * au_mask).sum() / au_mask.sum().clamp_min(1.0)
        known = emotion_targets >= 0
        ce = nn.functional.cross_entropy(emotion_logits.float(), emotion_targets.clamp_min(0), reduction="none")
        emotion_loss = (ce * known.float()).sum() / known.sum().clamp_min(1)
        loss = au_loss + emotion_loss
        self.last_readout_loss = loss.detach()
        return loss

    def _aux_loss(self, prior: torch.Tensor, au_targets: torch.Tensor | None, au_mask: torch.Tensor | None):
        if au_targets is None or au_mask is None:
            raise ValueError("the AU head needs au_targets and au_mask in every batch")
        # Every sample goes through the head and the mask zeroes the non-AU ones, instead of
        # selecting the AU rows: a batch without any must still give the head a (zero)
        # gradient, or data-parallel ranks reduce gradient buffers of different sizes.
        # The projector runs a second time: one small MLP next to the LLM pass, and it keeps
        # the model's forward free of training-only outputs.
        tokens = self.model.prior_projector(prior.to(self.head.weight.dtype))
        per_sample = nn.functional.binary_cross_entropy_with_logits(
            self.head(tokens).float(), au_targets.float(), reduction="none").mean(-1)
        mask = au_mask.float()
        aux = (per_sample * mask).sum() / mask.sum().clamp_min(1.0)
        self.last_aux_loss = aux.detach() if mask.any() else torch.tensor(float("nan"))
        return aux
