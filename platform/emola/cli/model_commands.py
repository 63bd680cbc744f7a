"""``emola analyze`` (images -> descriptions, emotions, AUs), ``emola export --merge`` and
``emola import emola-release`` (the authors' released checkpoints)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    analyze = commands.add_parser(
        "analyze", help="describe faces in images, or follow them through videos (JSON lines or CSV)",
        description="Images: one result per image. Videos (.mp4, .mov, .mkv, .webm, .avi, .m4v): one row per "
                    "sampled frame and face with AU and emotion probabilities from the model's readout head, "
                    "and descriptions at key moments.")
    analyze.add_argument("images", nargs="+", metavar="IMAGE_OR_VIDEO")
    analyze.add_argument("--checkpoint", required=True)
    analyze.add_argument("--task", choices=["emotion", "au"], default="emotion")
    analyze.add_argument("--question", help="a free-form question instead of the task's prompt")
    analyze.add_argument("--csv", metavar="OUT", help="write one row per image to OUT instead of JSON lines")
    analyze.add_argument("--max-new-tokens", type=int, help="default: the published decoding's 512")
    analyze.add_argument("--batch-size", type=int, default=8)
    analyze.add_argument("--fps", type=float, default=5.0, help="videos: frames sampled per second (default: 5)")
    analyze.add_argument("--smoothing", type=int, default=3,
                         help="videos: probabilities averaged over this many sampled frames (1: none; default: 3)")
    analyze.add_argument("--no-describe", action="store_true", help="videos: no descriptions at key moments")
    analyze.add_argument("--plot", metavar="PNG", help="videos: the emotion and AU timelines of the first video")
    analyze.set_defaults(handler=_analyze)

    export = commands.add_parser("export", help="write a checkpoint as a merged full model")
    export.add_argument("checkpoint")
    export.add_argument("out")
    export.add_argument("--merge", action="store_true", required=True, help="merge LoRA into the base weights")
    export.set_defaults(handler=_export)

    imp = commands.add_parser("import", help="import a released checkpoint into the platform's checkpoint format")
    imp.add_argument("kind", choices=["emola-release"], help="emola-release: the EmoLA authors' LoRA checkpoints")
    imp.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="one released checkpoint folder (emotion or AU)")
    imp.add_argument("--base", default="llava-hf/llava-1.5-7b-hf",
                     help="the HF-format LLaVA base: a hub id or a local folder (default: %(default)s)")
    imp.add_argument("--out", required=True, help="the platform checkpoint folder to write")
    imp.add_argument("--task", required=True, choices=["emotion", "au"], help="the task this checkpoint answers")
    imp.add_argument("--landmark-backend", metavar="KEY",
                     help="the landmark cache key of the prior vectors it reads (default: the insightface-2d106 "
                          "backend in paper mode, from EMOLA_INSIGHTFACE_MODEL or models/insightface/2d106det.onnx)")
    imp.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                     help="published inference: float16")
    imp.add_argument("--no-track", action="store_true",
                     help="do not log the import to MLflow (then the evaluate stage scores it but cannot register it)")
    imp.set_defaults(handler=_import)


def _analyze(args: argparse.Namespace) -> int:
    from emola.analyzer import Analyzer
    from emola.engine import PUBLISHED_GENERATION

    generation = PUBLISHED_GENERATION
    if args.max_new_tokens:
        generation = generation.model_copy(update={"max_new_tokens": args.max_new_tokens})
    try:
        analyzer = Analyzer.from_checkpoint(args.checkpoint, generation=generation)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from emola.video import VIDEO_SUFFIXES

    if any(Path(x).suffix.lower() in VIDEO_SUFFIXES for x in args.images):
        return _analyze_videos(args, analyzer)
    results = []
    for start in range(0, len(args.images), args.batch_size):
        chunk = args.images[start:start + args.batch_size]
        questions = [args.question] * len(chunk) if args.question else None
        results += analyzer.analyze_many(chunk, args.task, questions)
    if args.csv:
        rows = [r.to_row() for r in results]
        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"{len(rows)} rows -> {args.csv}", file=sys.stderr)
    else:
        for r in results:
            print(r.model_dump_json())
    return 1 if any(r.status != "ok" for r in results) else 0


def _analyze_videos(args: argparse.Namespace, analyzer) -> int:
    from emola.video import VideoProblem
    from emola.video_analysis import VideoOptions, analyze_video, plot_timeline, write_rows_csv

    options = VideoOptions(fps=args.fps, smoothing=args.smoothing, describe=not args.no_describe, task=args.task)
    table, failed = [], 0
    for index, video in enumerate(args.images):
        try:
            rows = analyze_video(analyzer, video, options)
        except (VideoProblem, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        if args.plot and index == 0:
            print(f"timeline -> {plot_timeline(rows, args.plot)}", file=sys.stderr)
        table += [{"video": video, **row.to_row()} for row in rows]
    if args.csv and table:
        write_rows_csv(table, args.csv)
        print(f"{len(table)} rows -> {args.csv}", file=sys.stderr)
    elif not args.csv:
        for row in table:
            print(json.dumps(row))
    return 1 if failed else 0


def _export(args: argparse.Namespace) -> int:
    from emola.model.checkpoint import load_checkpoint, save_checkpoint

    model, processor, config = load_checkpoint(args.checkpoint)
    out = save_checkpoint(model, processor, config, Path(args.out), merge=True)
    print(json.dumps({"merged": str(out), "base": str(out / "base")}))
    return 0


def _import(args: argparse.Namespace) -> int:
    from emola.mlflow_model import track_import
    from emola.model.importing import ReleaseImportError, import_release

    key = args.landmark_backend
    try:
        if key is None:
            from emola.landmarks.registry import build_backend

            key = build_backend(name="insightface-2d106").key   # paper mode, the published preprocessing
        out = import_release(args.checkpoint, base=args.base, out=args.out, task=args.task, landmark_backend=key,
                             dtype=args.dtype)
    except (ReleaseImportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_id = None if args.no_track else track_import(out)
    print(json.dumps({"imported": str(out), "task": args.task, "landmark_backend": key, "base": args.base,
                      "mlflow_run_id": run_id}))
    return 0
