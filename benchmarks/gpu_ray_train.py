"""Ray Train on one GPU at the ``emola-7b`` shape: the training job's Ray Train step, a checkpoint, a kill, a resume.

    python benchmarks/gpu_ray_train.py [--steps 20] [--dry-run] [--out FILE]

Runs :func:`emola.train.launcher.fit` (what ``python -m jobs.train`` runs after its inputs are
read: a Ray Data stream, ``TorchTrainer`` with one worker, :mod:`emola.train.recipe` and the
DeepSpeed ZeRO-2 engine of :class:`emola.train.step.TrainStep`) with the ``emola-7b`` profile's
``train`` section, on a model of the ``emola-7b`` architecture with random bf16 weights (no
download: a byte-level tokenizer trained on the examples' texts stands in for LLaVA's) and 64
synthetic examples. A watcher kills the Ray Train worker once Ray has registered the first
checkpoint (every 5 steps); Ray restarts the worker group, which resumes from that checkpoint
and finishes. Reports the seconds per step, where it resumed and the final step; writes one JSON.

``--dry-run`` runs the same on the CPU with the ``tiny`` profile (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

QUESTIONS = {"emotion": "What emotions are conveyed by this face?", "au": "What AUs are conveyed by this face?"}
WORDS = ("the", "face", "shows", "raised", "brows", "lip", "corner", "puller", "cheek", "happiness", "surprise",
         "inner", "outer", "upper", "lid", "jaw", "drop", "dimpler", "tightener", "AU12", "AU6", "AU1", "AU2")


def examples(folder: Path, n: int, prior_dim: int, size: int, seed: int = 0) -> list[dict]:
    """``n`` training examples as the launcher builds them: a random face-sized image on disk, a question, an
    answer of mixed length, a prior vector and the head's targets."""
    from emola.train.objective import AUX_AUS

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(path, quality=90)
        task = ("emotion", "au")[i % 2]
        answer = " ".join(rng.choice(WORDS, int(rng.integers(20, 60) if task == "emotion" else rng.integers(80, 160))))
        out.append({"uid": f"synthetic-{i}", "image": str(path), "question": QUESTIONS[task], "answer": answer,
                    "task": task, "prior": rng.normal(size=prior_dim).astype(np.float32).tolist(),
                    "au_targets": [0.0] * len(AUX_AUS), "emotion_target": -1})
    return out


def initial_model(cfg, rows: list[dict], init_dir: Path, gpu: bool) -> None:
    """The run's initial checkpoint: the tiny profile as the launcher builds it, or (GPU) the ``emola-7b``
    architecture with random bf16 weights built on the GPU, its processor's tokenizer trained on the texts."""
    import torch

    from emola.model.builder import build_emola, build_random, llava_1_5_7b_config
    from emola.model.checkpoint import save_checkpoint
    from emola.model.configuration import EmolaModelConfig
    from emola.model.processing import EmolaProcessor, make_image_processor
    from emola.model.templates import IMAGE, PRIOR
    from emola.model.tokenizer import train_tiny_tokenizer

    corpus = [r["answer"] for r in rows] + [r["question"] for r in rows]
    m = cfg.model
    if not gpu:
        model, processor, model_cfg = build_emola(m, profile=cfg.profile, landmark_backend="synthetic@1",
                                                  tasks=["emotion", "au"], corpus=corpus)
    else:
        tokenizer = train_tiny_tokenizer(corpus, 1024)
        llava = llava_1_5_7b_config()
        llava.image_token_index = tokenizer.convert_tokens_to_ids(IMAGE)
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            setattr(llava.text_config, key, getattr(tokenizer, key))
        model = build_random(llava, m.prior_dim, dtype=torch.bfloat16, device="cuda",
                             prior_token_id=tokenizer.convert_tokens_to_ids(PRIOR))
        processor = EmolaProcessor(tokenizer, make_image_processor(m.image_size), m.template, 576, use_image=True,
                                   use_prior=True)
        model_cfg = EmolaModelConfig(profile=cfg.profile, base=None, vision="clip", prior="landmarks",
                                     prior_dim=m.prior_dim, landmark_backend="synthetic@1", template=m.template,
                                     image_size=m.image_size, num_image_tokens=576, lora=m.lora.model_dump(),
                                     tasks=["emotion", "au"])
    save_checkpoint(model, processor, model_cfg, init_dir)
    del model


def kill_after_first_checkpoint(storage: Path, done: threading.Event, killed: list) -> None:
    """Kill the Ray Train worker once Ray has registered a checkpoint of the run (its own record, not the
    folder, which exists before registration)."""
    import psutil

    while not done.is_set():
        for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
            try:
                registered = json.loads(snapshot.read_text())["checkpoint_results"]
            except (ValueError, KeyError, OSError):
                continue
            if registered:
                for proc in psutil.process_iter(["cmdline"]):
                    try:
                        if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
                            proc.kill()
                            killed.append(proc.pid)
                            return
                    except psutil.NoSuchProcess:
                        continue
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (a checkpoint every 5)")
    parser.add_argument("--dry-run", action="store_true", help="the tiny profile on the CPU")
    parser.add_argument("--work", default="/tmp/emola-gpu-ray-train", help="run folder (images, checkpoints)")
    parser.add_argument("--out", help="the result's JSON (default: WORK/result.json)")
    args = parser.parse_args()

    import shutil

    from emola.config import load_config
    from emola.train.launcher import fit, plan_stream
    from emola.train.recipe import STEPS_LOG

    gpu = not args.dry_run
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    storage = work / "runs"
    overrides = {"profile": "emola-7b" if gpu else "tiny", "train.num_workers": 1, "train.use_gpu": gpu,
                 "train.max_steps": args.steps, "train.checkpoint_every": 5, "train.max_failures": 1,
                 "train.separate_models": False, "train.log_every": 5, "train.storage_path": str(storage),
                 "model.prior_dim": 136, "model.prior_standardize": False}
    if gpu:
        overrides.update({"train.micro_batch": 8, "train.grad_accum": 1})
    else:
        overrides.update({"train.micro_batch": 4})
    cfg = load_config(ROOT / "params.yaml", overrides)
    t = cfg.train
    rows = examples(work / "images", 64, cfg.model.prior_dim, cfg.model.image_size)
    name = "gpu-ray-train"
    init_dir = storage / name / "init"
    started = time.perf_counter()
    initial_model(cfg, rows, init_dir, gpu)
    built = time.perf_counter() - started
    plan = plan_stream(rows, init_dir, t)
    print(f"# Ray Train, {'1 GPU' if gpu else 'CPU (dry run)'}: {cfg.profile} profile, ZeRO-{t.zero_stage}, "
          f"micro batch {t.micro_batch}, {plan.total_steps} steps; initial model written in {built:.0f} s", flush=True)
    done, killed = threading.Event(), []
    watcher = threading.Thread(target=kill_after_first_checkpoint, args=(storage, done, killed), daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        result = fit(cfg, name, storage, plan, init_dir, uri="", run_id="")
    finally:
        done.set()
    seconds = time.perf_counter() - started
    with result.checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / "train_state.json").read_text())
    log = (storage / name / STEPS_LOG).read_text()
    resumed = [int(line.split("resumed from step ")[1].split()[0]) for line in log.splitlines()
               if "resumed from step " in line]
    out = {"date": time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime()), "dry_run": not gpu, "profile": cfg.profile,
           "zero_stage": t.zero_stage, "micro_batch": t.micro_batch, "steps_planned": plan.total_steps,
           "final_step": state["step"], "finished": state.get("finished", False), "final_loss": state.get("loss"),
           "worker_killed": bool(killed), "resumed_from_step": resumed, "seconds": round(seconds, 1),
           "initial_model_s": round(built, 1), "samples_per_s": result.metrics.get("samples_per_s")}
    path = Path(args.out) if args.out else work / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"killed a worker: {out['worker_killed']}; resumed from step {resumed}; finished at step "
          f"{out['final_step']} of {plan.total_steps} ({'finished' if out['finished'] else 'NOT finished'}) in "
          f"{seconds:.0f} s; {out['samples_per_s']} samples/s; wrote {path}", flush=True)
    ok = out["finished"] and out["final_step"] == plan.total_steps and killed and resumed
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
