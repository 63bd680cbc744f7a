"""Generation for every model an evaluation scores, in one Ray Data pass over a pool of replicas.

An evaluation scores the trained model, its prior-token ablation and baselines such as
the untrained initial model. One pass for all of them starts the replicas (a process,
its imports, Ray Data's pipeline) once, not once per model.

The unit of work is a generation batch, formed here rather than by Ray Data: up to
``evaluate.batch_size`` rows of one model, one task and one variant, split evenly. A
batch never mixes models, and it is never a few rows left over where Ray Data's blocks
end. A replica hands a batch's rows to its inference engine at once (continuous batching:
a finished answer's slot goes to the next row), sorted by prompt length. Batches reach the
replicas in order, so a replica loads a model when the batches move on to it, about once
per model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emola.config import EmolaConfig
from emola.data.manifest import ManifestRow
from emola.model.configuration import EmolaModelConfig


@dataclass(frozen=True)
class Variant:
    """A model scored on the test rows.

    ``parts``: its checkpoint, or one checkpoint per task (``train.separate_models``);
    each part answers the rows of its own tasks.
    ``prior_off``: the prior-token ablation at inference. Every image gets the same prior
    vector (the mean over the test images), so the token carries no per-face information
    while the sequence layout stays as trained; how far the scores drop is how much the
    model reads the landmarks.
    """

    name: str
    parts: tuple[Path, ...]
    prior_off: bool = False


def generation_batches(variants: Sequence[Variant], cfg: EmolaConfig, rows: Sequence[ManifestRow]) -> list[dict]:
    """The generation batches of every variant, in order: variant, part, task.

    Each batch is one dict: ``variant`` (name), ``checkpoint`` (absolute path), ``rows``
    (a JSON list of manifest rows) and ``priors`` (float32 bytes, ``len(rows) x prior_dim``;
    empty for a model without the prior token). Rows whose image has no prior vector are
    left out, as training leaves them out.
    """
    from emola.landmarks.cache import prior_vectors

    shas = {r.image_sha256 for r in rows}
    cached: dict[str, dict[str, np.ndarray]] = {}  # backend key -> prior vectors (read the cache once)
    batches = []
    for variant in variants:
        for part in variant.parts:
            model_cfg = EmolaModelConfig.load(part)
            priors = None
            if model_cfg.prior == "landmarks":
                key = model_cfg.landmark_backend
                if key not in cached:
                    cached[key] = prior_vectors(cfg.landmarks.cache, key, shas)
                priors = cached[key]
                if variant.prior_off and priors:
                    mean = np.mean(np.stack(list(priors.values())), axis=0).astype(np.float32)
                    priors = dict.fromkeys(priors, mean)
            for task in model_cfg.tasks:
                task_rows = [r for r in rows if r.task == task and (priors is None or r.image_sha256 in priors)]
                for chunk in _even_chunks(task_rows, cfg.evaluate.batch_size):
                    batches.append({
                        "variant": variant.name, "checkpoint": str(part.resolve()),
                        "rows": json.dumps([r.model_dump(mode="json") for r in chunk]),
                        "priors": b"" if priors is None else np.stack([priors[r.image_sha256] for r in chunk]).tobytes(),
                    })
    return batches


def _even_chunks(items: list, most: int) -> list[list]:
    """``items`` in ``ceil(len / most)`` consecutive chunks whose sizes differ by at most one."""
    count = -(-len(items) // most)
    bounds = [round(i * len(items) / count) for i in range(count + 1)] if count else [0]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


class PredictActor:
    """A model replica in the Ray Data actor pool: one generation batch per call, all its rows
    in one continuous batch of the inference engine.

    It holds one model at a time and loads another when a batch names it, releasing the
    previous one first (a GPU replica has room for one 7B model).
    """

    def __init__(self, generation: dict, inference: dict, threads: int = 1):
        import torch

        from emola.config.schema import GenerationConfig, InferenceConfig

        torch.set_num_threads(threads)   # one replica per core: more threads would only contend
        self.generation = GenerationConfig.model_validate(generation)
        self.inference = InferenceConfig.model_validate(inference)
        self.checkpoint: str | None = None
        self.engine = None

    def _use(self, checkpoint: str) -> None:
        if checkpoint != self.checkpoint:
            import torch

            from emola.engine import InferenceEngine

            self.engine = self.checkpoint = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.engine = InferenceEngine.from_checkpoint(checkpoint, self.inference)
            self.checkpoint = checkpoint

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from emola.evaluate.predict import predict_rows

        variants, records = [], []
        for variant, checkpoint, rows_json, prior_bytes in zip(batch["variant"], batch["checkpoint"], batch["rows"],
                                                               batch["priors"]):
            self._use(checkpoint)
            rows = [ManifestRow.model_validate(r) for r in json.loads(rows_json)]
            priors = None
            if len(prior_bytes):
                vectors = np.frombuffer(prior_bytes, np.float32).reshape(len(rows), -1)
                priors = {r.image_sha256: v for r, v in zip(rows, vectors)}
            out = predict_rows(self.engine, rows, priors, self.generation)
            variants += [variant] * len(out)
            records += [json.dumps(r) for r in out]
        return {"variant": np.array(variants, dtype=object), "record": np.array(records, dtype=object)}


def predict_variants(variants: Sequence[Variant], cfg: EmolaConfig, rows: Sequence[ManifestRow]) -> dict[str, list[dict]]:
    """Prediction records of every variant (keyed by name, each in ``rows`` order), from
    one pass over an actor pool of ``evaluate.replicas`` model replicas."""
    import ray

    from emola.runtime import init_ray, map_on_actors

    predictions: dict[str, list[dict]] = {v.name: [] for v in variants}
    batches = generation_batches(variants, cfg, rows)
    if not batches:
        return predictions
    init_ray()
    e = cfg.evaluate
    ds = ray.data.from_items(batches, override_num_blocks=len(batches))
    ds = map_on_actors(ds, PredictActor, fn_constructor_kwargs={"generation": e.generation.model_dump(),
                                                                "inference": cfg.inference.model_dump(),
                                                                "threads": 4 if cfg.train.use_gpu else 1},
                       compute=ray.data.ActorPoolStrategy(size=min(e.replicas, len(batches))), batch_size=1,
                       num_gpus=1 if cfg.train.use_gpu else 0, num_cpus=1 if cfg.train.use_gpu else 0.75)
    out = ds.to_pandas()
    for name, record in zip(out["variant"], out["record"]):
        predictions[name].append(json.loads(record))
    order = {row.uid: i for i, row in enumerate(rows)}
    for records in predictions.values():
        records.sort(key=lambda r: order[r["uid"]])
    return predictions
