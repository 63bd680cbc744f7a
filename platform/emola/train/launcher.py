"""The training driver: ``run_training(cfg)`` is what ``python -m jobs.train`` calls, locally or
through ``ray job submit``. Each model is trained by :func:`train_one` in named steps:
``load_examples``, ``initial_model``, ``plan_stream``, ``tracking_run``, ``fit`` (Ray Train +
DeepSpeed), ``export`` and ``log_model``. A run's name is a hash of everything that defines it (params, data,
code), so running the same job again after a crash resumes it from its latest checkpoint,
while any change starts a new run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from emola import preflight
from emola.config import EmolaConfig
from emola.config.schema import TrainConfig
from emola.data.manifest import read_manifest
from emola.landmarks.cache import prior_vectors
from emola.landmarks.registry import manifest_backend_key
from emola.fileio import replace_dir
from emola.model.reference import TRAINING_FILE

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TrainingOutcome:
    output: Path
    run_name: str
    mlflow_run_id: str | None
    steps: int
    final_loss: float
    seconds: float
    samples_per_s: float = 0.0
    peak_rss_mb: float = 0.0   # rank 0 worker


def source_digest() -> str:
    """Hash of the library's source: a code change makes a new run, never a stale resume."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_name_for(cfg: EmolaConfig, tasks: list[str], manifest_digest: str) -> str:
    spec = json.dumps({"model": cfg.model.model_dump(), "train": cfg.train.model_dump(exclude={"max_failures"}),
                       "landmarks": cfg.landmarks.backend, "tasks": tasks, "data": manifest_digest,
                       "code": source_digest()}, sort_keys=True)
    return f"emola-{cfg.profile}-{'-'.join(tasks)}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def check_training_inputs(cfg: EmolaConfig) -> None:
    """The driver's checks before any worker starts (:mod:`emola.preflight`): inputs exist, outputs and
    tracking outlive a submitted job."""
    preflight.require_file(Path(cfg.data.manifests) / "train.jsonl", "data.manifests", "training manifest")
    if cfg.model.prior == "landmarks":
        preflight.require_dir(cfg.landmarks.cache, "landmarks.cache", "landmark cache")
    preflight.require_output(cfg.train.storage_path, "train.storage_path")
    preflight.require_output(cfg.train.output, "train.output")
    preflight.require_tracking()


def run_training(cfg: EmolaConfig, *, repo_root: Path | str = ".", log=print) -> list[TrainingOutcome]:
    """Train the configured model(s): one for all tasks, or one per task (``train.separate_models``).

    Raises :class:`~emola.preflight.JobInputError` before starting Ray when an input, output or the
    tracking store cannot work.
    """
    check_training_inputs(cfg)
    tasks = list(cfg.train.tasks)
    groups = [[t] for t in tasks] if cfg.train.separate_models else [tasks]
    output = Path(cfg.train.output)
    return [train_one(cfg, group, output / group[0] if cfg.train.separate_models else output,
                      repo_root=Path(repo_root), log=log) for group in groups]


def optimizer_steps(examples: int, t: TrainConfig) -> int:
    """Optimizer steps in a stream of ``examples`` rows: Ray Data gives each worker an equal
    share, and the last micro batch may be short."""
    return math.ceil(examples // t.num_workers / t.micro_batch) // t.grad_accum


def epochs_to_stream(epoch_size: int, t: TrainConfig) -> tuple[int, int]:
    """``(epochs, steps_per_epoch)``: the epochs the run's stream needs, at most ``train.epochs``.

    Enough for ``train.max_steps``. Ray Data splits the whole stream, not each epoch, so
    epochs x steps_per_epoch can overcount its micro batches by a few: then one epoch more.
    """
    steps_per_epoch = optimizer_steps(epoch_size, t)
    if steps_per_epoch < 1:
        raise RuntimeError(f"{epoch_size} examples make no optimizer step with {t.num_workers} workers x {t.micro_batch}")
    if not t.max_steps:
        return t.epochs, steps_per_epoch
    epochs = math.ceil(t.max_steps / steps_per_epoch)
    return min(t.epochs, epochs + int(optimizer_steps(epochs * epoch_size, t) < t.max_steps)), steps_per_epoch


def warm_up(model, examples: list[dict], t: TrainConfig, log=print):
    """``train.prior_warmup_steps`` on the AU examples; returns the warmed AU head, or None when skipped.

    The launcher saves the head beside the run's initial checkpoint; a run resumed after a
    crash between the two writes starts with a fresh head (and the warmed projector).
    """
    au = [e for e in examples if e["task"] == "au"]
    if not t.prior_warmup_steps or model.prior_projector is None or not au:
        return None
    import numpy as np
    import torch

    from emola.train.objective import au_head, warm_up_prior

    torch.manual_seed(t.seed)
    head = au_head(model)
    started = time.perf_counter()
    loss = warm_up_prior(model, head, torch.tensor(np.array([e["prior"] for e in au], np.float32)),
                         torch.tensor(np.array([e["au_targets"] for e in au], np.float32)),
                         t.prior_warmup_steps, t.prior_warmup_lr)
    log(f"train: prior warm-up on {len(au)} AU examples, {t.prior_warmup_steps} steps: BCE {loss:.4f} "
        f"({time.perf_counter() - started:.1f} s)")
    return head


@dataclass
class _Examples:
    manifest: Path
    rows: list            # the manifest's rows
    backend_key: str      # the landmark backend their prior vectors were stored under
    examples: list[dict]  # the rows of the run's tasks that have a prior vector, as training examples


def load_examples(cfg: EmolaConfig, tasks: list[str], log=print) -> _Examples:
    """Step 1: the manifest's rows of ``tasks`` joined with their cached prior vectors."""
    from emola.train.examples import build_examples

    check_training_inputs(cfg)
    manifest = Path(cfg.data.manifests) / "train.jsonl"
    rows = list(read_manifest(manifest))
    preflight.require_images([r for r in rows if r.task in tasks], manifest)
    backend_key = manifest_backend_key(cfg.landmarks, rows)
    priors = None
    if cfg.model.prior == "landmarks":
        priors = prior_vectors(cfg.landmarks.cache, backend_key, {r.image_sha256 for r in rows})
    examples = build_examples(rows, tasks, priors)
    if examples.skipped:
        log(f"train: {len(examples.skipped)} rows skipped (no usable prior vector), e.g. {examples.skipped[:3]}")
    if not examples.rows:
        raise preflight.JobInputError(f"no training examples for tasks {tasks} in {manifest}: no row has a prior vector "
                                      f"in {cfg.landmarks.cache} (run the landmarks stage first)")
    return _Examples(manifest, rows, backend_key, examples.rows)


def initial_model(cfg: EmolaConfig, tasks: list[str], data: _Examples, init_dir: Path, log=print) -> None:
    """Step 2: build the initial model (with a readout head when ``train.readout_weight > 0``), fit the
    prior normalization, warm up the AU head, and save them to ``init_dir`` (a resumed run keeps the one
    it started from)."""
    from emola.model.builder import build_emola
    from emola.model.checkpoint import save_checkpoint
    from emola.train.objective import AUX_HEAD_FILE

    if (init_dir / "emola_config.json").is_file():
        return
    corpus = [r.answer for r in data.rows] + [r.question for r in data.rows]
    model, processor, model_cfg = build_emola(cfg.model, profile=cfg.profile, landmark_backend=data.backend_key,
                                              tasks=tasks, corpus=corpus)
    if model.prior_projector is not None and (cfg.model.prior_align or cfg.model.prior_standardize):
        import numpy as np
        import torch

        model.prior_projector.fit_normalization(torch.tensor(np.array([e["prior"] for e in data.examples])),
                                                standardize=cfg.model.prior_standardize)
    if cfg.train.readout_weight > 0:
        from emola.model.readout import ensure_readout

        ensure_readout(model)
    head = warm_up(model, data.examples, cfg.train, log)
    save_checkpoint(model, processor, model_cfg, init_dir)
    if head is not None:
        from safetensors.torch import save_file

        save_file(head.state_dict(), init_dir / AUX_HEAD_FILE)


@dataclass
class _Plan:
    stream: list[dict]       # every epoch's examples back to back
    epoch_sizes: list[int]
    epochs: int
    steps_per_epoch: int
    total_steps: int


def plan_stream(examples: list[dict], init_dir: Path, t: TrainConfig) -> _Plan:
    """Step 3: the run's example stream (each epoch weighted and ordered with its own seed) and its step count."""
    from emola.model.processing import EmolaProcessor
    from emola.train.examples import training_stream, weighted_examples

    processor = EmolaProcessor.load(init_dir)
    epoch_size = len(weighted_examples(examples, t.task_weights, t.seed))
    epochs, steps_per_epoch = epochs_to_stream(epoch_size, t)
    stream, epoch_sizes = training_stream(examples, t.task_weights,
                                          lambda e: len(processor.example_ids(e["question"], e["answer"])[0]),
                                          t.micro_batch, t.seed, epochs, group_by_length=t.group_by_length)
    return _Plan(stream, epoch_sizes, epochs, steps_per_epoch, min(t.max_steps or 10**12, optimizer_steps(len(stream), t)))


def tracking_run(cfg: EmolaConfig, tasks: list[str], name: str, plan: _Plan, backend_key: str,
                 repo_root: Path) -> tuple[str, str]:
    """Step 4: the MLflow run of ``name`` (the one a resumed run started, else a new one with the
    resolved params, the git commit and the DVC data hashes); returns ``(tracking URI, run id)``."""
    import mlflow

    from emola import tracking

    uri = tracking.configure(repo_root)
    mlflow.set_experiment("emola-train")
    previous = mlflow.search_runs(filter_string=f"tags.ray_run_name = '{name}'", max_results=1, output_format="list")
    if previous:
        return uri, previous[0].info.run_id
    with mlflow.start_run(run_name=name, tags={"ray_run_name": name, "profile": cfg.profile,
                                                "tasks": ",".join(tasks)}) as run:
        params = tracking.flatten(cfg.model_dump())
        params.update({"git.commit": tracking.git_commit(repo_root), "examples": str(plan.epoch_sizes[0]),
                       "epochs_streamed": str(plan.epochs), "total_steps": str(plan.total_steps),
                       "landmarks.backend_key": backend_key})
        params.update(tracking.dvc_data_hashes(repo_root))
        for start in range(0, len(params), 90):  # MLflow accepts at most 100 params per call
            mlflow.log_params(dict(list(params.items())[start:start + 90]))
        return uri, run.info.run_id


class _Relay:
    """Prints the lines appended to a file while a block runs (a thread polling it twice a second), and the rest
    at the end: the training progress a local run's workers write (their own output stays in Ray's logs)."""

    def __init__(self, path: Path, log):
        self.path, self.log = path, log
        self.offset = path.stat().st_size if path.is_file() else 0   # a resumed run: only what is new
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, name="progress-relay", daemon=True)

    def __enter__(self) -> "_Relay":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self._emit()

    def _follow(self) -> None:
        while not self.done.wait(0.5):
            self._emit()

    def _emit(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]   # a line being written waits for its end
        self.offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            self.log(line)


def fit(cfg: EmolaConfig, name: str, storage: Path, plan: _Plan, init_dir: Path, uri: str, run_id: str, log=print):
    """Step 5: the Ray Train run (Ray Data stream, DeepSpeed workers; resumes from its last checkpoint). A local
    run relays the workers' progress lines (``progress.log``) through ``log``; on a cluster Ray forwards them."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from emola.runtime import init_ray, is_local
    from emola.train.recipe import PROGRESS_LOG, train_loop_per_worker

    t = cfg.train
    init_ray()
    cpus = ray.cluster_resources().get("CPU", 1)
    # Train workers leave a share of every CPU to the data pipeline: actors holding all
    # CPUs starve Ray Data's tasks (a deadlock on 2 cores).
    worker_cpus = 1.0 if t.use_gpu else max(0.25, min(1.0, (cpus - 0.5) / t.num_workers))
    # One dataset for every epoch of the run (emola.train.examples.training_stream). It holds
    # the examples, not their tensors: each worker preprocesses its own micro batches as it
    # reads them (emola.train.recipe), so no pixel arrays travel through the object store.
    dataset = ray.data.from_items(plan.stream, override_num_blocks=max(t.num_workers, min(len(plan.stream) // 64, 64)))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"params": cfg.model_dump(), "init_dir": str(init_dir), "total_steps": plan.total_steps,
                           "steps_per_epoch": plan.steps_per_epoch,
                           "mlflow_run_id": run_id, "tracking_uri": uri, "relay_progress": is_local(),
                           "threads_per_worker": max(1, int(worker_cpus)) if not t.use_gpu else 4},
        datasets={"train": dataset},
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": worker_cpus}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints,
                                                         checkpoint_score_attribute="step",
                                                         checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
        ),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
    )
    if not is_local():
        return trainer.fit()
    with _Relay(storage / name / PROGRESS_LOG, log):
        return trainer.fit()


def export(result, name: str, output: Path, total: int, tasks: list[str], uri: str, run_id: str) -> dict:
    """Step 6: the final checkpoint's exported model to ``output`` (atomically) with its ``training.json``."""
    from emola.train.recipe import EXPORT_DIR

    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} reported no checkpoint")
    with result.checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / "train_state.json").read_text())
        if not state.get("finished"):
            raise RuntimeError(f"training run {name} ended at step {state['step']} of {total} without exporting")
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = output.with_name(f".{output.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(Path(directory) / EXPORT_DIR, staging)
    (staging / TRAINING_FILE).write_text(json.dumps({
        "mlflow_run_id": run_id, "tracking_uri": uri, "ray_run_name": name, "steps": state["step"],
        "final_loss": state["loss"], "tasks": tasks}, indent=2) + "\n")
    replace_dir(staging, output)
    return state


def log_model(output: Path, data: _Examples, tasks: list[str], run_id: str, state: dict) -> None:
    """Step 7: the exported model as an MLflow model in the training run (one training face as its input example)."""
    import mlflow

    from emola.mlflow_model import log_emola_model

    with mlflow.start_run(run_id=run_id):
        log_emola_model(output, example_image=next((r.image_path() for r in data.rows if r.task in tasks), None))
        mlflow.log_metric("final_loss", state["loss"], step=state["step"])


def train_one(cfg: EmolaConfig, tasks: list[str], output: Path, *, repo_root: Path, log=print) -> TrainingOutcome:
    """Train one model on ``tasks`` and export it to ``output``: the steps above, in order."""
    from emola.train.recipe import STEPS_LOG

    started = time.perf_counter()
    t = cfg.train
    if not t.use_gpu:   # DeepSpeed (imported on the way) otherwise warns that it found no GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    data = load_examples(cfg, tasks, log)
    name = run_name_for(cfg, tasks, hashlib.sha256(data.manifest.read_bytes()).hexdigest())
    storage = Path(t.storage_path).resolve()
    init_dir = storage / name / "init"
    initial_model(cfg, tasks, data, init_dir, log)
    plan = plan_stream(data.examples, init_dir, t)
    uri, run_id = tracking_run(cfg, tasks, name, plan, data.backend_key, repo_root)
    log(f"train: run {name}: {plan.epoch_sizes[0]} examples x {plan.epochs} epochs, {t.num_workers} workers x micro "
        f"batch {t.micro_batch} x accumulation {t.grad_accum}, {plan.total_steps} steps, ZeRO-{t.zero_stage}, "
        f"{t.precision}; MLflow {uri} run {run_id}")
    log(f"train: a line every {t.log_every} steps here; every step in {storage / name / STEPS_LOG} and MLflow")
    result = fit(cfg, name, storage, plan, init_dir, uri, run_id, log)
    state = export(result, name, output, plan.total_steps, tasks, uri, run_id)
    log_model(output, data, tasks, run_id, state)
    seconds = time.perf_counter() - started
    log(f"train: exported {output} after {state['step']} steps (final loss {state['loss']:.4f}) in {seconds:.0f} s")
    return TrainingOutcome(output, name, run_id, state["step"], state["loss"], seconds,
                           float(result.metrics.get("samples_per_s", 0.0)), float(result.metrics.get("peak_rss_mb", 0.0)))
