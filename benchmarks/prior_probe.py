"""How much AU information the trained prior token holds, against what the descriptions say.

    python benchmarks/prior_probe.py [--checkpoint models/emola] [--steps 500] [--seed 0]

Fits a linear probe (multi-label logistic regression, full-batch AdamW) to the prior
tokens the checkpoint's prior projector makes of the AU-task training faces, and scores it
on the AU-task test faces with REGE's AU rule (macro F1 over the data set's scored AUs).
Beside it, the decoder's own per-AU F1 from the evaluate stage (``reports/details.json``,
the same checkpoint after ``dvc repro``). Reading it: a probe far above the decoder means
the AU information reaches the language model and the decoder does not read it out; a
probe near the decoder means the prior projector is the limit. Needs the default
pipeline's manifests, landmark cache and model (run ``dvc repro`` first).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def prior_tokens(model, rows, priors):
    """``(N, hidden)`` prior tokens and ``(N, len(AUX_AUS))`` targets of the AU-task ``rows``."""
    import torch

    from emola.train.objective import au_targets

    vectors = torch.tensor(np.stack([priors[r.image_sha256] for r in rows]), dtype=torch.float32)
    with torch.no_grad():
        tokens = model.prior_projector(vectors)
    return tokens, torch.tensor([au_targets(r) for r in rows])


def fit_probe(tokens, targets, steps: int, seed: int):
    """A linear head on standardized tokens; returns ``predict(tokens) -> (N, len(AUX_AUS)) bool``."""
    import torch

    torch.manual_seed(seed)
    mean, std = tokens.mean(0), tokens.std(0) + 1e-6
    head = torch.nn.Linear(tokens.shape[1], targets.shape[1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head((tokens - mean) / std), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def predict(x):
        with torch.no_grad():
            return (head((x - mean) / std) > 0).numpy()

    return predict


def main() -> None:
    from emola.config import load_config
    from emola.data.manifest import read_manifest
    from emola.evaluate.predict import prediction_record
    from emola.faces.pipeline import prior_vectors
    from emola.metrics.rege import rege
    from emola.model.checkpoint import load_checkpoint
    from emola.model.configuration import EmolaModelConfig
    from emola.train.objective import AUX_AUS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "models/emola")
    parser.add_argument("--steps", type=int, default=500, help="full-batch steps fitting the probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--details", type=Path, default=ROOT / "reports/details.json")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/prior_probe.json")
    args = parser.parse_args()

    cfg = load_config(ROOT / "params.yaml")
    model_cfg = EmolaModelConfig.load(args.checkpoint)
    if model_cfg.prior != "landmarks":
        raise SystemExit(f"{args.checkpoint}: the model has no prior token (model.prior: {model_cfg.prior})")
    model, _, _ = load_checkpoint(args.checkpoint)
    rows = {split: [r for r in read_manifest(ROOT / cfg.data.manifests / f"{split}.jsonl") if r.task == "au"]
            for split in ("train", "test")}
    priors = prior_vectors(ROOT / cfg.landmarks.cache, model_cfg.landmark_backend,
                           {r.image_sha256 for rs in rows.values() for r in rs})
    rows = {split: [r for r in rs if r.image_sha256 in priors] for split, rs in rows.items()}
    predict = fit_probe(*prior_tokens(model, rows["train"], priors), args.steps, args.seed)
    test_tokens, _ = prior_tokens(model, rows["test"], priors)
    texts = [", ".join(f"AU{au}" for au, on in zip(AUX_AUS, active) if on) for active in predict(test_tokens)]
    records = [prediction_record(r, text) for r, text in zip(rows["test"], texts)]  # the evaluate stage's labels
    probe = rege("au", [p["prediction"] for p in records], [p["reference"] for p in records],
                 [p["label"] for p in records], dataset=cfg.evaluate.dataset, extras=False)
    decoder = json.loads(args.details.read_text())["au"] if args.details.is_file() else None

    print(f"{len(rows['train'])} train / {len(rows['test'])} test AU faces, checkpoint {args.checkpoint}")
    print(f"{'AU':>4} {'probe F1':>9} {'decoder F1':>11}")
    for au, f1 in probe.per_au_f1.items():
        said = f"{decoder['per_au_f1'][str(au)]:.1f}" if decoder else "-"
        print(f"{au:>4} {f1:9.1f} {said:>11}")
    print(f"macro {probe.S_re:9.1f} {decoder['S_re'] if decoder else float('nan'):11.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "checkpoint": str(args.checkpoint.relative_to(ROOT) if args.checkpoint.is_relative_to(ROOT) else args.checkpoint),
        "probe_macro_f1": round(probe.S_re, 1), "probe_per_au_f1": {str(k): round(v, 1) for k, v in probe.per_au_f1.items()},
        "decoder_macro_f1": round(decoder["S_re"], 1) if decoder else None,
        "decoder_per_au_f1": {k: round(v, 1) for k, v in decoder["per_au_f1"].items()} if decoder else None,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
