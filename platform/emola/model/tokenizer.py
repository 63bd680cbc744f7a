"""A small BPE tokenizer trained offline for the ``tiny`` profile.

Byte-level BPE (spaces and newlines round-trip), trained with the ``tokenizers`` library
on the training texts, with LLaVA's special tokens and EmoLA's ``<prior>``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from emola.model.templates import IMAGE, PRIOR, TEMPLATES

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE, PRIOR]


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (plus every template's fixed text)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    template_text = [t.system + t.user + t.assistant for t in TEMPLATES.values()]
    tokenizer.train_from_iterator([*template_text, *texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=[IMAGE, PRIOR], padding_side="right",
    )
