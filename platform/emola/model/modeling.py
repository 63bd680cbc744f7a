"""EmoLA by composition: a HF LLaVA model plus the prior projector.

The multimodal merge (:meth:`EmolaForConditionalGeneration.merge_inputs`) happens in one
place: token ids are embedded, every ``<image>`` position receives one projected CLIP
patch feature (in order), and each sample's single ``<prior>`` position receives its
projected landmark prior. The language model then runs on those embeddings, so LLaVA's
own placeholder search is not involved and no transformers code is patched.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import nn
from transformers import LlavaForConditionalGeneration

from emola.model.prior_projector import PriorProjector
from emola.model.readout import ReadoutHead, readout_positions


class EmolaForConditionalGeneration(nn.Module):
    """LLaVA + one facial prior token.

    Args:
        llava: the HF LLaVA model (vision tower, vision projector, language model, LM head).
        prior_projector: maps ``(B, prior_dim)`` to ``(B, hidden)``; None for ``model.prior: none``.
        image_token_id / prior_token_id: ids of ``<image>`` and ``<prior>`` in the tokenizer.
        readout: the optional AU and emotion head (:mod:`emola.model.readout`).
    """

    def __init__(self, llava: LlavaForConditionalGeneration, prior_projector: PriorProjector | None,
                 image_token_id: int, prior_token_id: int):
        super().__init__()
        self.llava = llava  # becomes a peft.PeftModel around the LLaVA when LoRA is applied
        self.prior_projector = prior_projector
        self.image_token_id = image_token_id
        self.prior_token_id = prior_token_id
        self.readout: ReadoutHead | None = None

    @property
    def base_llava(self) -> LlavaForConditionalGeneration:
        """The LLaVA model itself, with LoRA layers injected when LoRA is applied."""
        return self.llava.get_base_model() if isinstance(self.llava, PeftModel) else self.llava

    @property
    def config(self):
        return self.base_llava.config

    @property
    def device(self) -> torch.device:
        return self.base_llava.device

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, num_image_tokens, hidden)``: CLIP layer ``vision_feature_layer``, projected."""
        out = self.base_llava.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return torch.stack(list(out.pooler_output))

    def merge_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                     prior: torch.Tensor | None = None, image_features: torch.Tensor | None = None, *,
                     counted: bool = False) -> torch.Tensor:
        """Token ids and media -> input embeddings ``(B, L, hidden)``.

        ``input_ids`` ``(B, L)`` hold, per sample, ``num_image_tokens`` ``<image>`` ids (when
        the model sees images) followed directly by one ``<prior>`` id (when it uses the
        prior); ``pixel_values`` ``(N, 3, S, S)``; ``prior`` ``(N, prior_dim)``. Usually a row
        is one sample (``N = B``); a packed row holds several, and the images and priors are
        then given in the order their samples appear, row by row. ``image_features``
        ``(N, num_image_tokens, hidden)``, when given, are used instead of running the vision
        tower on ``pixel_values`` (the inference engine replays the tower from a CUDA graph).

        ``counted``: the caller has counted the ``<image>`` and ``<prior>`` ids on the host and gives media
        exactly when they are there (the inference engine's ``validate``). The counts are then not read back
        from the device, so the merge does not wait for the device's queued work.
        """
        embeds = self.base_llava.get_input_embeddings()(input_ids)
        image_mask = input_ids == self.image_token_id
        if (pixel_values is not None or image_features is not None) if counted else image_mask.any():
            if pixel_values is None and image_features is None:
                raise ValueError("input_ids hold <image> tokens but no pixel_values were given")
            features = (self.image_features(pixel_values.to(embeds.dtype)) if image_features is None
                        else image_features).to(embeds.dtype)
            if not counted and image_mask.sum() != features.shape[0] * features.shape[1]:
                raise ValueError(f"{int(image_mask.sum())} <image> tokens for {features.shape[0]}x{features.shape[1]} "
                                 "image features")
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), features)
        prior_mask = input_ids == self.prior_token_id
        if (prior is not None and self.prior_projector is not None) if counted else prior_mask.any():
            if prior is None or self.prior_projector is None:
                raise ValueError("input_ids hold a <prior> token but no prior (or no prior projector) was given")
            if not counted and int(prior_mask.sum()) != prior.shape[0]:
                raise ValueError(f"{int(prior_mask.sum())} <prior> tokens for {prior.shape[0]} prior vectors: "
                                 "each sample needs exactly one")
            tokens = self.prior_projector(prior.to(embeds.dtype))  # (N, hidden), in sample order
            embeds = embeds.masked_scatter(prior_mask.unsqueeze(-1), tokens)
        return embeds

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, prior: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        """Causal LM forward; ``labels`` ``(B, L)`` with -100 where no loss is taken."""
        embeds = self.merge_inputs(input_ids, pixel_values, prior)
        return self.llava(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    def decoder_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       pixel_values: torch.Tensor | None = None, prior: torch.Tensor | None = None,
                       **kwargs) -> torch.Tensor:
        """The language model's last hidden states ``(B, L, hidden)``, before the LM head (:attr:`lm_head`)."""
        embeds = self.merge_inputs(input_ids, pixel_values, prior)
        return self.base_llava.model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs).last_hidden_state

    def readout_states(self, states: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Decoder states ``(B, L, hidden)`` -> each sample's readout-token state ``(N, hidden)``."""
        positions = readout_positions(input_ids, self.prior_token_id if self.prior_projector is not None else None,
                                      self.image_token_id)
        return states[positions[:, 0], positions[:, 1]]

    @torch.no_grad()
    def readout_probabilities(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                              pixel_values: torch.Tensor | None = None,
                              prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """AU probabilities ``(N, len(aus))`` and emotion distributions ``(N, len(emotions))``, one forward pass."""
        if self.readout is None:
            raise ValueError("this model has no readout head (train with train.readout_weight > 0)")
        states = self.decoder_states(input_ids, attention_mask, pixel_values, prior)
        return self.readout.probabilities(self.readout_states(states, input_ids))

    @property
    def lm_head(self) -> nn.Module:
        """hidden -> vocabulary logits (a LoRA-wrapped or fully trained copy when training made one)."""
        return self.base_llava.lm_head

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, prior: torch.Tensor | None = None, **generation_kwargs):
        """Generate from left-padded prompts; returns only the new token ids ``(B, T)``."""
        embeds = self.merge_inputs(input_ids, pixel_values, prior)
        return self.llava.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generation_kwargs)
