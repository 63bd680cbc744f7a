"""Training throughput on the CPU ``tiny`` profile: the step's levers, and Ray Train + DeepSpeed against the plain step.

    python benchmarks/train.py [--steps 40] [--out benchmarks/results/train.json]

Every variant trains the same model on the same micro batches: the default pipeline's
training stream (run ``dvc repro`` first), preprocessed by the recipe's ``Preprocess`` and
``collate``, through :class:`emola.train.step.TrainStep`. Each runs in its own process, so
peak memory is its own, and samples/s excludes the first 3 steps.

- levers, one process: packing, sparse logits, fused AdamW and ``torch.compile``, each
  switched against the ``tiny`` profile's setting;
- engines, like for like: the plain loop and DeepSpeed (ZeRO-2) in one process, on the
  same batches; and the whole path, Ray Train with the profile's workers, which is what
  ``dvc repro`` runs (its samples/s is the whole group's).
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

from harness import ROOT, training_inputs, write_results


def micro_batches(cfg, steps: int, init_dir: Path, pack: bool) -> list:
    """The first ``steps`` micro batches of the training stream, as the recipe's workers build them."""
    import numpy as np

    from emola.train.examples import Preprocess, build_examples, collate, training_stream

    t = cfg.train
    rows, _, priors = training_inputs(cfg)
    examples = build_examples(rows, t.tasks, priors).rows
    stream, _ = training_stream(examples, t.task_weights, lambda e: 0, t.micro_batch, t.seed, 1, group_by_length=False)
    preprocess = Preprocess(str(init_dir), t.max_length, aux_targets=t.prior_aux_weight > 0,
                            au_code_weight=t.au_code_weight)
    pad = preprocess.processor.tokenizer.pad_token_id
    batches = []
    for i in range(steps):
        chunk = stream[i * t.micro_batch:(i + 1) * t.micro_batch]
        columns = {k: [e[k] for e in chunk] for k in chunk[0]}
        arrays = {k: np.array(v + [None], dtype=object)[:-1] if k in ("question", "answer", "image", "task")
                  else np.array(v, dtype=np.float32) for k, v in columns.items() if k != "uid"}
        batches.append(collate(preprocess(arrays), pad, t.max_length if pack else None))
    return batches


def one_process(overrides: dict, steps: int, engine: str) -> dict:
    import torch

    from emola.config import load_config
    from emola.data.manifest import read_manifest
    from emola.model.builder import build_emola
    from emola.model.checkpoint import save_checkpoint
    from emola.model.lora import apply_lora
    from emola.train.step import TrainStep, init_single_process_group

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(ROOT / "params.yaml", {f"train.{k}": v for k, v in overrides.items()})
    rows = list(read_manifest(ROOT / cfg.data.manifests / "train.jsonl"))
    with tempfile.TemporaryDirectory() as tmp:
        model, processor, model_cfg = build_emola(cfg.model, profile=cfg.profile, landmark_backend="annotation@1-68",
                                                  tasks=list(cfg.train.tasks),
                                                  corpus=[r.answer for r in rows] + [r.question for r in rows])
        save_checkpoint(model, processor, model_cfg, Path(tmp) / "init")
        batches = micro_batches(cfg, steps, Path(tmp) / "init", cfg.train.packing)
    if engine == "deepspeed":
        init_single_process_group("gloo")
    torch.manual_seed(cfg.train.seed)
    step = TrainStep(apply_lora(model, cfg.model.lora), cfg.train, total_steps=steps, engine=engine)
    timed, samples, losses = 0.0, 0, []
    for i, batch in enumerate(batches):
        started = time.perf_counter()
        out = step(batch)
        if i >= 3:
            timed += time.perf_counter() - started
            samples += int(batch["num_samples"])
        losses.append(out.loss)
    padded = sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["num_tokens"]) for b in batches)
    return {"samples_per_s": samples / timed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_loss": sum(losses[-5:]) / 5, "padding_share": round(1 - real / padded, 3)}


def ray_deepspeed(steps: int) -> dict:
    from emola.config import load_config
    from emola.train.launcher import run_training

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        cfg = load_config(ROOT / "params.yaml", {"train.max_steps": steps, "train.checkpoint_every": 10**6,
                                                 "train.log_every": 10**6, "train.storage_path": f"{tmp}/runs",
                                                 "train.output": f"{tmp}/model"})
        outcome = run_training(cfg, repo_root=ROOT, log=lambda *_: None)[0]
    return {"samples_per_s": outcome.samples_per_s, "peak_rss_mb": outcome.peak_rss_mb, "final_loss": outcome.final_loss,
            "wall_s": outcome.seconds}


def variants() -> list[tuple[str, dict, str]]:
    """(name, train overrides, engine); the first is the profile as it is."""
    from emola.config import load_config

    t = load_config(ROOT / "params.yaml").train
    flip = lambda key: {key: not getattr(t, key)}  # noqa: E731
    return [("profile", {}, "plain"), (f"packing {not t.packing}", flip("packing"), "plain"),
            (f"sparse_logits {not t.sparse_logits}", flip("sparse_logits"), "plain"),
            (f"fused_adam {not t.fused_adam}", flip("fused_adam"), "plain"),
            (f"compile {not t.compile}", flip("compile"), "plain"),
            ("deepspeed, one process", {}, "deepspeed"), ("ray + deepspeed", {}, "ray")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/train.json"))
    parser.add_argument("--variant", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    plan = variants()
    if args.variant is not None:  # child process: one variant, JSON on the last line
        name, overrides, engine = plan[args.variant]
        result = ray_deepspeed(args.steps) if engine == "ray" else one_process(overrides, args.steps, engine)
        print(json.dumps(result))
        return
    results = {}
    for index, (name, overrides, engine) in enumerate(plan):
        out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--variant", str(index)],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        r = results[name] = {"engine": engine, "overrides": overrides, **json.loads(out.stdout.strip().splitlines()[-1])}
        print(f"{name:24s} {r['samples_per_s']:6.1f} samples/s   peak RSS {r['peak_rss_mb']:6.0f} MB   "
              f"loss {r['final_loss']:.3f}" + (f"   padding {100 * r['padding_share']:.0f}%" if "padding_share" in r
                                              else "") + (f"   wall {r['wall_s']:.0f} s" if "wall_s" in r else ""),
              flush=True)
    base = results["profile"]["samples_per_s"]
    for name, r in results.items():
        print(f"{name:24s} x{r['samples_per_s'] / base:.2f} of the profile's plain step")
    write_results("train", {"steps": args.steps, "variants": results}, args.out)


if __name__ == "__main__":
    main()
