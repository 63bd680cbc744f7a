"""``emola``: the platform's command line. Command groups register themselves here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from emola import __version__
from emola.cli import (data_commands, k8s_commands, landmarks_commands, metrics_commands, model_commands,
                       params_commands, serve_commands)

COMMAND_GROUPS = (data_commands, landmarks_commands, metrics_commands, model_commands, params_commands, k8s_commands,
                  serve_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emola", description="EmoLA Platform: facial affective behaviour analysis.")
    parser.add_argument("--version", action="version", version=f"emola {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
