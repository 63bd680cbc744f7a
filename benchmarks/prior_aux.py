"""AU recognition with and without the training devices of :mod:`emola.train.objective`.

    python benchmarks/prior_aux.py [--steps 450] [--every 150] [--weight 1.0] [--code-weight 5]
                                   [--warmup-steps 200] [--skip-plain] [--seed 1]

Trains the tiny profile on the AU task alone in one process, from the same initial model,
data order and seed, once per variant, each adding one device to the one before:
the language-model loss (the published objective; ``--skip-plain`` leaves it out); the AU
head on the prior token (``train.prior_aux_weight``: ``--weight``); given
``--code-weight``, AU-code token weights (``train.au_code_weight``); given
``--warmup-steps``, the prior warm-up (``train.prior_warmup_steps``, at
``train.prior_warmup_lr``). Every ``--every`` steps each variant
generates descriptions for the whole AU test split with the evaluation job's decoding
settings and are scored with REGE (macro F1 over FABA's 12 scored AUs, and per AU). Needs
the default pipeline's manifests and landmark cache (run ``dvc repro`` first). The loop is
the recipe's without Ray and DeepSpeed (cosine schedule, AdamW, the same parameter
groups), so the comparison isolates the objective.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def run(weight: float, code_weight: float, warmup: int, steps: int, every: int, cfg, rows: dict, priors: dict,
        backend_key: str) -> dict:
    import torch

    from emola.evaluate.predict import predict_rows
    from emola.imaging import read_image_file
    from emola.metrics.rege import rege
    from emola.model.builder import build_emola
    from emola.model.lora import apply_lora
    from emola.train.examples import au_code_weights
    from emola.train.objective import TrainingObjective, au_head, au_targets, warm_up_prior
    from emola.train.optimization import make_scheduler, parameter_groups

    torch.manual_seed(cfg.train.seed)
    train, test = rows["train"], rows["test"]
    model, processor, _ = build_emola(cfg.model, profile="tiny", landmark_backend=backend_key, tasks=["au"],
                                      corpus=[r.answer for r in train] + [r.question for r in train])
    model.prior_projector.fit_normalization(torch.tensor(np.stack([priors[r.image_sha256] for r in train])),
                                            standardize=cfg.model.prior_standardize)
    targets = torch.tensor([au_targets(r) for r in train])
    head_state = None
    if warmup:  # as the launcher does it, before LoRA
        head = au_head(model)
        warm_up_prior(model, head, torch.tensor(np.stack([priors[r.image_sha256] for r in train])), targets,
                      warmup, cfg.train.prior_warmup_lr)
        head_state = head.state_dict()
    apply_lora(model, cfg.model.lora)
    objective = TrainingObjective(model, weight, head_state=head_state)  # weight 0: no head
    optimizer = torch.optim.AdamW(parameter_groups(objective, cfg.train))
    scheduler = make_scheduler(optimizer, steps, cfg.train)
    params = [p for p in objective.parameters() if p.requires_grad]
    images = {r.uid: read_image_file(Path(r.image_path()), 10**9)[0] for r in train}
    batch_size = cfg.train.micro_batch * cfg.train.num_workers  # the recipe's global batch
    order = np.random.default_rng(cfg.train.seed).permutation(np.tile(np.arange(len(train)), 1 + steps * batch_size // len(train)))
    curve, started = [], time.perf_counter()
    for step in range(1, steps + 1):
        picked = order[(step - 1) * batch_size: step * batch_size]
        chunk = [train[i] for i in picked]
        batch = processor.training_batch([r.question for r in chunk], [r.answer for r in chunk],
                                         [images[r.uid] for r in chunk], np.stack([priors[r.image_sha256] for r in chunk]),
                                         cfg.train.max_length)
        if code_weight != 1.0:  # as the recipe's data pipeline builds them, padded like the labels
            batch["loss_weights"] = torch.zeros(batch["labels"].shape)
            for i, r in enumerate(chunk):
                answer = au_code_weights(processor, r.answer, code_weight)
                length = int(batch["attention_mask"][i].sum())
                batch["loss_weights"][i, length - len(answer): length] = torch.tensor(answer[: length])
        objective.train()
        extra = {"au_targets": targets[picked], "au_mask": torch.ones(len(chunk), dtype=torch.long)} if weight else {}
        loss = objective(**extra, **batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % every == 0 or step == steps:
            model.eval()
            predictions = predict_rows(model, processor, test, priors, cfg.evaluate.generation, batch_size=64)
            result = rege("au", [p["prediction"] for p in predictions], [p["reference"] for p in predictions],
                          [p["label"] for p in predictions], dataset=cfg.evaluate.dataset, extras=False)
            curve.append({"step": step, "S_re": round(result.S_re, 1),
                          "per_au_f1": {str(k): round(v) for k, v in result.per_au_f1.items()},
                          "train_seconds": round(time.perf_counter() - started, 1)})
            print(f"head {weight}, code weight {code_weight}, warm-up {warmup}: step {step} loss {loss.item():.3f} AU macro F1 {result.S_re:.1f} "
                  f"per AU {curve[-1]['per_au_f1']}", flush=True)
    return {"weight": weight, "code_weight": code_weight, "warmup_steps": warmup, "curve": curve}


def main() -> None:
    from emola.config import load_config
    from emola.data.manifest import read_manifest
    from emola.faces.cache import LandmarkCache
    from emola.faces.pipeline import prior_vectors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--every", type=int, default=150)
    parser.add_argument("--weight", type=float, default=1.0, help="prior_aux_weight of the second variant")
    parser.add_argument("--code-weight", type=float, default=None, help="au_code_weight of the next variant")
    parser.add_argument("--warmup-steps", type=int, default=None, help="prior_warmup_steps of the last variant")
    parser.add_argument("--skip-plain", action="store_true", help="leave out the language-model-loss-only variant")
    parser.add_argument("--seed", type=int, default=None, help="train.seed (initial model and data order)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prior_aux.json"))
    args = parser.parse_args()

    cfg = load_config(args.params, [f"train.seed={args.seed}"] if args.seed is not None else [])
    manifests, cache = Path(cfg.data.manifests), Path(cfg.landmarks.cache)
    (backend_key,) = sorted(set(LandmarkCache(cache).read().column("backend").to_pylist()))
    rows = {split: [r for r in read_manifest(manifests / f"{split}.jsonl") if r.task == "au"] for split in ("train", "test")}
    priors = prior_vectors(cache, backend_key, {r.image_sha256 for rs in rows.values() for r in rs})
    rows = {split: [r for r in rs if r.image_sha256 in priors] for split, rs in rows.items()}
    print(f"AU task: {len(rows['train'])} train, {len(rows['test'])} test samples; {args.steps} steps per variant")
    variants = [] if args.skip_plain else [(0.0, 1.0, 0)]
    variants.append((args.weight, 1.0, 0))
    if args.code_weight is not None:
        variants.append((args.weight, args.code_weight, 0))
    if args.warmup_steps is not None:
        variants.append((args.weight, variants[-1][1], args.warmup_steps))
    results = [run(*variant, args.steps, args.every, cfg, rows, priors, backend_key) for variant in variants]
    names = [f"head {r['weight']} code {r['code_weight']} warm-up {r['warmup_steps']}" for r in results]
    print("\nAU macro F1\nstep  " + "  ".join(names))
    for points in zip(*(r["curve"] for r in results)):
        print(f"{points[0]['step']:4d}  " + "  ".join(f"{p['S_re']:{len(n)}.1f}" for p, n in zip(points, names)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "seed": cfg.train.seed, "variants": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
