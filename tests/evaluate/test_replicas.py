"""One generation pass for every model an evaluation scores: its batches, and its records."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import groupby
from pathlib import Path

import numpy as np
import pytest

from emola.config import load_config
from emola.data.manifest import ManifestRow, read_manifest
from emola.evaluate.replicas import Variant, generation_batches, predict_variants
from emola.landmarks.cache import prior_vectors
from tests.conftest import REPO, build_tiny, copy_as_task_part


def _params(small_pipeline, batch_size: int, max_new_tokens: int = 8):
    return load_config(REPO / "params.yaml", {
        "data.manifests": str(small_pipeline["manifests"]), "landmarks.cache": str(small_pipeline["landmarks"]),
        "evaluate.batch_size": batch_size, "evaluate.generation.max_new_tokens": max_new_tokens})


def _rows(small_pipeline) -> list[ManifestRow]:
    return list(read_manifest(small_pipeline["manifests"] / "test.jsonl"))


@pytest.fixture(scope="module")
def untrained_checkpoint(tiny_params, tiny_corpus, tmp_path_factory) -> Path:
    """The tiny model at its initial weights: the same architecture as ``tiny_checkpoint``, other weights."""
    from emola.model.checkpoint import save_checkpoint

    model, processor, config = build_tiny(tiny_params, tiny_corpus)
    return save_checkpoint(model, processor, config, tmp_path_factory.mktemp("untrained") / "checkpoint")


def test_batches_hold_one_model_task_and_variant_evenly_split_and_cover_every_row(small_pipeline, tiny_checkpoint,
                                                                                   tmp_path):
    cfg, rows = _params(small_pipeline, batch_size=7), _rows(small_pipeline)
    per_task = (copy_as_task_part(tiny_checkpoint, tmp_path / "split/au", "au"),
                copy_as_task_part(tiny_checkpoint, tmp_path / "split/emotion", "emotion"))
    variants = [Variant("model", (tiny_checkpoint,)), Variant("prior_off", (tiny_checkpoint,), prior_off=True),
                Variant("per_task", per_task)]
    batches = generation_batches(variants, cfg, rows)

    cached = prior_vectors(small_pipeline["landmarks"], "annotation@1-68", {r.image_sha256 for r in rows})
    assert 0 < len(cached) <= len(rows)
    expected = [r.uid for r in rows if r.image_sha256 in cached]
    decoded = []
    for batch in batches:
        batch_rows = [ManifestRow.model_validate(r) for r in json.loads(batch["rows"])]
        priors = np.frombuffer(batch["priors"], np.float32).reshape(len(batch_rows), 136)
        assert 1 <= len(batch_rows) <= 7 and len({r.task for r in batch_rows}) == 1
        decoded.append((batch["variant"], batch["checkpoint"], batch_rows, priors))
    for (variant, checkpoint, task), group in groupby(decoded, key=lambda b: (b[0], b[1], b[2][0].task)):
        sizes = [len(b[2]) for b in group]
        assert max(sizes) - min(sizes) <= 1, (variant, task, sizes)  # no batch of a few left-over rows
    for variant in variants:
        mine = [b for b in decoded if b[0] == variant.name]
        assert {b[1] for b in mine} == {str(p.resolve()) for p in variant.parts}
        assert sorted(r.uid for b in mine for r in b[2]) == sorted(expected)  # each row once, per variant
    model_priors = np.concatenate([b[3] for b in decoded if b[0] == "model"])
    model_rows = [r for b in decoded if b[0] == "model" for r in b[2]]
    assert np.array_equal(model_priors, np.stack([cached[r.image_sha256] for r in model_rows]))
    ablated = np.concatenate([b[3] for b in decoded if b[0] == "prior_off"])
    mean = np.mean(np.stack(list(cached.values())), axis=0)
    assert np.allclose(ablated, mean[None], atol=1e-6)  # one mean prior for every image
    assert len(generation_batches(variants, _params(small_pipeline, batch_size=1000), rows)) == 3 * 2  # one per task


def test_the_landmark_cache_is_read_once_per_backend(small_pipeline, tiny_checkpoint, monkeypatch):
    import emola.landmarks.pipeline

    reads = []
    real = emola.landmarks.cache.prior_vectors
    monkeypatch.setattr(emola.landmarks.cache, "prior_vectors", lambda *args: reads.append(args[1]) or real(*args))
    variants = [Variant("model", (tiny_checkpoint,)), Variant("prior_off", (tiny_checkpoint,), prior_off=True),
                Variant("again", (tiny_checkpoint,))]
    assert generation_batches(variants, _params(small_pipeline, batch_size=7), _rows(small_pipeline))
    assert reads == ["annotation@1-68"]


def test_a_baseline_named_like_the_models_own_scores_is_refused(tiny_checkpoint, tiny_params):
    from emola.evaluate.job import variants_to_score

    for name in ("model", "prior_off"):
        with pytest.raises(ValueError, match=f"baseline '{name}' names the evaluated model's own scores"):
            variants_to_score([tiny_checkpoint], {}, tiny_params, {name: tiny_checkpoint})
    run = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--baseline", f"prior_off={tiny_checkpoint}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--baseline 'prior_off=" in run.stderr and "own scores" in run.stderr
    run = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--baseline", "no-folder"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "expected NAME=DIR" in run.stderr


@pytest.mark.slow
def test_one_pass_predicts_each_variant_as_a_pass_of_its_own(small_pipeline, tiny_checkpoint, untrained_checkpoint):
    cfg, rows = _params(small_pipeline, batch_size=6), _rows(small_pipeline)
    variants = [Variant("model", (tiny_checkpoint,)), Variant("untrained", (untrained_checkpoint,)),
                Variant("prior_off", (tiny_checkpoint,), prior_off=True)]
    together = predict_variants(variants, cfg, rows)
    assert list(together) == ["model", "untrained", "prior_off"]
    position = {row.uid: i for i, row in enumerate(rows)}
    for variant in variants:  # the replicas switched models and priors with the batches
        alone = predict_variants([variant], cfg, rows)[variant.name]
        assert together[variant.name] == alone
        assert [position[r["uid"]] for r in alone] == sorted(position[r["uid"]] for r in alone)  # rows order
    assert len(together["model"]) > 0
    predictions = {name: [r["prediction"] for r in records] for name, records in together.items()}
    assert predictions["model"] != predictions["untrained"]  # two models, not one model read twice
