"""The per-worker training recipe: ``setup``, ``train``, ``save_checkpoint``, ``export``.

Runs inside each Ray Train worker. The model, DeepSpeed engine and micro-batch step are
:class:`~emola.train.step.TrainStep` (ZeRO stage, precision, micro batch, accumulation and
the speed levers from ``train`` params); the optimizer state, scheduler and
data position are checkpointed every ``train.checkpoint_every`` steps through
``ray.train.report``, and a restarted worker group resumes from the latest one. Only
checkpoints every worker finished reporting are registered, so a resume never picks a
half-written one. Rank 0 logs per-step metrics to MLflow and prints a progress line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

TRAIN_STATE = "train_state.json"
DS_TAG = "deepspeed"
EXPORT_DIR = "model"
STEPS_LOG = "steps.log"         # every step's line, in the run folder beside the initial model
PROGRESS_LOG = "progress.log"   # the terminal's lines (every log_every-th step, resume, end), beside it


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point (``config`` is built by :mod:`emola.train.launcher`)."""
    recipe = TrainingRecipe(config)
    recipe.setup()
    if not recipe.finished:
        recipe.train()
    recipe.cleanup()


class TrainingRecipe:
    def __init__(self, config: dict):
        from emola.config import EmolaConfig

        self.raw = config
        self.cfg = EmolaConfig.model_validate(config["params"])
        self.train_cfg = self.cfg.train
        self.total_steps: int = config["total_steps"]
        self.step = 0               # optimizer steps done
        # The dataset streams every epoch of the run (emola.train.examples.training_stream): one
        # pass normally; a pass that ends before the last step (a remainder) starts another.
        self.passes = 0
        self.micro_in_pass = 0      # micro batches of this pass already consumed
        self.finished = False
        self.last_loss = float("nan")
        self.timed_samples, self.timed_seconds = 0, 0.0  # throughput after the first steps (warm-up excluded)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import ray.train
        import torch

        if not self.train_cfg.use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
            torch.set_num_threads(max(1, self.raw.get("threads_per_worker", 1)))
        import deepspeed

        from emola.model.checkpoint import load_checkpoint
        from emola.model.lora import apply_lora
        from emola.train.objective import AUX_HEAD_FILE
        from emola.train.step import TrainStep

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        # Ray Train logs two INFO lines per checkpoint and rank; the run's own lines say what matters.
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        # Ray Train already created the process group; DeepSpeed reuses it.
        deepspeed.init_distributed(dist_backend="nccl" if self.train_cfg.use_gpu else "gloo")
        torch.manual_seed(self.train_cfg.seed)

        checkpoint = ray.train.get_checkpoint()
        state = None
        if checkpoint:
            with checkpoint.as_directory() as directory:
                state = json.loads((Path(directory) / TRAIN_STATE).read_text())
            if state.get("finished"):
                self.finished = True
                self._log(f"train: run already finished at step {state['step']}; nothing to do")
                return

        model, self.processor, self.model_config = load_checkpoint(self.raw["init_dir"])
        apply_lora(model, self.cfg.model.lora)
        head_state = None
        head_file = Path(self.raw["init_dir"]) / AUX_HEAD_FILE
        if self.train_cfg.prior_aux_weight > 0 and head_file.is_file():
            from safetensors.torch import load_file

            head_state = load_file(head_file)
        self.trainer = TrainStep(model, self.train_cfg, total_steps=self.total_steps, head_state=head_state)
        self.engine, self.scheduler = self.trainer.engine, self.trainer.scheduler
        if state:
            with checkpoint.as_directory() as directory:
                self.engine.load_checkpoint(directory, tag=DS_TAG)
            self.step, self.passes, self.micro_in_pass = state["step"], state["passes"], state["micro_in_pass"]
            self._log(f"train: resumed from step {self.step} (micro batch {self.micro_in_pass} of pass {self.passes})")
        self._start_tracking()

    def _start_tracking(self) -> None:
        self.mlflow = None
        if self.rank == 0 and self.raw.get("mlflow_run_id"):
            import mlflow

            mlflow.set_tracking_uri(self.raw["tracking_uri"])
            mlflow.start_run(run_id=self.raw["mlflow_run_id"], log_system_metrics=True)
            self.mlflow = mlflow

    def _log(self, line: str) -> None:
        """A terminal line (rank 0): in ``progress.log``, which a local driver relays (``relay_progress``), and
        otherwise on the worker's stdout, which Ray forwards to the job's driver."""
        if getattr(self, "rank", 0) == 0:
            if not self.raw.get("relay_progress"):
                # Not print(): Ray Train patches it into a logger that echoes every line a second time.
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            with (Path(self.raw["init_dir"]).parent / PROGRESS_LOG).open("a") as log:
                log.write(line + "\n")
            self._log_to_file(line)

    def _log_to_file(self, line: str) -> None:
        """Rank 0 keeps every step's line in ``<run folder>/steps.log`` (the terminal gets every ``log_every``-th)."""
        if getattr(self, "rank", 0) == 0:
            with (Path(self.raw["init_dir"]).parent / STEPS_LOG).open("a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    # ------------------------------------------------------------------ train
    def _micro_batches(self):
        """This worker's shard, each micro batch tokenized, loaded and padded or packed
        (:func:`emola.train.examples.collate`) in Ray Data's prefetch thread, overlapping
        the previous step's compute."""
        import ray.train
        from ray.data.collate_fn import NumpyBatchCollateFn

        from emola.train.examples import Preprocess, collate

        t = self.train_cfg
        preprocess = Preprocess(self.raw["init_dir"], t.max_length,
                                aux_targets=t.prior_aux_weight > 0 or t.readout_weight > 0,
                                au_code_weight=t.au_code_weight)
        pad_id = self.processor.tokenizer.pad_token_id

        class MicroBatch(NumpyBatchCollateFn):
            def __call__(self, batch):
                return collate(preprocess(batch), pad_id, t.max_length if t.packing else None)

        return ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=t.micro_batch,
                                                                         collate_fn=MicroBatch())

    def train(self) -> None:
        window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
        self.started, self.first_step = window_start, self.step
        while self.step < self.total_steps:
            for index, batch in enumerate(self._micro_batches()):
                if index < self.micro_in_pass:
                    continue  # consumed before the checkpoint this run resumed from
                window_samples += int(batch["num_samples"]) * self.world
                window_tokens += int(batch["num_tokens"]) * self.world
                stepped = self.trainer(batch)
                self.micro_in_pass = index + 1
                if stepped is None:
                    continue
                self.step += 1
                self.last_loss = stepped.loss
                elapsed = time.perf_counter() - window_start
                metrics = {"loss": stepped.loss, "lm_loss": stepped.lm_loss, "lr": stepped.lr,
                           "grad_norm": stepped.grad_norm, "samples_per_s": window_samples / elapsed,
                           "tokens_per_s": window_tokens / elapsed, "epoch": self.step / self.raw["steps_per_epoch"]}
                if stepped.aux_loss is not None:
                    metrics["aux_loss"] = stepped.aux_loss
                if stepped.readout_loss is not None:
                    metrics["readout_loss"] = stepped.readout_loss
                if self.step > 2:
                    self.timed_samples += window_samples
                    self.timed_seconds += elapsed
                window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
                if self.mlflow:  # queued: a blocking database write per step stalls every rank's next step
                    self.mlflow.log_metrics(metrics, step=self.step, synchronous=False)
                line = (f"step {self.step}/{self.total_steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                        f"grad_norm {metrics['grad_norm']:.3f} {metrics['samples_per_s']:.1f} samples/s "
                        f"{metrics['tokens_per_s']:.0f} tokens/s")
                if self.step % self.train_cfg.log_every == 0 or self.step == self.total_steps:
                    done = self.step - self.first_step
                    eta = (time.perf_counter() - self.started) / max(done, 1) * (self.total_steps - self.step)
                    self._log(f"{line}, ETA {int(eta // 60)} min {int(eta % 60):02d} s")
                else:
                    self._log_to_file(line)
                if self.step == self.total_steps:
                    self.export()
                    return
                if self.step % self.train_cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            self.passes += 1
            self.micro_in_pass = 0

    def _state(self, finished: bool) -> dict:
        return {"step": self.step, "passes": self.passes, "micro_in_pass": self.micro_in_pass,
                "total_steps": self.total_steps, "loss": self.last_loss, "finished": finished}

    def _final_metrics(self) -> dict:
        """Loss, step, mean samples/s after warm-up, and this worker's peak resident memory."""
        import resource

        return {"loss": self.last_loss, "step": self.step,
                "samples_per_s": self.timed_samples / self.timed_seconds if self.timed_seconds else 0.0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    @property
    def emola_model(self):
        """The EmoLA model being trained (inside the training objective)."""
        return self.trainer.emola_model

    def save_checkpoint(self) -> None:
        """DeepSpeed state of every rank plus the data position, reported as one Ray checkpoint."""
        import ray.train

        with tempfile.TemporaryDirectory() as directory:
            self.engine.save_checkpoint(directory, tag=DS_TAG)
            if self.rank == 0:
                Path(directory, TRAIN_STATE).write_text(json.dumps(self._state(finished=False)))
            ray.train.report({"loss": self.last_loss, "step": self.step},
                             checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=f"step-{self.step:06d}")

    def export(self) -> None:
        """The final model in the EmoLA checkpoint format, reported as the last Ray checkpoint."""
        import ray.train

        from emola.model.checkpoint import save_checkpoint

        with tempfile.TemporaryDirectory() as directory:
            if self.train_cfg.zero_stage == 3:  # parameters are partitioned: gather them to save
                import deepspeed

                with deepspeed.zero.GatheredParameters(list(self.emola_model.parameters()), modifier_rank=None):
                    if self.rank == 0:
                        save_checkpoint(self.emola_model, self.processor, self.model_config, Path(directory, EXPORT_DIR))
            elif self.rank == 0:
                save_checkpoint(self.emola_model, self.processor, self.model_config, Path(directory, EXPORT_DIR))
            if self.rank == 0:
                Path(directory, TRAIN_STATE).write_text(json.dumps(self._state(finished=True)))
            ray.train.report(self._final_metrics(),
                             checkpoint=ray.train.Checkpoint.from_directory(directory) if self.rank == 0 else None,
                             checkpoint_dir_name=f"final-{self.step:06d}")
        self._log(f"train: finished {self.step} steps, final loss {self.last_loss:.4f}")

    def cleanup(self) -> None:
        if getattr(self, "mlflow", None):
            self.mlflow.flush_async_logging()
            self.mlflow.end_run()
