"""The training objective: the language-model loss, plus an optional AU loss on the prior token.

EmoLA as published trains on the language-model loss alone (``train.prior_aux_weight: 0``;
the recipe then hands DeepSpeed the model itself). With a positive weight the recipe trains
:class:`PriorAuxObjective` instead: a linear head reads the AU multi-label target of each
AU-task sample off its projected prior token. Why: the language-model gradient reaching the
prior projector is weak and noisy (a few AU-naming tokens among ~250), so the projector
learns the AU geometry slowly: without the head, the tiny profile never named the AUs that
occur only in free combinations within its step budget. The head gives the projector a
direct signal (``benchmarks/prior_aux.py`` measures it).
The head is a training device only: the exported checkpoint is the wrapped model, and
inference never sees the head.
"""

from __future__ import annotations

import torch
from torch import nn

from emola.data.labels import AU_LISTS
from emola.data.manifest import ManifestRow
from emola.metrics.rege_parsers import aus_of
from emola.model.modeling import EmolaForConditionalGeneration

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


class PriorAuxObjective(nn.Module):
    """``model`` plus a linear AU head on its prior token.

    ``forward`` takes the model's inputs plus ``au_targets`` ``(B, len(AUX_AUS))`` and
    ``au_mask`` ``(B,)`` (1 for AU-task samples) and returns the model's output with
    ``loss = lm_loss + weight * BCE(head(prior_token), au_targets)`` over the masked
    samples; ``last_lm_loss`` and ``last_aux_loss`` keep the two terms for logging.
    """

    def __init__(self, model: EmolaForConditionalGeneration, weight: float):
        super().__init__()
        if model.prior_projector is None:
            raise ValueError("train.prior_aux_weight > 0 needs a model with a prior token (model.prior: landmarks)")
        self.model = model
        self.weight = weight
        self.head = nn.Linear(model.prior_projector.linear_2.out_features, len(AUX_AUS))
        self.last_lm_loss = self.last_aux_loss = torch.tensor(0.0)

    def forward(self, au_targets: torch.Tensor, au_mask: torch.Tensor, **inputs):
        output = self.model(**inputs)
        self.last_lm_loss = output.loss.detach()
        # Every sample goes through the head and the mask zeroes the non-AU ones, instead of
        # selecting the AU rows: a batch without any must still give the head a (zero)
        # gradient, or data-parallel ranks reduce gradient buffers of different sizes.
        # The projector runs a second time: one small MLP next to the LLM pass, and it keeps
        # the model's forward free of training-only outputs.
        tokens = self.model.prior_projector(inputs["prior"].to(self.head.weight.dtype))
        per_sample = nn.functional.binary_cross_entropy_with_logits(
            self.head(tokens).float(), au_targets.float(), reduction="none").mean(-1)
        mask = au_mask.float()
        aux = (per_sample * mask).sum() / mask.sum().clamp_min(1.0)
        self.last_aux_loss = aux.detach() if mask.any() else torch.tensor(float("nan"))
        output.loss = output.loss + self.weight * aux
        return output
