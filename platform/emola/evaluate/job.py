"""The evaluation job: generate on the test manifests (Ray Data), score REGE, report, track, register.

``run_evaluation`` runs named steps: ``check_inputs``; ``evaluate_variants`` (the trained
model, its prior-token ablation and the baselines generated in one pass,
:mod:`emola.evaluate.replicas`, and scored each as a Ray task); ``training_history``;
``write_reports`` (:mod:`emola.evaluate.report`); ``track`` (MLflow); ``register_parts``.

Its outputs under ``evaluate.reports`` are listed in :mod:`emola.evaluate.report`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emola import preflight
from emola.config import EmolaConfig
from emola.data.manifest import ManifestRow, read_manifest
from emola.evaluate.replicas import Variant, predict_variants
from emola.evaluate.report import figures, write_reports
from emola.metrics.readout import readout_scores
from emola.metrics.rege import rege
from emola.model.configuration import EmolaModelConfig
from emola.model.reference import model_parts, training_info


TASKS = ("emotion", "au")  # REGE's tasks, in the order reports list them
MODEL, PRIOR_OFF = "model", "prior_off"  # variant names: the evaluated model, its prior-token ablation


@contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the block takes to ``phases[name]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = round(phases.get(name, 0.0) + time.perf_counter() - started, 1)


def check_baseline_name(name: str) -> None:
    """Refuse a baseline named like the evaluated model's own scores, which it would overwrite."""
    if name in (MODEL, PRIOR_OFF):
        raise ValueError(f"baseline {name!r} names the evaluated model's own scores; choose another name")


def score(records: list[dict], dataset: str, extras: bool = True) -> dict[str, object]:
    """REGE per task present in ``records`` (``extras``: also the per-class and per-AU details and rouge-score's
    numbers, which the reports keep for the evaluated model only)."""
    results = {}
    for task in TASKS:
        task_records = [r for r in records if r["task"] == task]
        if task_records:
            results[task] = rege(task, [r["prediction"] for r in task_records], [r["reference"] for r in task_records],
                                 [r["label"] for r in task_records], dataset=dataset, extras=extras)
    return results


def six_numbers(results: dict) -> dict:
    return {task: {"S_re": round(r.S_re, 3), "S_ge": round(r.S_ge, 3), "S_rege": round(r.S_rege, 3), "n": r.n}
            for task, r in results.items()}


def score_variants(predictions: dict[str, list[dict]], dataset: str) -> dict[str, dict]:
    """REGE of every variant's prediction records (``score``; only ``MODEL`` gets the extras).

    Scoring is pure Python (ROUGE's longest common subsequences): one Ray task per variant and task, so the
    work spreads over every CPU. The evaluated model's go first: only they add rouge-score's numbers, the
    longest tasks. (Ray tasks, not a fork of this process: it holds Ray's and torch's threads.)
    """
    import ray

    from emola.runtime import init_ray

    init_ray()
    remote_score = ray.remote(num_cpus=1, max_retries=0)(score)
    groups = {(name, task): [r for r in predictions[name] if r["task"] == task]
              for name in sorted(predictions, key=lambda n: n != MODEL) for task in TASKS}
    jobs = {key: remote_score.remote(records, dataset, key[0] == MODEL) for key, records in groups.items() if records}
    results: dict[str, dict] = {name: {} for name in predictions}
    for (name, _), result in zip(jobs, ray.get(list(jobs.values()))):
        results[name].update(result)
    return results


def evaluate_variants(variants: list[Variant], cfg: EmolaConfig, rows: list[ManifestRow],
                      phases: dict[str, float] | None = None) -> dict[str, tuple[list[dict], dict]]:
    """Predictions and REGE of every variant, generated in one pass (``emola.evaluate.replicas``).

    A variant made of one checkpoint per task is scored on its parts' records together.
    ``phases`` receives the seconds of generation (``generate``) and of scoring (``score``).
    """
    phases = {} if phases is None else phases
    with timed(phases, "generate"):
        predictions = predict_variants(variants, cfg, rows)
    with timed(phases, "score"):
        results = score_variants(predictions, cfg.evaluate.dataset)
    return {name: (records, results[name]) for name, records in predictions.items()}


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


def check_inputs(cfg: EmolaConfig, checkpoint: Path) -> tuple[Path, list[ManifestRow], list[Path]]:
    """Step 1, in the driver before Ray starts: the test manifest and its images, the checkpoint's
    parts, the landmark cache they need, the reports folder and the tracking store."""
    manifest = preflight.require_file(Path(cfg.data.manifests) / "test.jsonl", "data.manifests", "test manifest")
    if not checkpoint.exists():
        preflight.require_dir(checkpoint, "--checkpoint", "checkpoint")
    preflight.require_output(cfg.evaluate.reports, "evaluate.reports")
    preflight.require_tracking()
    rows = list(read_manifest(manifest))
    preflight.require_images(rows, manifest)
    parts = model_parts(checkpoint)
    if any(EmolaModelConfig.load(part).prior == "landmarks" for part in parts):
        preflight.require_dir(cfg.landmarks.cache, "landmarks.cache", "landmark cache")
    return manifest, rows, parts


def training_history(uri: str, trainings: dict[str, dict]) -> tuple[dict[str, str], dict[str, list[tuple[int, float]]]]:
    """Step 3: each part's training run found in this tracking store, and its loss curve."""
    from mlflow.tracking import MlflowClient

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
    return train_runs, train_loss


def track(cfg: EmolaConfig, checkpoint: Path, parts: list[Path], test_set: str, train_runs: dict[str, str],
          records: list[dict], metrics: dict, results: dict, baseline_metrics: dict, train_loss) -> str:
    """Step 5: the evaluation's MLflow run (linked to the training runs): params, the six numbers of
    the model and of each baseline, figures, sample predictions. Returns its id."""
    import mlflow

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
        for name, fig in figures(results, train_loss).items():
            mlflow.log_figure(fig, f"plots/{name}")
        sample = records[:50]
        mlflow.log_table({k: [r[k] for r in sample] for k in ("uid", "task", "prediction", "reference", "label")},
                         artifact_file="sample_predictions.json")
        mlflow.log_artifact(str(Path(cfg.evaluate.reports) / "metrics.json"))
        return run.info.run_id


def register_parts(uri: str, cfg: EmolaConfig, parts: list[Path], metrics: dict, test_set: str,
                   train_runs: dict[str, str], eval_run: str, log=print) -> dict | None:
    """Step 6: register each part its training run logged; ``champion`` moves on a better S_rege
    of the part's own tasks (:mod:`emola.evaluate.registry`)."""
    from mlflow.tracking import MlflowClient

    from emola.evaluate.registry import register_and_maybe_promote

    if not train_runs:
        return None
    client = MlflowClient(tracking_uri=uri)
    registered = {}
    for part in parts:
        if part.name not in train_runs:
            continue
        tasks = EmolaModelConfig.load(part).tasks
        total = sum(m["S_rege"] for task, m in metrics.items() if task in tasks)
        name = cfg.evaluate.register_as if len(parts) == 1 else f"{cfg.evaluate.register_as}-{part.name}"
        registered[part.name] = entry = register_and_maybe_promote(
            client, name, train_runs[part.name], total, test_set, {"eval_run_id": eval_run}, checkpoint=part)
        log(f"evaluate: registered {entry['name']} v{entry['version']}: "
            f"{'now champion' if entry['champion'] else 'not promoted'} ({entry['reason']})")
    return next(iter(registered.values()), None) if len(parts) == 1 else registered


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
    from emola import tracking

    started, phases = time.perf_counter(), {}
    checkpoint = Path(checkpoint or cfg.train.output)
    manifest, rows, parts = check_inputs(cfg, checkpoint)
    test_set = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    trainings = {part.name: training_info(part) for part in parts}
    evaluated = evaluate_variants(variants_to_score(parts, trainings, cfg, baselines, log), cfg, rows, phases)
    records, results = evaluated.pop(MODEL)
    metrics = six_numbers(results)
    log(f"evaluate: {checkpoint}: " + "; ".join(f"{t} S_re {m['S_re']:.1f} S_ge {m['S_ge']:.1f} S_rege {m['S_rege']:.1f}"
                                                 for t, m in metrics.items()))
    if head := readout_scores(records):   # the readout head, when the model has one (metrics.json: readout.*)
        metrics["readout"] = {**({"au_macro_f1": head["au"]["macro_f1"]} if "au" in head else {}),
                              **({"emotion_accuracy": head["emotion"]["accuracy"]} if "emotion" in head else {})}
        log(f"evaluate: readout head: {metrics['readout']}")
    baseline_metrics = {name: six_numbers(baseline_results) for name, (_, baseline_results) in evaluated.items()}
    for name, m in baseline_metrics.items():
        log(f"evaluate: {name}{' (prior-token ablation: one mean prior for every image)' if name == PRIOR_OFF else ''}: {m}")

    uri = tracking.configure(repo_root)
    with timed(phases, "report"):
        train_runs, train_loss = training_history(uri, trainings)
        write_reports(Path(cfg.evaluate.reports), records, metrics, results, baseline_metrics, train_loss,
                      head or None)
    with timed(phases, "track"):
        eval_run = track(cfg, checkpoint, parts, test_set, train_runs, records, metrics, results, baseline_metrics,
                         train_loss)
        registry = register_parts(uri, cfg, parts, metrics, test_set, train_runs, eval_run, log) if register else None
    seconds = round(time.perf_counter() - started, 1)
    log(f"evaluate: {seconds} s (" + ", ".join(f"{name} {s} s" for name, s in phases.items()) + ")")
    return {"metrics": metrics, "baselines": baseline_metrics, "eval_run_id": eval_run, "registry": registry,
            "seconds": seconds, "phases": phases}
