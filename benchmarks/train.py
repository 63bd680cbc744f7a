"""Training throughput and memory: plain PyTorch loop vs Ray Train + DeepSpeed, ZeRO-2 vs ZeRO-3.

    python benchmarks/train.py [--steps 40]

Same tiny model, same examples (the default pipeline's manifests and landmark cache; run
``dvc repro`` first), same micro batch. Each variant runs in its own process so peak
memory is its own; samples/s excludes the first steps (warm-up, and for DeepSpeed its
one-time setup). The Ray path uses 2 workers on this machine's 2 cores, so its
samples/s is the whole group's, and memory is per worker (rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(steps: int, micro_batch: int) -> dict:
    """Single process, torch AdamW, the same model and batches as the recipe."""
    import numpy as np
    import torch

    from emola.config import load_config
    from emola.data.manifest import read_manifest
    from emola.faces.pipeline import prior_vectors
    from emola.imaging import read_image_file
    from emola.model.builder import build_emola
    from emola.model.lora import apply_lora
    from emola.train.examples import build_examples, length_grouped_order
    from emola.train.optimization import make_scheduler, parameter_groups

    cfg = load_config(ROOT / "params.yaml")
    rows = list(read_manifest(ROOT / cfg.data.manifests / "train.jsonl"))
    priors = prior_vectors(ROOT / cfg.landmarks.cache, "annotation@1-68", {r.image_sha256 for r in rows})
    examples = build_examples(rows, cfg.train.tasks, priors).rows
    model, processor, _ = build_emola(cfg.model, profile="tiny", landmark_backend="annotation@1-68",
                                      tasks=cfg.train.tasks, corpus=[r.answer for r in rows])
    apply_lora(model, cfg.model.lora)
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.train))
    scheduler = make_scheduler(optimizer, steps, cfg.train)
    lengths = [len(processor.example_ids(e["question"], e["answer"])[0]) for e in examples]
    order = length_grouped_order(lengths, micro_batch, cfg.train.seed)
    timed, samples = 0.0, 0
    for step in range(steps):
        started = time.perf_counter()
        chunk = [examples[i] for i in order[step * micro_batch:(step + 1) * micro_batch]]
        images = [read_image_file(Path(e["image"]), 10**9)[0] for e in chunk]
        batch = processor.training_batch([e["question"] for e in chunk], [e["answer"] for e in chunk], images,
                                         np.array([e["prior"] for e in chunk]), cfg.train.max_length)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step >= 2:
            timed += time.perf_counter() - started
            samples += len(chunk)
    return {"samples_per_s": samples / timed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_loss": float(loss)}


def ray_deepspeed(steps: int, zero: int) -> dict:
    from emola.config import load_config
    from emola.train.launcher import run_training

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        cfg = load_config(ROOT / "params.yaml", {"train.max_steps": steps, "train.zero_stage": zero,
                                                 "train.checkpoint_every": 10**6, "train.log_every": 10**6,
                                                 "train.storage_path": f"{tmp}/runs", "train.output": f"{tmp}/model"})
        outcome = run_training(cfg, repo_root=ROOT, log=lambda *_: None)[0]
    return {"samples_per_s": outcome.samples_per_s, "peak_rss_mb": outcome.peak_rss_mb, "final_loss": outcome.final_loss,
            "wall_s": outcome.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process: one variant, JSON on the last line
        os.chdir(ROOT)
        result = plain_loop(args.steps, 16) if args.variant == "plain" else ray_deepspeed(args.steps, int(args.variant[-1]))
        print(json.dumps(result))
        return
    results = {}
    for variant in ("plain", "zero2", "zero3"):
        out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--variant", variant],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant:6s}: {r['samples_per_s']:6.1f} samples/s   peak RSS {r['peak_rss_mb']:7.0f} MB   "
              f"final loss {r['final_loss']:.3f}" + (f"   wall {r['wall_s']:.0f} s" if "wall_s" in r else ""))
    p, z2, z3 = results["plain"], results["zero2"], results["zero3"]
    print(f"Ray+DeepSpeed ZeRO-2 / plain loop: throughput {z2['samples_per_s'] / p['samples_per_s']:.2f}x, "
          f"memory per worker {z2['peak_rss_mb'] / p['peak_rss_mb']:.2f}x")
    print(f"ZeRO-3 / ZeRO-2: throughput {z3['samples_per_s'] / z2['samples_per_s']:.2f}x, "
          f"memory per worker {z3['peak_rss_mb'] / z2['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
