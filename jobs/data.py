"""Stage ``data``: synthesize FABA-Synth or import FABA-Instruct, then write the manifests.

    python -m jobs.data [--params params.yaml] [data.synth.train=500 ...]
"""

from __future__ import annotations

import json
import sys

from emola.data.stage import run_data_stage
from jobs.common import parse_job_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_job_args(__doc__.splitlines()[0], argv)
    summary = run_data_stage(cfg.data)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
