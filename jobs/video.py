"""Stage ``video``: per-frame AU and emotion probabilities of every video in ``video.input``, on Ray Data.

    python -m jobs.video [--params params.yaml] [--checkpoint models/emola] [video.input=DIR ...]

Writes one CSV per video, ``files.jsonl`` and a timeline to ``video.reports``, and the
readout head's scores on labelled clips to ``video.metrics``. Runs on a local Ray
instance, or on the cluster named by RAY_ADDRESS (``ray job submit``).
"""

from __future__ import annotations

import argparse
import sys

from emola.config import ParamsError, load_config
from emola.video_batch import run_video_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", help="default: train.output")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.params, args.overrides)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    checkpoint = args.checkpoint or cfg.train.output
    try:
        metrics = run_video_job(cfg, checkpoint)
    except (FileNotFoundError, ValueError) as err:
        print(f"video: error: {err}", file=sys.stderr)
        return 2
    head = metrics.get("head", {})
    if head.get("clips"):
        for where in ("apex", "frames"):
            raw, smoothed = head[where]["raw"], head[where]["smoothed"]
            print(f"video: readout head on {head['clips']} labelled clips, {where}: emotion accuracy "
                  f"{raw['emotion_accuracy']} raw / {smoothed['emotion_accuracy']} smoothed, AU macro F1 "
                  f"{raw['au_macro_f1']} / {smoothed['au_macro_f1']}")
    print(f"video: metrics in {cfg.video.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
