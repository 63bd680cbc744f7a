"""Serving before and after a change, side by side: ``benchmarks/serve.py`` on two source trees, alternating.

    python benchmarks/serve_ab.py --before 340860f [--pairs 2] [--images cached photos]

The ``before`` commit is checked out into a temporary git worktree; this tree's
``benchmarks/serve.py`` (the same measurement code for both) runs once per tree and image set
in each pair, alternating before and after so that the machine's drift falls on both. Each
run serves the same checkpoint and landmark cache (``models/emola``, ``data/landmarks``) with
batching on, one model replica, at ``--clients`` concurrent clients; the tree's own ``emola``
and ``serve`` are imported first (``PYTHONPATH``). Writes every run and the after/before
ratios of throughput and p50/p99 latency to ``benchmarks/results/serve_ab.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import write_results  # noqa: E402


def run(tree: Path, images: str, clients: list[int], out: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{tree / 'platform'}{os.pathsep}{tree}")
    command = [sys.executable, str(tree / "benchmarks/serve.py"), "--no-autoscaling", "--batching", "on",
               "--images", images, "--clients", *map(str, clients), "--checkpoint", str(ROOT / args.checkpoint),
               "--landmarks", str(ROOT / args.landmarks), "--manifest", str(ROOT / args.manifest),
               "--requests-per-client", str(args.requests_per_client), "--out", str(out)]
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["batching"]["batching_on"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit to compare against")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--images", nargs="+", default=["cached", "photos"], choices=["cached", "photos"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=6)
    parser.add_argument("--checkpoint", default="models/emola")
    parser.add_argument("--landmarks", default="data/landmarks")
    parser.add_argument("--manifest", default="data/manifests/test.jsonl")
    parser.add_argument("--out", default="benchmarks/results/serve_ab.json")
    args = parser.parse_args()
    after_commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as work:
        before = Path(work) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for name in ("serve.py", "harness.py"):   # one measurement code for both trees
                shutil.copy(ROOT / "benchmarks" / name, before / "benchmarks" / name)
            runs: dict[str, dict[str, list]] = {images: {"before": [], "after": []} for images in args.images}
            for pair in range(args.pairs):
                for images in args.images:
                    for label, tree in (("before", before), ("after", ROOT)):
                        rows = run(tree, images, args.clients, Path(work) / f"{label}.json", args)
                        runs[images][label].append(rows)
                        print(f"pair {pair + 1} {images:6s} {label:6s} " + "  ".join(
                            f"{r['clients']:2d} clients {r['throughput_rps']:6.2f} req/s p99 {r['p99_ms']:6.0f} ms "
                            f"errors {r['errors']}" for r in rows), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
    ratios = {}
    for images, by_tree in runs.items():
        ratios[images] = {}
        for i, clients in enumerate(args.clients):
            mean = {label: {key: float(np.mean([rows[i][key] for rows in by_tree[label]]))
                            for key in ("throughput_rps", "p50_ms", "p99_ms")} for label in by_tree}
            ratios[images][str(clients)] = {f"{key}_after_over_before": round(mean["after"][key] / mean["before"][key], 3)
                                            for key in mean["after"]}
            print(f"{images:6s} {clients:2d} clients: after/before throughput x"
                  f"{ratios[images][str(clients)]['throughput_rps_after_over_before']:.2f}, p99 x"
                  f"{ratios[images][str(clients)]['p99_ms_after_over_before']:.2f}")
    write_results("serve_ab", {"before": args.before, "after": after_commit, "pairs": args.pairs,
                               "clients": args.clients, "runs": runs, "ratios": ratios}, args.out)


if __name__ == "__main__":
    main()
