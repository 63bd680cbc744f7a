"""Stage ``evaluate``: REGE of the trained model on the test manifests, reports, MLflow, registry.

    python -m jobs.evaluate [--params params.yaml] [--checkpoint models/emola] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emola.config import ParamsError, load_config
from emola.evaluate.job import check_baseline_name, run_evaluation
from emola.preflight import JobInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", help="default: train.output")
    parser.add_argument("--baseline", action="append", default=[], metavar="NAME=DIR",
                        help="also score this checkpoint (reported in baselines.json)")
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_intermixed_args(argv)   # options and KEY=VALUE overrides in any order
    try:
        cfg = load_config(args.params, args.overrides)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    baselines = {}
    for spec in args.baseline:
        name, _, folder = spec.partition("=")
        if not name or not folder:
            parser.error(f"--baseline {spec!r}: expected NAME=DIR")
        try:
            check_baseline_name(name)
        except ValueError as err:
            parser.error(f"--baseline {spec!r}: {err}")
        baselines[name] = folder
    try:
        summary = run_evaluation(cfg, checkpoint=args.checkpoint, baselines={k: Path(v) for k, v in baselines.items()},
                                 register=not args.no_register)
    except JobInputError as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    print(f"evaluate: reports in {cfg.evaluate.reports}/ (metrics.json, baselines.json, details.json, plots/), "
          f"MLflow run {summary['eval_run_id']}, {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
