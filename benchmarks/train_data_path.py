"""Where the training data is preprocessed: a Ray Data actor stage or each train worker.

    python benchmarks/train_data_path.py [--rows 4000] [--repeats 2]

The train stage's data path without the model: the default FABA-Synth examples streamed by
Ray Data, split between 2 consumers (as ``ray.train.get_dataset_shard`` splits them
between the 2 train workers, each holding 0.75 CPU), each reading micro batches of 8 as
model inputs. Two placements of the same ``Preprocess`` (tokenize, mask, load and
preprocess images) then ``collate``:

- ``actor stage`` (the recipe before commit e0c296b): ``map_batches(Preprocess)`` on one
  Ray Data actor; the workers receive tokens and pixel arrays through the object store.
- ``in worker`` (the recipe now): the workers receive the examples (text, image path,
  prior vector) and preprocess them in ``iter_torch_batches``' ``collate_fn``.

Variants alternate (``--repeats`` rounds) so machine noise hits both alike. Prints the
wall time to drain the stream and the machine's CPU seconds spent (every process: the
drivers, Ray's actors and daemons) per 1,000 rows; on 2 cores, CPU the data path spends
is CPU the training steps do not get. Needs the default pipeline's manifests and
landmark cache (run ``dvc repro`` first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine_cpu_seconds() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0)


def run_variant(name: str, stream: list[dict], processor_dir: str, cfg, pad_id: int) -> dict:
    import ray

    from emola.train.examples import Preprocess, collate

    kwargs = {"max_length": cfg.train.max_length, "aux_targets": cfg.train.prior_aux_weight > 0,
              "au_code_weight": cfg.train.au_code_weight}

    @ray.remote(num_cpus=0.75)
    class Worker:
        def drain(self, shard, in_worker: bool) -> int:
            import torch

            torch.set_num_threads(1)
            preprocess = Preprocess(processor_dir, **kwargs) if in_worker else None
            fn = (lambda b: collate(preprocess(b), pad_id)) if in_worker else (lambda b: collate(b, pad_id))
            rows = 0
            for batch in shard.iter_torch_batches(batch_size=cfg.train.micro_batch, collate_fn=fn):
                rows += len(batch["input_ids"])
            return rows

    in_worker = name == "in worker"
    dataset = ray.data.from_items(stream, override_num_blocks=max(2, min(len(stream) // 64, 64)))
    if not in_worker:
        dataset = dataset.map_batches(Preprocess, fn_constructor_kwargs={"processor_dir": processor_dir, **kwargs},
                                      batch_size=32, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25)
    workers = [Worker.remote() for _ in range(2)]
    ray.get([w.__ray_ready__.remote() for w in workers])
    cpu, started = machine_cpu_seconds(), time.perf_counter()
    shards = dataset.streaming_split(2, equal=True)
    rows = sum(ray.get([w.drain.remote(s, in_worker) for w, s in zip(workers, shards)]))
    wall, cpu = time.perf_counter() - started, machine_cpu_seconds() - cpu
    for w in workers:
        ray.kill(w)
    return {"rows": rows, "wall_s": wall, "cpu_s": cpu}


def main() -> None:
    import numpy as np

    from emola.config import load_config
    from emola.data.manifest import read_manifest
    from emola.faces.cache import LandmarkCache
    from emola.faces.pipeline import prior_vectors
    from emola.model.builder import build_emola
    from emola.runtime import init_ray
    from emola.train.examples import build_examples

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_data_path.json")
    args = parser.parse_args()

    cfg = load_config(ROOT / "params.yaml")
    cache = ROOT / cfg.landmarks.cache
    (backend_key,) = sorted(set(LandmarkCache(cache).read().column("backend").to_pylist()))
    rows = list(read_manifest(ROOT / cfg.data.manifests / "train.jsonl"))
    examples = build_examples(rows, cfg.train.tasks, prior_vectors(cache, backend_key, {r.image_sha256 for r in rows})).rows
    order = np.random.default_rng(cfg.train.seed).permutation(len(examples))
    stream = [examples[i] for i in np.resize(order, args.rows)]  # the shuffled examples, cycled to --rows
    _, processor, _ = build_emola(cfg.model, profile="tiny", landmark_backend=backend_key, tasks=cfg.train.tasks,
                                  corpus=[r.answer for r in rows] + [r.question for r in rows])
    init_ray()
    results: dict[str, list[dict]] = {"actor stage": [], "in worker": []}
    with tempfile.TemporaryDirectory() as processor_dir:
        processor.save(processor_dir)
        for _ in range(args.repeats):
            for name in results:
                results[name].append(run_variant(name, stream, processor_dir, cfg, processor.tokenizer.pad_token_id))
                r = results[name][-1]
                print(f"  {name:12s} {r['rows']} rows: {r['wall_s']:6.1f} s wall, {r['cpu_s']:6.1f} CPU s", flush=True)
    summary = {name: {"wall_s_per_1000_rows": statistics.median(r["wall_s"] * 1000 / r["rows"] for r in runs),
                      "cpu_s_per_1000_rows": statistics.median(r["cpu_s"] * 1000 / r["rows"] for r in runs)}
               for name, runs in results.items()}
    for name, s in summary.items():
        print(f"{name:12s}: {s['wall_s_per_1000_rows']:.1f} s wall and {s['cpu_s_per_1000_rows']:.1f} CPU s per 1,000 rows (median)")
    a, w = summary["actor stage"], summary["in worker"]
    print(f"in worker / actor stage: {a['cpu_s_per_1000_rows'] / w['cpu_s_per_1000_rows']:.2f}x less CPU, "
          f"{a['wall_s_per_1000_rows'] / w['wall_s_per_1000_rows']:.2f}x faster to drain")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": args.rows, "runs": results, "median": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
