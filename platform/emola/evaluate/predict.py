"""Batch generation over test manifest rows, with the images' cached prior vectors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emola.config.schema import GenerationConfig
from emola.data.manifest import ManifestRow
from emola.imaging import read_image_file
from emola.model.inference import generate_descriptions


def prediction_record(row: ManifestRow, prediction: str) -> dict:
    """One line of a predictions JSONL file (the format ``emola rege`` reads)."""
    label = row.emotion if row.task == "emotion" else ", ".join(str(a) for a in row.aus or [])
    return {"uid": row.uid, "task": row.task, "image": row.image, "question": row.question,
            "prediction": prediction, "reference": row.answer, "label": label}


def predict_rows(model, processor, rows: Sequence[ManifestRow], priors: dict[str, np.ndarray] | None,
                 generation: GenerationConfig, batch_size: int = 16) -> list[dict]:
    """Generate a description for every row (rows without a needed prior vector are skipped)."""
    records = []
    usable = [r for r in rows if priors is None or r.image_sha256 in priors]
    for start in range(0, len(usable), batch_size):
        chunk = usable[start:start + batch_size]
        images = [read_image_file(Path(r.image_path()), 10**9)[0] for r in chunk] if processor.use_image else None
        prior = np.stack([priors[r.image_sha256] for r in chunk]) if processor.use_prior else None
        texts = generate_descriptions(model, processor, [r.question for r in chunk], images, prior, generation)
        records += [prediction_record(r, t) for r, t in zip(chunk, texts)]
    return records
