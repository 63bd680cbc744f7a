"""``emola serve``: ``serve run`` with Serve's proxy capping request bodies as it reads them.

Serve's HTTP proxy buffers whole request bodies unless told otherwise; this command sets
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (:mod:`emola.http_guard`) and the cap from the
config's ``serve.max_body_bytes`` for the Ray it starts, then runs ``serve run`` in its place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve run a Serve config with the request body cap in Serve's proxy")
    serve.add_argument("config", nargs="?", default="serve/config.yaml", help="a Serve config (serve/config.yaml)")
    serve.add_argument("--print-env", action="store_true", help="print the environment it sets, and exit")
    serve.set_defaults(handler=_serve)


def guard_env(config: Path) -> dict[str, str]:
    """The variables that make Serve's proxy cap bodies at the config's ``serve.max_body_bytes``."""
    import yaml

    from emola import http_guard
    from emola.config import load_config

    app = yaml.safe_load(config.read_text())["applications"][0]
    args = app.get("args") or {}
    params = Path(args.get("params", "params.yaml"))
    if not params.is_absolute() and not params.is_file():
        params = config.resolve().parent.parent / params
    cap = load_config(params, list(args.get("overrides") or [])).serve.max_body_bytes
    return {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": http_guard.CALLBACK, http_guard.MAX_BODY_ENV: str(cap)}


def _serve(args: argparse.Namespace) -> int:
    config = Path(args.config)
    if not config.is_file():
        print(f"emola serve: {config}: no such Serve config", file=sys.stderr)
        return 2
    env = guard_env(config)
    if args.print_env:
        for key, value in env.items():
            print(f"{key}={value}")
        return 0
    serve = shutil.which("serve") or str(Path(sys.executable).with_name("serve"))
    os.execvpe(serve, [serve, "run", str(config)], {**os.environ, **env})
    return 0   # not reached
