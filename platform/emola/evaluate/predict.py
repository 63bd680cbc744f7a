"""Batch generation over test manifest rows, with the images' cached prior vectors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emola.config.schema import GenerationConfig
from emola.data.manifest import ManifestRow
from emola.imaging import read_image_file


def prediction_record(row: ManifestRow, prediction: str) -> dict:
    """One line of a predictions JSONL file (the format ``emola rege`` reads)."""
    label = row.emotion if row.task == "emotion" else ", ".join(str(a) for a in row.aus or [])
    return {"uid": row.uid, "task": row.task, "image": row.image, "question": row.question,
            "prediction": prediction, "reference": row.answer, "label": label}


def predict_rows(engine, rows: Sequence[ManifestRow], priors: dict[str, np.ndarray] | None,
                 generation: GenerationConfig) -> list[dict]:
    """Generate a description for every row with ``engine`` (an :class:`~emola.engine.InferenceEngine`),
    all rows in one continuous batch; rows without a needed prior vector are skipped. A model with a
    readout head also gives each record its probabilities (``readout``: ``aus``, ``emotions``)."""
    processor = engine.processor
    usable = [r for r in rows if priors is None or r.image_sha256 in priors]
    if not usable:
        return []
    images = [read_image_file(Path(r.image_path()), 10**9)[0] for r in usable] if processor.use_image else None
    prior = np.stack([priors[r.image_sha256] for r in usable]) if processor.use_prior else None
    requests = engine.requests([r.question for r in usable], images, prior, generation)
    records = [prediction_record(r, engine.completion(q, g).text)
               for r, q, g in zip(usable, requests, engine.generate(requests))]
    if engine.model.readout is not None:
        for record, readout in zip(records, engine.readout(requests)):
            record["readout"] = {"aus": {str(a): round(p, 5) for a, p in readout.aus.items()},
                                 "emotions": {e: round(p, 5) for e, p in readout.emotions.items()}}
    return records
