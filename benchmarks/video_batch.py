"""The video job over a folder of videos: one process against Ray Data actor pools, on CPU.

    python benchmarks/video_batch.py [--clips 8] [--seconds 10] [--actors 1 2] [--landmarks detect] [--out FILE]

FABA-Synth clips (224 px, 10 s at 10 fps) are analysed by :func:`emola.video_batch.run_video_job`
with the pipeline's ``video`` params (every frame, smoothing, descriptions at key moments),
the faces found by the checkpoint's detector as in a user's recordings (``--landmarks auto``:
the clips' own landmarks, as the pipeline's video stage reads them):
first in this process with one torch thread, then on Ray Data with each actor count (one
CPU and one torch thread per actor). Ray is started before the clock starts; each run
includes loading the model (once per actor). Every run must give the same per-video
tables: the speed-up is only worth reporting if the answers are identical.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from harness import ROOT, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--checkpoint", default=str(ROOT / "models/emola"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--landmarks", choices=["detect", "auto"], default="detect")
    parser.add_argument("--out")
    args = parser.parse_args()

    import torch

    from emola.config import load_config
    from emola.runtime import init_ray
    from emola.synth.clips import generate_clips
    from emola.video_batch import readout_part, run_video_job

    if readout_part(args.checkpoint) is None:
        raise SystemExit(f"{args.checkpoint}: no model with a readout head (run `dvc repro`, or pass --checkpoint)")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="emola-video-batch-"))
    try:
        clips = generate_clips(work / "clips", args.clips, seed=23, size=args.size, fps=10.0, seconds=args.seconds)

        def cfg(name: str, actors: int = 1):
            return load_config(ROOT / "params.yaml", {
                "video.input": str(work / "clips"), "video.reports": str(work / name / "video"),
                "video.metrics": str(work / name / "metrics.json"), "video.actors": actors, "video.cpus_per_actor": 1.0,
                "video.landmarks": args.landmarks})

        init_ray()
        runs = {}
        for name, actors, use_ray in [("one_process", 1, False)] + [(f"ray_{n}_actors", n, True) for n in args.actors]:
            started = time.perf_counter()
            metrics = run_video_job(cfg(name, actors), args.checkpoint, use_ray=use_ray, log=lambda *_: None)
            seconds = time.perf_counter() - started
            runs[name] = {"actors": actors, "seconds": round(seconds, 2), "frames": metrics["frames"],
                          "frames_per_s": round(metrics["frames"] / seconds, 2), "status": metrics["status"],
                          "key_moments": metrics["key_moments"],
                          # the videos' own analysis times, summed: start-up (Ray, actors, models) is the rest
                          "analysis_seconds": round(metrics["frames"] / metrics["analysis_frames_per_s"], 2)}
        base = runs["one_process"]
        tables = sorted(p.name for p in (work / "one_process" / "video").glob("*.csv"))
        for name, run in runs.items():
            run["speedup"] = round(base["seconds"] / run["seconds"], 2)
            run["same_tables"] = all((work / name / "video" / t).read_bytes() == (work / "one_process" / "video" / t)
                                     .read_bytes() for t in tables)
            print(f"{name:16s} {run['frames']} frames in {run['seconds']:6.1f} s: {run['frames_per_s']:6.2f} frames/s, "
                  f"{run['speedup']:.2f}x one process (videos' own time {run['analysis_seconds']:.1f} s), "
                  f"same tables: {run['same_tables']}")
        write_results("video_batch", {"clips": len(clips), "clip": f"{args.size} px, {args.seconds:g} s at 10 fps",
                                      "landmarks": args.landmarks,
                                      "checkpoint": args.checkpoint, "runs": runs}, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
