"""The evaluation job: generate on the test manifests (Ray Data), score REGE, report, track, register.

The trained model, its prior-token ablation and the baselines are generated in one pass
(:mod:`emola.evaluate.replicas`) and scored each on its own.

Outputs under ``evaluate.reports``:

    metrics.json            DVC metrics: emotion.S_re/S_ge/S_rege and au.S_re/S_ge/S_rege
    predictions.jsonl       one line per test sample (``emola rege`` reads it)
    details.json            per-class accuracy, confusion matrix, per-AU P/R/F1, rouge-score
    baselines.json          the same six numbers for prior_off, the untrained model and any --baseline
    plots/confusion.csv     actual,predicted (DVC confusion plot)
    plots/per_au_f1.csv     au,f1
    plots/train_loss.csv    step,loss from the training run in MLflow (step,loss,model: one model per task)
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from emola import preflight
from emola.config import EmolaConfig
from emola.data.manifest import ManifestRow, read_manifest
from emola.evaluate.replicas import Variant, predict_variants
from emola.fileio import atomic_write_lines
from emola.metrics.rege import rege
from emola.model.configuration import EmolaModelConfig
from emola.model.reference import model_parts, training_info


MODEL, PRIOR_OFF = "model", "prior_off"  # variant names: the evaluated model, its prior-token ablation


def check_baseline_name(name: str) -> None:
    """Refuse a baseline named like the evaluated model's own scores, which it would overwrite."""
    if name in (MODEL, PRIOR_OFF):
        raise ValueError(f"baseline {name!r} names the evaluated model's own scores; choose another name")


def score(records: list[dict], dataset: str, extras: bool = True) -> dict[str, object]:
    """REGE per task present in ``records`` (``extras``: also the per-class and per-AU details and rouge-score's
    numbers, which the reports keep for the evaluated model only)."""
    results = {}
    for task in ("emotion", "au"):
        task_records = [r for r in records if r["task"] == task]
        if task_records:
            results[task] = rege(task, [r["prediction"] for r in task_records], [r["reference"] for r in task_records],
                                 [r["label"] for r in task_records], dataset=dataset, extras=extras)
    return results


def six_numbers(results: dict) -> dict:
    return {task: {"S_re": round(r.S_re, 3), "S_ge": round(r.S_ge, 3), "S_rege": round(r.S_rege, 3), "n": r.n}
            for task, r in results.items()}


def evaluate_variants(variants: list[Variant], cfg: EmolaConfig, rows: list[ManifestRow]) -> dict[str, tuple[list[dict], dict]]:
    """Predictions and REGE of every variant, generated in one pass (``emola.evaluate.replicas``).

    A variant made of one checkpoint per task is scored on its parts' records together.
    """
    import ray

    from emola.runtime import init_ray

    predictions = predict_variants(variants, cfg, rows)
    names = list(predictions)
    # Scoring is pure Python (ROUGE's longest common subsequences): one Ray task per variant, so the
    # variants score on every CPU at once. (Not a fork of this process: it holds Ray's and torch's threads.)
    init_ray()
    remote_score = ray.remote(num_cpus=1, max_retries=0)(score)
    scores = ray.get([remote_score.remote(predictions[n], cfg.evaluate.dataset, n == MODEL) for n in names])
    return {name: (predictions[name], result) for name, result in zip(names, scores)}


def variants_to_score(parts: list[Path], trainings: dict[str, dict], cfg: EmolaConfig,
                      baselines: dict[str, Path | list[Path]] | None, log=print) -> list[Variant]:
    """The models an evaluation scores: the trained model (``MODEL``), its prior-token
    ablation (``PRIOR_OFF``, when it has the prior token), each training run's initial model
    (``untrained``, when ``train.storage_path`` still holds it) and the named ``baselines``.

    A baseline folder that holds no checkpoint is skipped with a log line.
    """
    variants = [Variant(MODEL, tuple(parts))]
    if any(EmolaModelConfig.load(part).prior == "landmarks" for part in parts):
        variants.append(Variant(PRIOR_OFF, tuple(parts), prior_off=True))
    baselines = dict(baselines or {})
    for name in baselines:
        check_baseline_name(name)
    initial = [Path(cfg.train.storage_path) / t["ray_run_name"] / "init"
               for t in trainings.values() if t.get("ray_run_name")]
    if len(initial) == len(parts):  # each run's initial model: the same architecture, untrained
        baselines.setdefault("untrained", initial)
    for name, path in baselines.items():
        try:  # a list names the parts themselves (each run's initial model)
            baseline_parts = [part for p in (path if isinstance(path, list) else [path]) for part in model_parts(p)]
        except FileNotFoundError as err:
            log(f"evaluate: baseline {name} skipped: {err}")
            continue
        variants.append(Variant(name, tuple(baseline_parts)))
    return variants


def _write_plots(reports: Path, results: dict, train_loss: dict[str, list[tuple[int, float]]]) -> None:
    plots = reports / "plots"
    if "emotion" in results:
        labels = results["emotion"].extras["confusion_matrix"]["labels"]
        rows = results["emotion"].extras["confusion_matrix"]["rows"]
        lines = ["actual,predicted"] + [f"{labels[i]},{labels[j]}" for i, row in enumerate(rows)
                                        for j, count in enumerate(row) for _ in range(count)]
        atomic_write_lines(plots / "confusion.csv", lines)
    if "au" in results:
        per_au = results["au"].extras["per_au"]
        atomic_write_lines(plots / "per_au_f1.csv", ["au,f1"] + [f"AU{au},{v['f1']:.3f}" for au, v in per_au.items()])
    if len(train_loss) > 1:  # one model per task: a series per model
        lines = ["step,loss,model"] + [f"{s},{v:.5f},{name}" for name, series in train_loss.items() for s, v in series]
    else:
        lines = ["step,loss"] + [f"{s},{v:.5f}" for series in train_loss.values() for s, v in series]
    atomic_write_lines(plots / "train_loss.csv", lines)


def _figures(results: dict, train_loss) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    if "emotion" in results:
        cm = results["emotion"].extras["confusion_matrix"]
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.imshow(np.array(cm["rows"]), cmap="Blues")
        ax.set_xticks(range(7), cm["labels"], rotation=45, ha="right")
        ax.set_yticks(range(7), cm["labels"])
        ax.set_xlabel("predicted"), ax.set_ylabel("actual"), ax.set_title("emotion confusion matrix")
        fig.tight_layout()
        figures["confusion_matrix.png"] = fig
    if "au" in results:
        per_au = results["au"].extras["per_au"]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([f"AU{a}" for a in per_au], [v["f1"] for v in per_au.values()])
        ax.set_ylabel("F1 (%)"), ax.set_title("per-AU F1"), ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        figures["per_au_f1.png"] = fig
    if any(train_loss.values()):
        fig, ax = plt.subplots(figsize=(5, 3))
        for name, series in train_loss.items():
            ax.plot([s for s, _ in series], [v for _, v in series], label=name)
        if len(train_loss) > 1:
            ax.legend()
        ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title("training loss")
        fig.tight_layout()
        figures["train_loss.png"] = fig
    return figures


def run_evaluation(cfg: EmolaConfig, *, checkpoint: Path | str | None = None,
                   baselines: dict[str, Path | list[Path]] | None = None,
                   repo_root: Path | str = ".", register: bool = True, log=print) -> dict:
    """Evaluate ``checkpoint`` (default ``train.output``) and any ``baselines`` on the test split.

    Raises :class:`~emola.preflight.JobInputError` before starting Ray when an input, the reports
    folder or the tracking store cannot work.

    ``checkpoint`` is one checkpoint folder or a folder of per-task checkpoints
    (``train.separate_models``); their predictions are scored together. With per-task
    models each part is registered as ``{evaluate.register_as}-{part}`` and competes
    for its own ``champion`` alias on its own tasks' S_rege.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from emola import tracking
    from emola.evaluate.registry import register_and_maybe_promote

    started = time.perf_counter()
    checkpoint = Path(checkpoint or cfg.train.output)
    manifest = preflight.require_file(Path(cfg.data.manifests) / "test.jsonl", "data.manifests", "test manifest")
    if not checkpoint.exists():
        preflight.require_dir(checkpoint, "--checkpoint", "checkpoint")
    preflight.require_output(cfg.evaluate.reports, "evaluate.reports")
    preflight.require_tracking()
    rows = list(read_manifest(manifest))
    preflight.require_images(rows, manifest)
    test_set = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    reports = Path(cfg.evaluate.reports)

    parts = model_parts(checkpoint)
    if any(EmolaModelConfig.load(part).prior == "landmarks" for part in parts):
        preflight.require_dir(cfg.landmarks.cache, "landmarks.cache", "landmark cache")
    trainings = {part.name: training_info(part) for part in parts}
    evaluated = evaluate_variants(variants_to_score(parts, trainings, cfg, baselines, log), cfg, rows)
    records, results = evaluated.pop(MODEL)
    metrics = six_numbers(results)
    log(f"evaluate: {checkpoint}: " + "; ".join(f"{t} S_re {m['S_re']:.1f} S_ge {m['S_ge']:.1f} S_rege {m['S_rege']:.1f}"
                                                 for t, m in metrics.items()))
    baseline_metrics = {name: six_numbers(baseline_results) for name, (_, baseline_results) in evaluated.items()}
    for name, m in baseline_metrics.items():
        log(f"evaluate: {name}{' (prior-token ablation: one mean prior for every image)' if name == PRIOR_OFF else ''}: {m}")

    uri = tracking.configure(repo_root)
    client = MlflowClient(tracking_uri=uri)
    train_runs: dict[str, str] = {}   # part name -> training run found in this tracking store
    train_loss: dict[str, list[tuple[int, float]]] = {}
    for name, training in trainings.items():
        if run_id := training.get("mlflow_run_id"):
            try:
                history = client.get_metric_history(run_id, "loss")
            except Exception:  # noqa: BLE001 - the training run may live in another tracking store
                continue
            train_runs[name] = run_id
            train_loss[name] = [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]

    atomic_write_lines(reports / "predictions.jsonl", (json.dumps(r) for r in records))
    atomic_write_lines(reports / "metrics.json", [json.dumps(metrics, indent=2)])
    atomic_write_lines(reports / "details.json", [json.dumps({t: r.to_dict() for t, r in results.items()}, indent=2)])
    atomic_write_lines(reports / "baselines.json", [json.dumps(baseline_metrics, indent=2)])
    _write_plots(reports, results, train_loss)

    mlflow.set_experiment("emola-eval")
    tags = {"test_set": test_set, "checkpoint": str(checkpoint)}
    if len(parts) == 1 and train_runs:
        tags["training_run_id"] = next(iter(train_runs.values()))
    else:
        tags.update({f"training_run_id.{name}": run_id for name, run_id in train_runs.items()})
    with mlflow.start_run(run_name=f"eval-{checkpoint.name}", tags=tags) as run:
        mlflow.log_params({"dataset": cfg.evaluate.dataset, "generation": cfg.evaluate.generation.model_dump_json(),
                           "test_rows": len(records)})
        mlflow.log_metrics({f"{t}.{k}": v for t, m in metrics.items() for k, v in m.items()})
        for name, m in baseline_metrics.items():
            mlflow.log_metrics({f"baseline.{name}.{t}.{k}": v for t, mm in m.items() for k, v in mm.items()})
        for name, fig in _figures(results, train_loss).items():
            mlflow.log_figure(fig, f"plots/{name}")
        sample = records[:50]
        mlflow.log_table({k: [r[k] for r in sample] for k in ("uid", "task", "prediction", "reference", "label")},
                         artifact_file="sample_predictions.json")
        mlflow.log_artifact(str(reports / "metrics.json"))
        eval_run = run.info.run_id

    registry = None
    if register and train_runs:
        registered = {}
        for part in parts:
            if part.name not in train_runs:
                continue
            tasks = EmolaModelConfig.load(part).tasks
            total = sum(m["S_rege"] for task, m in metrics.items() if task in tasks)
            name = cfg.evaluate.register_as if len(parts) == 1 else f"{cfg.evaluate.register_as}-{part.name}"
            run_id = train_runs[part.name]
            registered[part.name] = entry = register_and_maybe_promote(
                client, name, run_id, total, test_set, {"eval_run_id": eval_run})
            log(f"evaluate: registered {entry['name']} v{entry['version']}: "
                f"{'now champion' if entry['champion'] else 'not promoted'} ({entry['reason']})")
        registry = next(iter(registered.values()), None) if len(parts) == 1 else registered
    return {"metrics": metrics, "baselines": baseline_metrics, "eval_run_id": eval_run, "registry": registry,
            "seconds": round(time.perf_counter() - started, 1)}
