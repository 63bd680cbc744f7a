"""How well the prior projector and AU head separate the AUs: streamed like training, or warmed up.

    python benchmarks/prior_warmup.py [--stream-steps 450] [--warmup-steps 200] [--seed 1]

Trains the tiny profile's prior projector and the AU head alone (no language model) on the
AU training samples' prior vectors, two ways from the same initialization:

- streamed: ``--stream-steps`` AdamW steps on mini batches of the recipe's global batch
  size at ``train.lr`` with its cosine schedule, which is roughly the exposure the
  projector gets from the AU samples of an AU-only run of that many steps;
- warmed up: :func:`emola.train.objective.warm_up_prior`, ``--warmup-steps`` full-batch
  steps at ``train.prior_warmup_lr`` (``train.prior_warmup_steps`` in the launcher).

Prints the head's macro F1 (FABA's 12 scored AUs, thresholded at probability 0.5) and per-AU
F1 on the AU test split, and the seconds each took. Needs the default pipeline's manifests
and landmark cache (run ``dvc repro`` first).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def head_f1(model, head, priors, targets, scored: list[int], aus: tuple[int, ...]) -> tuple[float, dict[int, int]]:
    import torch

    with torch.no_grad():
        predicted = (head(model.prior_projector(priors)) > 0).numpy()
    truth = targets.numpy().astype(bool)
    per_au = {}
    for au in scored:
        j = aus.index(au)
        tp = int((predicted[:, j] & truth[:, j]).sum())
        denominator = int(predicted[:, j].sum() + truth[:, j].sum())
        per_au[au] = round(100 * 2 * tp / denominator) if denominator else 0
    return float(np.mean(list(per_au.values()))), per_au


def main() -> None:
    import torch

    from emola.config import load_config
    from emola.data.manifest import read_manifest
    from emola.faces.cache import LandmarkCache
    from emola.faces.pipeline import prior_vectors
    from emola.metrics.rege import SCORED_AUS
    from emola.model.prior_projector import PriorProjector
    from emola.train.objective import AUX_AUS, au_targets, warm_up_prior
    from emola.train.optimization import lr_factor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream-steps", type=int, default=450)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prior_warmup.json"))
    args = parser.parse_args()

    cfg = load_config(args.params, [])
    manifests, cache = Path(cfg.data.manifests), Path(cfg.landmarks.cache)
    (backend_key,) = sorted(set(LandmarkCache(cache).read().column("backend").to_pylist()))
    rows = {s: [r for r in read_manifest(manifests / f"{s}.jsonl") if r.task == "au"] for s in ("train", "test")}
    vectors = prior_vectors(cache, backend_key, {r.image_sha256 for rs in rows.values() for r in rs})
    rows = {s: [r for r in rs if r.image_sha256 in vectors] for s, rs in rows.items()}
    priors = {s: torch.tensor(np.stack([vectors[r.image_sha256] for r in rs]), dtype=torch.float32) for s, rs in rows.items()}
    targets = {s: torch.tensor([au_targets(r) for r in rs]) for s, rs in rows.items()}
    scored = list(SCORED_AUS["FABA"])
    print(f"AU task: {len(rows['train'])} train, {len(rows['test'])} test samples")

    def fresh():
        torch.manual_seed(args.seed)
        model = torch.nn.Module()
        model.prior_projector = PriorProjector(priors["train"].shape[1], cfg.model.tiny.text_hidden,
                                               align=cfg.model.prior_align)
        model.prior_projector.fit_normalization(priors["train"], standardize=cfg.model.prior_standardize)
        return model, torch.nn.Linear(cfg.model.tiny.text_hidden, len(AUX_AUS))

    results = {}
    model, head = fresh()
    started = time.perf_counter()
    params = [*model.prior_projector.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup = int(cfg.train.warmup_ratio * args.stream_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, args.stream_steps, warmup, cfg.train.schedule))
    generator = torch.Generator().manual_seed(args.seed)
    batch = cfg.train.micro_batch * cfg.train.num_workers
    for _ in range(args.stream_steps):
        picked = torch.randint(0, len(priors["train"]), (batch,), generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            head(model.prior_projector(priors["train"][picked])), targets["train"][picked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    results["streamed"] = (*head_f1(model, head, priors["test"], targets["test"], scored, AUX_AUS),
                           time.perf_counter() - started)

    model, head = fresh()
    started = time.perf_counter()
    warm_up_prior(model, head, priors["train"], targets["train"], args.warmup_steps, cfg.train.prior_warmup_lr)
    results["warmed up"] = (*head_f1(model, head, priors["test"], targets["test"], scored, AUX_AUS),
                            time.perf_counter() - started)

    for name, (macro, per_au, seconds) in results.items():
        print(f"{name:10s} head macro F1 {macro:5.1f}  ({seconds:.1f} s)  per AU {per_au}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({name: {"macro_f1": m, "per_au_f1": p, "seconds": t}
                                    for name, (m, p, t) in results.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
