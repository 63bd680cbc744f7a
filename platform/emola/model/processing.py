"""Turning (question, answer, image, prior) into model inputs, and generated ids into text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from emola.model.templates import IMAGE, PRIOR, ConversationTemplate, get_template

IGNORE_INDEX = -100


def make_image_processor(size: int) -> LlavaImageProcessorPil:
    """CLIP preprocessing at ``size``: pad to square with the mean colour (EmoLA's ``pad``), resize.

    The PIL-backed class: the default LLaVA processor needs torchvision, which has no CPU build.
    """
    return LlavaImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                  do_pad=True, do_center_crop=True)


class EmolaProcessor:
    """Tokenizer + image processor + conversation template.

    Training examples are right-padded and label only the answer and its end token;
    generation prompts are left-padded.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: LlavaImageProcessorPil,
                 template: str, num_image_tokens: int, use_image: bool, use_prior: bool):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template: ConversationTemplate = get_template(template)
        self.num_image_tokens = num_image_tokens
        self.use_image = use_image
        self.use_prior = use_prior
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
        self.prior_token_id = tokenizer.convert_tokens_to_ids(PRIOR)
        if tokenizer.unk_token_id in (self.image_token_id, self.prior_token_id):
            raise ValueError("the tokenizer lacks the <image> or <prior> special token")

    # ------------------------------------------------------------------ text
    def _text_ids(self, text: str) -> list[int]:
        """Text as plain text: a question that spells ``<image>``, ``<prior>`` or ``</s>`` gets those characters,
        not the special tokens (which would ask for media the request does not carry, or end the prompt)."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def prompt_ids(self, question: str) -> list[int]:
        """BOS + the template's prompt with media placeholders expanded."""
        ids = [self.tokenizer.bos_token_id]
        for segment in self.template.prompt_segments(question, image=self.use_image, prior=self.use_prior):
            if segment == IMAGE:
                ids += [self.image_token_id] * self.num_image_tokens
            elif segment == PRIOR:
                ids.append(self.prior_token_id)
            else:
                ids += self._text_ids(segment)
        return ids

    def example_ids(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)``: labels are -100 except on the answer and the end token."""
        prompt = self.prompt_ids(question)
        answer_ids = self._text_ids(self.template.answer_prefix + answer.strip()) + [self.tokenizer.eos_token_id]
        return prompt + answer_ids, [IGNORE_INDEX] * len(prompt) + answer_ids

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids -> text, cut at the end token."""
        ids = list(ids)
        if self.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(self.tokenizer.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---------------------------------------------------------------- images
    def pixel_values(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """RGB images -> ``(B, 3, S, S)`` float32."""
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    # --------------------------------------------------------------- batches
    def _media(self, batch: dict, images, priors) -> dict:
        if self.use_image:
            if images is None:
                raise ValueError("this model sees images: pass one per sample")
            batch["pixel_values"] = self.pixel_values(images)
        if self.use_prior:
            if priors is None:
                raise ValueError("this model uses the landmark prior: pass one prior vector per sample")
            batch["prior"] = torch.as_tensor(np.asarray(priors), dtype=torch.float32)
        return batch

    def training_batch(self, questions: Sequence[str], answers: Sequence[str], images=None, priors=None,
                       max_length: int | None = None) -> dict:
        """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (+ ``pixel_values``, ``prior``)."""
        pairs = [self.example_ids(q, a) for q, a in zip(questions, answers)]
        if max_length:
            pairs = [(ids[:max_length], labels[:max_length]) for ids, labels in pairs]
        width = max(len(ids) for ids, _ in pairs)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in pairs])
        labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in pairs])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in pairs])
        return self._media({"input_ids": input_ids, "attention_mask": mask, "labels": labels}, images, priors)

    def generation_batch(self, questions: Sequence[str], images=None, priors=None) -> dict:
        """Left-padded prompts for :meth:`EmolaForConditionalGeneration.generate`."""
        prompts = [self.prompt_ids(q) for q in questions]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        return self._media({"input_ids": input_ids, "attention_mask": mask}, images, priors)

    # ------------------------------------------------------------ save/load
    def save(self, directory: Path | str) -> None:
        directory = Path(directory)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self.image_processor.save_pretrained(directory / "processor")
        settings = {"template": self.template.name, "num_image_tokens": self.num_image_tokens,
                    "use_image": self.use_image, "use_prior": self.use_prior}
        (directory / "processor" / "emola_processor.json").write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path | str) -> "EmolaProcessor":
        directory = Path(directory)
        settings = json.loads((directory / "processor" / "emola_processor.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        image_processor = LlavaImageProcessorPil.from_pretrained(directory / "processor")
        return cls(tokenizer, image_processor, **settings)
