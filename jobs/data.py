"""Stage ``data``: synthesize FABA-Synth or import FABA-Instruct, then write the manifests.

    python -m jobs.data [--params params.yaml] [data.synth.train=500 ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from emola.data.stage import run_data_stage
from jobs.common import parse_job_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_job_args(__doc__.splitlines()[0], argv)
    run_data_stage(cfg.data)
    print(f"data: summary in {Path(cfg.data.manifests) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
