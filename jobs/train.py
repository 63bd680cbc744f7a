"""Stage ``train``: LoRA fine-tuning with Ray Train + DeepSpeed, tracked in MLflow.

    python -m jobs.train [--params params.yaml] [train.max_steps=50 ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train

Runs on a local Ray instance, or on the cluster named by RAY_ADDRESS.
"""

from __future__ import annotations

import sys

from emola.preflight import JobInputError
from emola.train.launcher import run_training
from jobs.common import parse_job_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_job_args(__doc__.splitlines()[0], argv)
    try:
        outcomes = run_training(cfg)
    except JobInputError as err:
        print(f"train: error: {err}", file=sys.stderr)
        return 2
    for outcome in outcomes:
        print(f"train: {outcome.output} <- {outcome.run_name} ({outcome.steps} steps, "
              f"loss {outcome.final_loss:.4f}, {outcome.seconds:.0f} s, MLflow run {outcome.mlflow_run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
