"""FABA-Synth generation and release validation throughput.

    python benchmarks/synth.py [--train 3600] [--test 300]     # -> benchmarks/results/synth.json

Renders the default-sized data set with 1 and with 2 worker processes in one run (same
seed, so the same images), prints seconds and images/s for each and the speed-up, then
times the validator over the four release files.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness import write_results

from emola.data.release import check_release_file
from emola.synth.dataset import DEFAULT_FILES, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3600)  # params.yaml data.synth.train
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--out", help="results file (default benchmarks/results/synth.json)")
    args = parser.parse_args()
    n = args.train + args.test
    with tempfile.TemporaryDirectory() as tmp:
        seconds = {}
        for workers in (1, 2):
            out = Path(tmp) / f"w{workers}"
            started = time.perf_counter()
            generate(out, train=args.train, test=args.test, seed=1, workers=workers)
            seconds[workers] = time.perf_counter() - started
            print(f"generate  workers={workers}: {seconds[workers]:6.1f} s  {n / seconds[workers]:6.1f} images/s")
        print(f"speed-up 2 workers / 1 worker: {seconds[1] / seconds[2]:.2f}x")
        started = time.perf_counter()
        records = sum(len(check_release_file(out / rel, out, split=s, task=t).good) for (t, s), rel in DEFAULT_FILES.items())
        validate = time.perf_counter() - started
        print(f"validate  {records} records ({n} images): {validate:.1f} s  {records / validate:.0f} records/s")
    write_results("synth", {"images": n, "generate_s": {f"workers_{w}": round(t, 2) for w, t in seconds.items()},
                            "speedup_2_workers": round(seconds[1] / seconds[2], 2), "validate_records": records,
                            "validate_s": round(validate, 2)}, args.out)


if __name__ == "__main__":
    main()
