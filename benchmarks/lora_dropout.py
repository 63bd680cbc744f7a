"""What LoRA dropout costs per training step on CPU: the tiny profile with and without it.

    python benchmarks/lora_dropout.py [--steps 20] [--dropout 0.05]

Both variants are the same tiny model (same initial weights) with the same LoRA settings
except ``model.lora.dropout``, trained on the same FABA-Synth micro batches, built as the
recipe builds them (``Preprocess`` then ``collate``: AU-code weights and AU-head targets
included; one thread, as each Ray Train worker has). Steps
alternate between the variants so machine noise hits both alike; the first 3 of each are
not timed. Prints the median seconds per step and the ratio. Needs the default pipeline's
manifests and landmark cache (run ``dvc repro`` first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build(cfg, dropout: float, rows, backend_key: str):
    import torch

    from emola.model.builder import build_emola
    from emola.model.lora import apply_lora
    from emola.train.objective import TrainingObjective
    from emola.train.optimization import parameter_groups

    torch.manual_seed(cfg.train.seed)
    model, processor, _ = build_emola(cfg.model, profile="tiny", landmark_backend=backend_key, tasks=cfg.train.tasks,
                                      corpus=[r.answer for r in rows] + [r.question for r in rows])
    apply_lora(model, cfg.model.lora.model_copy(update={"dropout": dropout}))
    objective = TrainingObjective(model, cfg.train.prior_aux_weight)
    objective.train()
    return objective, processor, torch.optim.AdamW(parameter_groups(objective, cfg.train))


def main() -> None:
    import torch

    from emola.config import load_config
    from emola.data.manifest import read_manifest
    from emola.faces.cache import LandmarkCache
    from emola.faces.pipeline import prior_vectors
    from emola.train.examples import Preprocess, build_examples, collate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dropout", type=float, default=0.05, help="the variant with dropout")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/lora_dropout.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    cfg = load_config(ROOT / "params.yaml")
    cache = ROOT / cfg.landmarks.cache
    (backend_key,) = sorted(set(LandmarkCache(cache).read().column("backend").to_pylist()))
    rows = list(read_manifest(ROOT / cfg.data.manifests / "train.jsonl"))
    priors = prior_vectors(cache, backend_key, {r.image_sha256 for r in rows})
    examples = build_examples(rows, cfg.train.tasks, priors).rows
    order = np.random.default_rng(cfg.train.seed).permutation(len(examples))
    variants = {f"dropout {d}": build(cfg, d, rows, backend_key) for d in (args.dropout, 0.0)}
    processor = next(iter(variants.values()))[1]
    with tempfile.TemporaryDirectory() as processor_dir:  # the recipe's data path: Preprocess, then collate
        processor.save(processor_dir)
        preprocess = Preprocess(processor_dir, cfg.train.max_length, aux_targets=cfg.train.prior_aux_weight > 0,
                                au_code_weight=cfg.train.au_code_weight)
    micro = cfg.train.micro_batch
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step in range(args.steps):
        chunk = [examples[i] for i in order[step * micro:(step + 1) * micro]]
        batch = collate(preprocess({key: [e[key] for e in chunk] for key in chunk[0]}), processor.tokenizer.pad_token_id)
        for name, (objective, _, optimizer) in variants.items():
            started = time.perf_counter()
            objective(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step >= 3:
                times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(t) for name, t in times.items()}
    with_dropout, without = medians.values()
    print(f"micro batch {micro}, {len(next(iter(times.values())))} timed steps each, one thread")
    for name, seconds in medians.items():
        print(f"  {name}: {seconds:.3f} s per step (median)")
    print(f"  without dropout: {with_dropout / without:.2f}x the steps per second")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"micro_batch": micro, "median_s": medians, "speedup": with_dropout / without},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
