"""What every job entry point shares: ``--params FILE`` plus ``KEY=VALUE`` overrides."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from emola.config import EmolaConfig, ParamsError, load_config


def parse_job_args(description: str, argv: Sequence[str] | None = None) -> EmolaConfig:
    """Parse a job's command line into the resolved configuration; exit 2 on bad params."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.synth.train=500")
    args = parser.parse_intermixed_args(argv)   # options and KEY=VALUE overrides in any order
    try:
        return load_config(args.params, args.overrides)
    except ParamsError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
