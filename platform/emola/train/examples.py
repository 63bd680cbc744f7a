"""Training examples: manifest rows joined with prior vectors, streamed by Ray Data.

The driver builds the example list (one row per manifest row of the trained tasks whose
image has a prior vector), repeats each task's examples by its weight, shuffles them
(optionally so that each run of ``micro_batch`` rows has similar lengths), and hands Ray
Data a dataset of those examples. Each worker reads its shard and turns every micro batch
into model inputs with :class:`Preprocess` (tokenize, mask labels, load and preprocess
images) and :func:`collate` (pad).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emola.data.manifest import ManifestRow
from emola.metrics.rege_parsers import AU_CODE
from emola.model.processing import IGNORE_INDEX, EmolaProcessor
from emola.train.objective import AUX_AUS, au_targets, emotion_target


@dataclass
class ExampleSet:
    rows: list[dict]          # image, question, answer, task, prior (list) or None, au_targets, emotion_target
    skipped: list[str]        # uids without a usable prior vector


def build_examples(rows: Sequence[ManifestRow], tasks: Sequence[str], priors: dict[str, np.ndarray] | None) -> ExampleSet:
    """Rows of the trained tasks, each with its prior vector when the model uses one."""
    examples, skipped = [], []
    for row in rows:
        if row.task not in tasks:
            continue
        prior = None
        if priors is not None:
            prior = priors.get(row.image_sha256)
            if prior is None:
                skipped.append(row.uid)
                continue
        targets = au_targets(row)  # for train.prior_aux_weight; zeros outside the AU task
        # Absolute: the train workers that read the image run in their own working directory.
        examples.append({"uid": row.uid, "image": str(row.image_path().absolute()), "question": row.question,
                         "answer": row.answer, "task": row.task,
                         "prior": None if prior is None else np.asarray(prior, np.float32).tolist(),
                         "au_targets": targets or [0.0] * len(AUX_AUS), "emotion_target": emotion_target(row)})
    return ExampleSet(examples, skipped)


def weighted_examples(examples: Sequence[dict], weights: Mapping[str, float], seed: int) -> list[dict]:
    """Each example repeated by its task's weight (``train.task_weights``; a missing task: 1).

    A weight ``w`` gives every example of the task ``floor(w)`` copies plus one more with
    probability ``w - floor(w)``, drawn once with ``seed``: the epoch holds about ``w`` times
    the task's examples, and every example still appears at least once when ``w >= 1``.
    Why: tasks learn at different speeds (the tiny profile's emotion task saturates long
    before the AU task), and a weight moves the step budget without dropping data.
    """
    rng = np.random.default_rng(seed)
    out = []
    for example in examples:
        weight = float(weights.get(example["task"], 1.0))
        copies = int(weight) + int(rng.random() < weight - int(weight))
        out.extend([example] * copies)
    return out


def example_order(examples: Sequence[dict], length: Callable[[dict], int], batch: int, seed: int, *,
                  group_by_length: bool) -> list[int]:
    """The epoch's example order: :func:`length_grouped_order`, or a plain shuffle with ``seed``.

    Shuffled either way: the manifest lists one task's rows after the other's. ``length``
    (tokenizing an example) is called only when grouping needs it.
    """
    if group_by_length:
        return length_grouped_order([length(e) for e in examples], batch, seed)
    return [int(i) for i in np.random.default_rng(seed).permutation(len(examples))]


def training_stream(examples: Sequence[dict], weights: Mapping[str, float], length: Callable[[dict], int],
                    batch: int, seed: int, epochs: int, *, group_by_length: bool) -> tuple[list[dict], list[int]]:
    """``epochs`` epochs back to back, each weighted and ordered with its own seed (``seed + epoch``).

    Returns the stream and each epoch's size. Why one stream: the data pipeline runs once
    for the whole run, instead of restarting (and starting its actors) at every epoch, and
    every epoch gets a fresh order, where a re-run pipeline would repeat the same batches.
    ``length`` is called at most once per distinct example.
    """
    lengths: dict[int, int] = {}

    def cached_length(example: dict) -> int:
        if id(example) not in lengths:
            lengths[id(example)] = length(example)
        return lengths[id(example)]

    stream, sizes = [], []
    for epoch in range(epochs):
        chosen = weighted_examples(examples, weights, seed + epoch)
        order = example_order(chosen, cached_length, batch, seed + epoch, group_by_length=group_by_length)
        stream += [chosen[i] for i in order]
        sizes.append(len(chosen))
    return stream, sizes


def length_grouped_order(lengths: Sequence[int], batch: int, seed: int, window: int = 16) -> list[int]:
    """A shuffled order whose consecutive ``batch``-sized runs have similar lengths.

    Less padding, at a price measured on the tiny profile: AU descriptions grow with their
    number of AUs, so grouped batches hold faces with similar AU counts. AU macro F1 fell
    from 65.1 to 53.1 (AU task, 450 steps; measured when every epoch still repeated the
    first one's batches), with no time saved on CPU; ``tiny`` turns it off
    (``train.group_by_length``).

    Indices are shuffled, cut into mega-batches of ``window * batch``, each sorted by length
    (longest first) and cut into batches, whose order is shuffled again: padding waste
    drops while every epoch still mixes lengths and tasks.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), window * batch):
        mega = sorted(order[start:start + window * batch], key=lambda i: -lengths[i])
        batches += [mega[i:i + batch] for i in range(0, len(mega), batch)]
    rng.shuffle(batches)
    return [int(i) for b in batches for i in b]


def au_code_weights(processor: EmolaProcessor, answer: str, weight: float) -> list[float]:
    """Loss weight of each answer token as :meth:`EmolaProcessor.example_ids` labels them.

    ``weight`` for every token that spells part of an AU code (``AU12``: the "AU" and the
    digits, however the tokenizer splits them), 1 for the others and for the end token.
    Why: these are the few tokens the AU score reads, among ~250 of phrasing per description.
    """
    text = processor.template.answer_prefix + answer.strip()
    encoded = processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    codes = [match.span() for match in AU_CODE.finditer(text)]
    weights = [weight if any(start < end_code and start_code < end for start_code, end_code in codes) else 1.0
               for start, end in encoded["offset_mapping"]]
    return weights + [1.0]  # the end token


class Preprocess:
    """A batch of examples -> numpy model inputs: tokenize with label masking, load and
    preprocess images, attach priors.

    ``aux_targets``: also pass on the AU and emotion targets of the AU head and the readout head
    (``train.prior_aux_weight`` or ``train.readout_weight`` above 0).
    ``au_code_weight``: other than 1, also pass per-token loss weights (``train.au_code_weight``).
    """

    def __init__(self, processor_dir: str, max_length: int, aux_targets: bool = False, au_code_weight: float = 1.0):
        self.processor = EmolaProcessor.load(processor_dir)
        self.max_length = max_length
        self.aux_targets = aux_targets
        self.au_code_weight = au_code_weight

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from emola.imaging import read_image_file

        out: dict[str, list] = {"input_ids": [], "labels": [], "loss_weights": []}
        for question, answer in zip(batch["question"], batch["answer"]):
            ids, labels = self.processor.example_ids(str(question), str(answer))
            out["input_ids"].append(np.asarray(ids[: self.max_length], np.int64))
            out["labels"].append(np.asarray(labels[: self.max_length], np.int64))
            if self.au_code_weight != 1.0:
                answer_weights = au_code_weights(self.processor, str(answer), self.au_code_weight)
                weights = [0.0] * (len(ids) - len(answer_weights)) + answer_weights  # prompt: no loss anyway
                out["loss_weights"].append(np.asarray(weights[: self.max_length], np.float32))
        result = {"input_ids": _ragged(out["input_ids"]), "labels": _ragged(out["labels"])}
        if out["loss_weights"]:
            result["loss_weights"] = _ragged(out["loss_weights"])
        if self.processor.use_image:
            images = [read_image_file(Path(str(p)), 10**9)[0] for p in batch["image"]]
            result["pixel_values"] = self.processor.pixel_values(images).numpy()
        if self.processor.use_prior:
            result["prior"] = np.stack([np.asarray(p, np.float32) for p in batch["prior"]])
        if self.aux_targets:
            result["au_targets"] = np.stack([np.asarray(t, np.float32) for t in batch["au_targets"]])
            result["au_mask"] = np.asarray([str(task) == "au" for task in batch["task"]], np.int64)
            if "emotion_target" in batch:   # (streams planned before the readout head have none)
                result["emotion_targets"] = np.asarray(batch["emotion_target"], np.int64)
        return result


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    holder = np.empty(len(arrays), dtype=object)
    holder[:] = arrays
    return holder


def _right_pad(sequences: Sequence, width: int, fill: float, dtype: torch.dtype) -> torch.Tensor:
    """Ragged 1-D sequences -> ``(len(sequences), width)``, each left-aligned, ``fill`` after it."""
    out = torch.full((len(sequences), width), fill, dtype=dtype)
    for i, x in enumerate(sequences):
        out[i, : len(x)] = torch.as_tensor(np.asarray(x), dtype=dtype)
    return out


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Sample indices per packed row (first fit, longest first): each row's lengths sum to at most
    ``capacity``; a sample longer than ``capacity`` gets a row of its own."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def _packed(sequences: Sequence, rows: list[list[int]], width: int, fill: float, dtype: torch.dtype) -> torch.Tensor:
    """Ragged sequences laid end to end per row, ``fill`` after each row's last one."""
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            x = torch.as_tensor(np.asarray(sequences[i]), dtype=dtype)
            out[r, at:at + len(x)] = x
            at += len(x)
    return out


def collate(batch: dict[str, np.ndarray], pad_id: int, pack_length: int | None = None) -> dict[str, torch.Tensor]:
    """A numpy batch from the data pipeline -> model inputs (+ ``num_tokens`` and ``num_samples`` in it).

    Without ``pack_length`` every sample is a row, right-padded to the longest, with an
    ``attention_mask``. With it, the samples are packed into as few rows of at most
    ``pack_length`` tokens as first fit finds (:func:`pack_rows`); ``position_ids`` restart
    at 0 for every sample, which is what makes transformers keep attention within each
    sample (and the padding after a row's last sample is a segment of its own). There is
    then no ``attention_mask``, and the per-sample inputs (images, priors, AU targets) are
    reordered to the order their samples appear in the rows. Labels and loss weights
    travel with their tokens, so the loss is the same as unpacked.
    """
    ids = list(batch["input_ids"])
    lengths = [len(x) for x in ids]
    if pack_length:
        rows = pack_rows(lengths, pack_length)
        width = max(sum(lengths[i] for i in row) for row in rows)
        positions = [np.arange(n) for n in lengths]
        out = {"input_ids": _packed(ids, rows, width, pad_id, torch.long),
               "labels": _packed(list(batch["labels"]), rows, width, IGNORE_INDEX, torch.long),
               "position_ids": _packed(positions, rows, width, 0, torch.long)}
        for r, row in enumerate(rows):   # the padding after the last sample restarts at 0: a segment of its own
            used = sum(lengths[i] for i in row)
            out["position_ids"][r, used:] = torch.arange(width - used)
        if "loss_weights" in batch:
            out["loss_weights"] = _packed(list(batch["loss_weights"]), rows, width, 0.0, torch.float32)
        order = [i for row in rows for i in row]
    else:
        width = max(lengths)
        out = {"input_ids": _right_pad(ids, width, pad_id, torch.long),
               "labels": _right_pad(list(batch["labels"]), width, IGNORE_INDEX, torch.long),
               "attention_mask": (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()}
        if "loss_weights" in batch:
            out["loss_weights"] = _right_pad(list(batch["loss_weights"]), width, 0.0, torch.float32)
        order = list(range(len(ids)))
    if "pixel_values" in batch:
        out["pixel_values"] = torch.as_tensor(np.asarray(batch["pixel_values"], np.float32)[order])
    if "prior" in batch:
        out["prior"] = torch.as_tensor(np.asarray(batch["prior"], np.float32)[order])
    if "au_targets" in batch:
        out["au_targets"] = torch.as_tensor(np.asarray(batch["au_targets"], np.float32)[order])
        out["au_mask"] = torch.as_tensor(np.asarray(batch["au_mask"], np.int64)[order])
    if "emotion_targets" in batch:
        out["emotion_targets"] = torch.as_tensor(np.asarray(batch["emotion_targets"], np.int64)[order])
    out["num_tokens"] = torch.tensor(sum(lengths))
    out["num_samples"] = torch.tensor(len(lengths))
    return out
