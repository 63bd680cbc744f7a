"""The GPU figures the README quotes, built from the raw runs ``benchmarks/gpu.py`` wrote.

    python benchmarks/gpu_summary.py [--runs DIR] [--out DIR] [--include-dry-runs]

Reads every ``*.json`` in ``benchmarks/results/gpu/runs/`` (one per GPU run, written only by
``benchmarks/gpu.py``), keeps the runs whose correctness gate passed, and writes
``summary.json`` and ``summary.md`` beside the runs' folder: per run and engine, ms per token
at one request (the whole request's time, after its prompt, per generated token), tokens/s at
each load over the steady window and over the whole window (ramp and drain in), time to first
token at 1 and 32 in flight, the evaluate stage's answers/s and the largest log-probability
difference the gate measured; per run, the training step's MFU for the production recipe and
the fastest variant. Runs whose gate failed, dry runs and files of another schema are listed as
skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks/results/gpu/runs"
SCHEMA = "emola-gpu-run/1"


def _load(path: Path) -> tuple[dict | None, str | None]:
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"unreadable: {err}"
    if run.get("schema") != SCHEMA or run.get("written_by") != "benchmarks/gpu.py":
        return None, "not written by benchmarks/gpu.py"
    return run, None


def _engine_row(name: str, engine: dict, gate_paths: list[dict]) -> dict:
    loads = {row["concurrency"]: row for row in engine.get("concurrent", [])}
    worst = [p["max_logprob_diff"] for p in gate_paths if p["path"].startswith(f"{name} ")]
    return {
        "engine": name,
        "config": engine.get("config", {}),
        "fallback": engine.get("fallback"),
        "ms_per_token_batch1": engine.get("ms_per_token_batch1"),
        "tokens_per_s_steady": {c: row["tokens_per_s"] for c, row in loads.items()},
        "tokens_per_s_window": {c: row["overall_tokens_per_s"] for c, row in loads.items()},
        "ttft_ms_p50": {c: row["ttft_ms"]["p50"] for c, row in loads.items() if "ttft_ms" in row},
        "evaluate_answers_per_s": engine.get("evaluate", {}).get("answers_per_s"),
        "peak_memory_gib": engine.get("peak_memory_gib"),
        "gate_max_logprob_diff": max(worst) if worst else None,
    }


def _training_row(training: dict | None) -> dict | None:
    if not training or not training.get("variants"):
        return None
    variants = training["variants"]
    recipe = next((v for v in variants if v["id"] == "recipe"), None)
    best = max(variants, key=lambda v: v["mfu"])
    pick = lambda v: None if v is None else {k: v.get(k) for k in (  # noqa: E731
        "id", "variant", "engine", "s_per_step", "tokens_per_s", "mfu", "peak_memory_gib")}
    return {"recipe": pick(recipe), "fastest": pick(best)}


def summarize(runs_dir: Path, include_dry_runs: bool = False) -> dict:
    kept, skipped = [], []
    for path in sorted(runs_dir.glob("*.json")):
        run, problem = _load(path)
        if run is not None and run.get("dry_run") and not include_dry_runs:
            problem = "a dry run (CPU, shrunken model)"
        if run is not None and not problem and not (run.get("gate") or {}).get("passed"):
            problem = "its correctness gate did not pass" if run.get("gate") else "no correctness gate"
        if problem:
            skipped.append({"file": path.name, "reason": problem})
            continue
        inference = run.get("inference") or {}
        paths = run["gate"].get("paths", [])
        kept.append({
            "file": path.name, "date": run["date"], "commit": run["commit"], "card": run["card"],
            "versions": run["versions"], "command": run.get("command"),
            "gate": {"native_max_logprob_diff": run["gate"].get("native_max_logprob_diff"), "paths": len(paths),
                     "kernel_checks": len(run["gate"].get("kernel_checks", []))},
            "engines": [_engine_row(name, engine, paths) for name, engine in inference.get("engines", {}).items()
                        if "error" not in engine],
            "training": _training_row(run.get("training")),
        })
    return {"runs": kept, "skipped": skipped, "latest": kept[-1] if kept else None}


def markdown(summary: dict) -> str:
    lines = ["# GPU runs (gate passed)", ""]
    if not summary["runs"]:
        lines.append("No GPU run has passed the correctness gate yet.")
    for run in summary["runs"]:
        lines += [f"## {run['date']} · {run['card']['name']} · commit {run['commit'][:12]}", "",
                  f"torch {run['versions']['torch']}, CUDA {run['versions']['cuda']}, triton "
                  f"{run['versions']['triton']}; gate: {run['gate']['paths']} paths, transformers' own bf16 forward "
                  f"within {run['gate']['native_max_logprob_diff']} of float32", "",
                  "| engine | ms/token @1 | tok/s steady @8/32/64 | tok/s whole window @32 | TTFT ms @1/@32 | "
                  "eval answers/s | gate max dlogp |", "|---|---|---|---|---|---|---|"]
        for e in run["engines"]:
            steady = "/".join(str(e["tokens_per_s_steady"].get(c, "-")) for c in (8, 32, 64))
            ttft = "/".join(str(e["ttft_ms_p50"].get(c, "-")) for c in (1, 32))
            lines.append(f"| {e['engine']} | {e['ms_per_token_batch1']} | {steady} | "
                         f"{e['tokens_per_s_window'].get(32, '-')} | {ttft} | {e['evaluate_answers_per_s']} | "
                         f"{e['gate_max_logprob_diff']} |")
        if run["training"]:
            for key in ("recipe", "fastest"):
                v = run["training"][key]
                if v:
                    lines.append(f"\nTraining, {key}: {v['variant']} ({v['engine']}): {v['s_per_step']} s/step, "
                                 f"{v['tokens_per_s']} tokens/s, useful MFU {100 * v['mfu']:.1f}%, peak "
                                 f"{v['peak_memory_gib']} GiB")
        lines.append("")
    if summary["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{s['file']} ({s['reason']})" for s in summary["skipped"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(RUNS), help="the folder of raw runs")
    parser.add_argument("--out", help="where summary.json and summary.md go (default: the runs folder's parent)")
    parser.add_argument("--include-dry-runs", action="store_true", help="keep dry runs (tests)")
    args = parser.parse_args()
    runs = Path(args.runs)
    out = Path(args.out) if args.out else runs.parent
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs, args.include_dry_runs)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(f"{len(summary['runs'])} run(s) kept, {len(summary['skipped'])} skipped; wrote {out / 'summary.md'}")


if __name__ == "__main__":
    main()
