"""Evaluation generation: one Ray Data pass for every scored model against one pass per model.

    python benchmarks/evaluate_replicas.py [--repeats 2]

On the default pipeline's outputs (run ``dvc repro`` first): the trained model, its
prior-token ablation and the untrained initial model, the three models the evaluate stage
scores. Both ways generate the same batches (``emola.evaluate.replicas``) on an actor pool
of ``evaluate.replicas`` replicas in one local Ray instance; one pass per model starts a
pool, and Ray Data's pipeline, for each model. The two alternate ``--repeats`` times, so
drift in the machine's speed reaches both. Prints seconds per evaluation for each, the
ratio, and whether the predictions are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from emola.config import load_config
    from emola.data.manifest import read_manifest
    from emola.evaluate.job import variants_to_score
    from emola.evaluate.replicas import predict_variants
    from emola.model.reference import model_parts, training_info
    from emola.runtime import init_ray

    cfg = load_config(ROOT / "params.yaml")
    rows = list(read_manifest(Path(cfg.data.manifests) / "test.jsonl"))
    parts = model_parts(cfg.train.output)
    variants = variants_to_score(parts, {p.name: training_info(p) for p in parts}, cfg, None)
    print(f"{len(rows)} test rows; models: {', '.join(v.name for v in variants)}; "
          f"{cfg.evaluate.replicas} replicas, batch size {cfg.evaluate.batch_size}")
    init_ray()
    seconds: dict[str, list[float]] = {"a pass per model": [], "one pass": []}
    outputs = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        outputs["a pass per model"] = {v.name: predict_variants([v], cfg, rows)[v.name] for v in variants}
        seconds["a pass per model"].append(time.perf_counter() - start)
        start = time.perf_counter()
        outputs["one pass"] = predict_variants(variants, cfg, rows)
        seconds["one pass"].append(time.perf_counter() - start)
    for name, values in seconds.items():
        print(f"{name:>17}: {statistics.median(values):6.1f} s per evaluation (runs: "
              f"{', '.join(f'{v:.1f}' for v in values)})")
    ratio = statistics.median(seconds["a pass per model"]) / statistics.median(seconds["one pass"])
    print(f"one pass / a pass per model: {ratio:.2f}x faster; identical predictions: "
          f"{outputs['one pass'] == outputs['a pass per model']}")


if __name__ == "__main__":
    main()
