"""``emola data``: validate release files, render FABA-Synth, convert a release to manifests."""

from __future__ import annotations

import argparse
import json
import sys

from emola.config import ParamsError, load_config


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("data", help="FABA-Instruct data: validate, synth, convert").add_subparsers(
        dest="action", required=True
    )
    validate = group.add_parser("validate", help="check every record of a release file; exit 1 if any is bad")
    validate.add_argument("file", help="a train or eval annotation file (JSON array or JSON Lines)")
    validate.add_argument("--root", required=True, help="release root the records' paths are relative to")
    validate.add_argument("--task", choices=["emotion", "au"], help="default: inferred from the labels")
    validate.add_argument("--split", choices=["train", "test"], help="default: inferred from the records")
    validate.add_argument("--max-pixels", type=int, default=40_000_000)
    validate.add_argument("--json", action="store_true", help="one JSON object per bad record")
    validate.set_defaults(handler=_validate)

    synth = group.add_parser("synth", help="render the FABA-Synth data set in the official release layout")
    synth.add_argument("--out", required=True)
    synth.add_argument("--train", type=int, required=True, help="train images")
    synth.add_argument("--test", type=int, required=True, help="test images")
    synth.add_argument("--seed", type=int, required=True)
    synth.add_argument("--image-size", type=int, default=192)
    synth.add_argument("--au-only-fraction", type=float, default=0.3)
    synth.add_argument("--workers", type=int, default=2)
    synth.add_argument("--force", action="store_true", help="replace a non-empty --out")
    synth.set_defaults(handler=_synth)

    convert = group.add_parser("convert", help="check a release and write the normalized manifests")
    convert.add_argument("--root", required=True, help="release root (official layout)")
    convert.add_argument("--out", required=True, help="manifest folder")
    convert.add_argument("--params", default="params.yaml", help="for the release's file names (data.files)")
    convert.set_defaults(handler=_convert)


def _validate(args: argparse.Namespace) -> int:
    from emola.data.release import ReleaseFileError, check_release_file

    try:
        report = check_release_file(args.file, args.root, split=args.split, task=args.task, max_pixels=args.max_pixels)
    except ReleaseFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for issue in report.issues:
        print(json.dumps(issue.to_dict()) if args.json else issue.message())
    total = len(report.good) + len(report.issues)
    print(f"{args.file}: {report.split} split, task {report.task or 'unknown'}: "
          f"{len(report.good)} of {total} records valid, {len(report.issues)} bad", file=sys.stderr)
    return 1 if report.issues else 0


def _synth(args: argparse.Namespace) -> int:
    from emola.synth.dataset import generate

    try:
        summary = generate(args.out, train=args.train, test=args.test, seed=args.seed, image_size=args.image_size,
                           au_only_fraction=args.au_only_fraction, workers=args.workers, overwrite=args.force)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"FABA-Synth: {args.train + args.test} images in {summary['seconds']:.1f} s "
          f"({args.workers} workers) -> {args.out}", file=sys.stderr)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from emola.data.manifest import write_manifests
    from emola.data.release import ReleaseFileError
    from emola.data.stage import check_release

    try:
        cfg = load_config(args.params)
        reports = check_release(args.root, cfg.data)
    except (ParamsError, ReleaseFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for report in reports:
        for issue in report.issues:
            print(f"skipped {issue.message()}", file=sys.stderr)
    print(json.dumps(write_manifests(reports, args.out, root=args.root), indent=2))
    return 0
