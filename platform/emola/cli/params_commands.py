"""``emola params``: show the resolved configuration, check every profile."""

from __future__ import annotations

import argparse
import sys

import yaml

from emola.config import ParamsError, load_config
from emola.config.loader import profile_names


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("params", help="inspect params.yaml").add_subparsers(dest="action", required=True)
    show = group.add_parser("show", help="print the resolved configuration")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    show.add_argument("--params", default="params.yaml")
    show.set_defaults(handler=_show)
    check = group.add_parser("check", help="validate every profile of the params file")
    check.add_argument("--params", default="params.yaml")
    check.set_defaults(handler=_check)


def _show(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.params, args.overrides)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    failed = 0
    for name in profile_names(args.params):
        try:
            load_config(args.params, {"profile": name})
            print(f"{name}: ok")
        except ParamsError as err:
            failed += 1
            print(err, file=sys.stderr)
    return 1 if failed else 0
