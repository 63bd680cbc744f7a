"""``emola rege``: FABA-Bench's REGE over a predictions file."""

from __future__ import annotations

import argparse
import json
import sys


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("rege", help="REGE (S_re + S_ge) of predictions: JSON lines with prediction, reference, "
                                           "label (lines whose task field names another task are left out)")
    cmd.add_argument("--task", choices=["emotion", "au"], required=True)
    cmd.add_argument("--dataset", choices=["FABA", "DISFA", "BP4D", "GFT", "EmotioNet"], default="FABA")
    cmd.add_argument("--input", required=True, metavar="PRED.jsonl")
    cmd.add_argument("--details", action="store_true", help="add rouge-score, per-class and per-AU details")
    cmd.set_defaults(handler=_rege)
    proto = commands.add_parser("protocol", help="traditional benchmarks: RAF-DB accuracy, DISFA/BP4D/GFT 3-fold AU F1")
    proto.add_argument("benchmark", choices=["RAF-DB", "DISFA", "BP4D", "GFT"])
    proto.add_argument("--input", required=True, metavar="PRED.jsonl",
                       help="JSON lines with prediction and label (and fold 0-2 for the AU benchmarks)")
    proto.set_defaults(handler=_protocol)


def read_records(path: str, check, skip=None) -> tuple[list[dict], list[str]]:
    """The JSON-object lines of ``path`` that ``check`` accepts, and one message per bad line.

    ``check(record)`` raises ``ValueError`` with the reason; messages carry the line number.
    ``skip(record)`` true: the line is left out without a message (another task's, say).
    ``OSError`` propagates (the file itself is unreadable).
    """
    good, problems = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{path}: line {lineno}: not valid JSON ({err.msg})")
                continue
            if not isinstance(record, dict):
                problems.append(f"{path}: line {lineno}: not a JSON object")
                continue
            if skip is not None and skip(record):
                continue
            try:
                check(record)
            except ValueError as err:
                problems.append(f"{path}: line {lineno}: {err}")
                continue
            good.append(record)
    return good, problems


def read_predictions(path: str, task: str) -> tuple[list[dict], list[str]]:
    """Lines with prediction, reference and a label of ``task``; one message per bad line. Lines whose ``task``
    field names another task (the evaluate stage's ``reports/predictions.jsonl`` holds both) are left out."""
    from emola.labels import parse_emotion_label
    from emola.metrics.rege import au_targets

    def check(record: dict) -> None:
        missing = [k for k in ("prediction", "reference", "label") if k not in record]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if not isinstance(record["prediction"], str) or not isinstance(record["reference"], str):
            raise ValueError("prediction and reference must be strings")
        try:
            if task == "emotion":
                parse_emotion_label(record["label"])
            else:
                au_targets(record["label"])
        except ValueError as err:  # LabelError is a ValueError
            raise ValueError(f"bad label {record['label']!r} ({err})") from None

    return read_records(path, check, skip=lambda record: record.get("task", task) != task)


def _rege(args: argparse.Namespace) -> int:
    from emola.metrics.rege import rege

    try:
        records, problems = read_predictions(args.input, args.task)
    except OSError as err:
        print(f"error: {args.input}: {err.strerror or err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    if not records:
        print(f"error: {args.input}: no usable prediction lines", file=sys.stderr)
        return 2
    result = rege(args.task, [r["prediction"] for r in records], [r["reference"] for r in records],
                  [r["label"] for r in records], dataset=args.dataset, extras=args.details)
    out = {"S_re": result.S_re, "S_ge": result.S_ge, "S_rege": result.S_rege, "n": result.n,
           "task": args.task, "dataset": args.dataset}
    if result.per_au_f1 is not None:
        out["per_au_f1"] = {str(k): v for k, v in result.per_au_f1.items()}
    if args.details:
        out["details"] = result.extras
    print(json.dumps(out, indent=2))
    return 1 if problems else 0


def _protocol(args: argparse.Namespace) -> int:
    from emola.metrics import protocols
    from emola.metrics.rege import au_targets

    au = args.benchmark in protocols.AU_BENCHMARKS

    def check(record: dict) -> None:
        if not isinstance(record.get("prediction"), str) or "label" not in record:
            raise ValueError("needs a string prediction and a label")
        if au:
            au_targets(record["label"])
            if record.get("fold") not in range(protocols.FOLDS):
                raise ValueError("needs fold 0, 1 or 2")
        else:
            protocols.rafdb_label(record["label"])

    try:
        good, problems = read_records(args.input, check)
    except OSError as err:
        print(f"error: {args.input}: {err.strerror or err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    try:
        if au:
            folds = [([r["prediction"] for r in good if r["fold"] == f], [r["label"] for r in good if r["fold"] == f])
                     for f in range(protocols.FOLDS)]
            if not all(p for p, _ in folds):
                raise ValueError("every fold 0, 1 and 2 needs predictions")
            result = protocols.au_fold_f1(args.benchmark, folds)
        else:
            if not good:
                raise ValueError("no usable prediction lines")
            result = protocols.rafdb_accuracy([r["prediction"] for r in good], [r["label"] for r in good])
    except ValueError as err:
        print(f"error: {args.input}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 1 if problems else 0
