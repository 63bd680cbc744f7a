"""``emola landmarks IMAGE...``: faces and landmarks of images as JSON, optionally drawn."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("landmarks", help="detect faces and landmarks in images (JSON per image)")
    cmd.add_argument("images", nargs="+", metavar="IMAGE")
    cmd.add_argument("--backend", choices=["dlib-68", "insightface-2d106"], default="dlib-68")
    cmd.add_argument("--all-faces", action="store_true", help="every face, largest first (default: the largest)")
    cmd.add_argument("--plot", metavar="OUT.png", help="draw the faces; several images get OUT-<stem>.png")
    cmd.add_argument("--params", default="params.yaml", help="for landmarks.insightface (model path, mode)")
    cmd.add_argument("--max-pixels", type=int, default=40_000_000)
    cmd.set_defaults(handler=_landmarks)


def _plot_path(plot: str, image: Path, many: bool) -> Path:
    out = Path(plot)
    return out.with_name(f"{out.stem}-{image.stem}{out.suffix}") if many else out


def _landmarks(args: argparse.Namespace) -> int:
    from emola.config import LandmarksConfig, ParamsError, load_config
    from emola.landmarks.backend import FaceResult
    from emola.landmarks.plot import save_plot
    from emola.landmarks.registry import build_backend
    from emola.imaging import ImageProblem, read_image_file

    cfg: LandmarksConfig | None = None
    if Path(args.params).is_file():
        try:
            cfg = load_config(args.params).landmarks
        except ParamsError as err:
            print(err, file=sys.stderr)
            return 2
    try:
        backend = build_backend(cfg, name=args.backend)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failures = 0
    for path in map(Path, args.images):
        try:
            image, sha = read_image_file(path, args.max_pixels)
        except ImageProblem as err:
            result, sha, image = FaceResult.failed(err.status, str(err)), None, None
        else:
            result = backend.extract([np.asarray(image)], all_faces=args.all_faces)[0]
        record = {"image": str(path), "image_sha256": sha, "backend": backend.key, "status": result.status,
                  "reason": result.reason, "width": result.width, "height": result.height,
                  "faces": [f.to_dict() for f in result.faces]}
        if args.plot and image is not None:
            record["plot"] = str(save_plot(image, result, _plot_path(args.plot, path, len(args.images) > 1)))
        failures += result.status != "ok"
        print(json.dumps(record))
    return 1 if failures else 0
