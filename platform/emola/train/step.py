"""The training step, with or without Ray: model preparation, the optimizer engine, one micro batch.

:class:`TrainStep` is what a Ray Train worker runs (:mod:`emola.train.recipe`) and what
the benchmarks run in a single process (``benchmarks/train.py``, ``benchmarks/gpu.py``):
the same preparation, the same loss, the same optimizer step.

Preparation (:func:`prepare_model`), each a ``train`` param, measured on and off in
``benchmarks/gpu.py`` (``emola-7b`` shape) and ``benchmarks/train.py`` (``tiny``):

- ``checkpointing``: which decoder layers recompute their activations in the backward
  pass (``none``, ``all``, ``every_other``, ``every_fourth``), or ``selective``: every layer keeps its
  matrix-product and attention outputs and recomputes only the elementwise operations
  between them (norms, RoPE, SwiGLU), which are cheap to recompute and costly to keep;
  or ``auto``: per micro batch, the fewest recomputed layers whose estimated peak fits
  ``train.memory_budget_gib`` (:mod:`emola.train.memory`);
- ``compile``: ``torch.compile`` of the blocks of each decoder layer (norms, attention,
  MLP), which fuses those elementwise operations (and LoRA's dropout and scaling) into few
  kernels;
- ``sparse_logits``: the LM head only at answer tokens (:mod:`emola.train.objective`);
- ``fused_adam``: PyTorch's fused AdamW, handed to DeepSpeed as its optimizer.

Packing (``train.packing``) happens in the data path (:func:`emola.train.examples.collate`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from emola.config.schema import TrainConfig
from emola.train.memory import GIB, HEADROOM, ActivationMemory, probe, set_interval

#: Operations whose outputs ``checkpointing: selective`` keeps (everything else is recomputed).
_KEPT_OPS = {"mm", "addmm", "bmm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_flash_attention_forward", "_efficient_attention_forward"}


def _keep_matmul_outputs(_ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    name = getattr(op, "__name__", str(op)).split(".")[0]
    return CheckpointPolicy.MUST_SAVE if name in _KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_keep_matmul_outputs)


def decoder_layers(model) -> nn.ModuleList:
    """The language model's decoder layers of an EmoLA model."""
    return model.base_llava.model.language_model.layers


def prepare_model(model, cfg: TrainConfig) -> None:
    """Activation checkpointing and compilation of the decoder layers, as ``cfg`` says (in place).

    Uses transformers' own per-layer switch (``gradient_checkpointing`` on each
    ``GradientCheckpointingLayer``), so ``every_other`` is a choice of layers, not a patch.
    """
    llava = model.base_llava
    if cfg.checkpointing != "none":
        kwargs: dict = {"use_reentrant": False}
        if cfg.checkpointing == "selective":
            kwargs["context_fn"] = _selective_contexts
        if hasattr(llava, "activation_checkpointing_enable"):   # transformers >= 5.24's name
            llava.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        for layer in llava.model.vision_tower.modules():   # frozen: it builds no graph to recompute
            if hasattr(layer, "gradient_checkpointing"):
                layer.gradient_checkpointing = False
        # transformers also hooks every sub-model's input embeddings to require grad (for reentrant checkpointing),
        # the vision tower's patch embedding included: the frozen tower would then record its activations and run
        # its backward pass for nothing (about 10 GiB at the emola-7b shape, micro batch 16). Non-reentrant
        # checkpointing needs no such hook.
        llava.disable_input_require_grads()
        interval = {"every_other": 2, "every_fourth": 4}.get(cfg.checkpointing)
        if interval:   # ("auto" switches the same flags per micro batch; it starts with every layer)
            set_interval(decoder_layers(model), interval)
    if cfg.compile:
        # The blocks inside each layer are compiled, not the layer: the layer's checkpoint wrapper then stays
        # outside the compiled graphs (compiling through it failed in inductor's partitioner on torch 2.11).
        # Dynamic shapes: micro batches differ in length (and, packed, in rows); one graph serves all.
        for layer in decoder_layers(model):
            for block in (layer.input_layernorm, layer.self_attn, layer.post_attention_layernorm, layer.mlp):
                block.compile(dynamic=True)


def init_single_process_group(backend: str) -> None:
    """A one-process ``torch.distributed`` group (benchmarks, tests): what DeepSpeed needs outside Ray."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    dist.init_process_group(backend=backend, rank=0, world_size=1)


@dataclass
class StepMetrics:
    """What one optimizer step reports (after its last micro batch)."""

    loss: float
    lm_loss: float
    aux_loss: float | None
    lr: float
    grad_norm: float
    readout_loss: float | None = None


class TrainStep:
    """One worker's model, optimizer and schedule, and the micro-batch step.

    Args:
        model: an EmoLA model with LoRA applied (:func:`emola.model.lora.apply_lora`).
        cfg: the ``train`` params.
        total_steps: optimizer steps of the run (the schedule's length).
        head_state: a warmed AU head (``train.prior_warmup_steps``).
        engine: ``deepspeed`` (what training runs) or ``plain`` (a single-process
            reference loop with the same loss and optimizer: the benchmarks' baseline).

    With ``deepspeed``, ``torch.distributed`` must be initialized (Ray Train does it; a
    single process calls :func:`init_single_process_group`).
    """

    def __init__(self, model, cfg: TrainConfig, *, total_steps: int, head_state: dict | None = None,
                 engine: str = "deepspeed"):
        from emola.train.objective import TrainingObjective
        from emola.train.optimization import deepspeed_config, make_scheduler, parameter_groups

        self.cfg, self.total_steps, self.kind = cfg, total_steps, engine
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if cfg.use_gpu else "cpu")
        prepare_model(model, cfg)
        if cfg.readout_weight > 0:   # (the launcher's initial model has one already; a bare model gets a fresh one)
            from emola.model.readout import ensure_readout

            ensure_readout(model)
        objective = TrainingObjective(model, cfg.prior_aux_weight, head_state=head_state,
                                      sparse_logits=cfg.sparse_logits, readout_weight=cfg.readout_weight)
        objective.train()
        self.micro = 0
        self.memory: ActivationMemory | None = None   # checkpointing: auto, after the first micro batch's probe
        self.intervals: dict[int, int] = {}            # micro batches per recompute interval chosen (auto)
        if engine == "deepspeed":
            if not cfg.use_gpu:
                os.environ.setdefault("DS_ACCELERATOR", "cpu")   # before deepspeed is imported
            import deepspeed

            groups = parameter_groups(objective, cfg)
            optimizer = torch.optim.AdamW(groups, fused=True) if cfg.fused_adam else None
            # DeepSpeed's ZeRO gathers call torch's deprecated all_gather_into_tensor name at every step.
            warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=objective, optimizer=optimizer, model_parameters=None if optimizer else groups,
                config=deepspeed_config(cfg, use_cpu=not cfg.use_gpu, client_optimizer=optimizer is not None),
                lr_scheduler=partial(make_scheduler, total=total_steps, cfg=cfg))
            self.objective = self.engine.module
        elif engine == "plain":
            if cfg.precision == "bf16":
                objective.to(torch.bfloat16)
            self.objective = objective.to(self.device)
            self.optimizer = torch.optim.AdamW(parameter_groups(objective, cfg), fused=cfg.fused_adam or None)
            self.scheduler = make_scheduler(self.optimizer, total_steps, cfg)
            self.engine = None
        else:
            raise ValueError(f"unknown training engine {engine!r} (deepspeed or plain)")

    @property
    def emola_model(self):
        """The EmoLA model being trained (without the training objective around it)."""
        return self.objective.model

    def __call__(self, batch: dict[str, torch.Tensor]) -> StepMetrics | None:
        """Forward, backward and (after ``grad_accum`` micro batches) the optimizer step.

        ``batch``: :func:`~emola.train.examples.collate` output (its counts are dropped).
        Returns the step's metrics when an optimizer step happened, else None.
        """
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if not k.startswith("num_")}
        if self.cfg.precision == "bf16" and "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
        self.micro += 1
        sized = self._size_checkpointing(inputs) if self.cfg.checkpointing == "auto" else None
        if self.engine is not None:
            loss = self.engine(**inputs).loss
            self.engine.backward(loss)
            self.engine.step()
            if sized is not None and self.device.type == "cuda":
                self.memory.observe(*sized, peak=torch.cuda.max_memory_allocated(self.device))
            if self.micro % self.cfg.grad_accum:
                return None
            grad_norm = float(self.engine.get_global_grad_norm() or 0.0)
        else:
            loss = self.objective(**inputs).loss
            (loss / self.cfg.grad_accum).backward()
            if self.micro % self.cfg.grad_accum:
                if sized is not None and self.device.type == "cuda":
                    self.memory.observe(*sized, peak=torch.cuda.max_memory_allocated(self.device))
                return None
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                [p for p in self.objective.parameters() if p.requires_grad], 1.0))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if sized is not None and self.device.type == "cuda":
            self.memory.observe(*sized, peak=torch.cuda.max_memory_allocated(self.device))
        objective = self.objective
        aux = float(objective.last_aux_loss) if objective.head is not None else None
        readout = float(objective.last_readout_loss) if objective.readout_weight > 0 else None
        return StepMetrics(loss=float(loss.detach()), lm_loss=float(objective.last_lm_loss), aux_loss=aux,
                           lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm, readout_loss=readout)

    # ----------------------------------------------------------- checkpointing: auto
    def _size_checkpointing(self, inputs: dict[str, torch.Tensor]) -> tuple[int, int, float]:
        """Choose this micro batch's recompute interval (:mod:`emola.train.memory`); returns what
        :meth:`ActivationMemory.observe` needs after the step: tokens, interval, held bytes."""
        layers = decoder_layers(self.emola_model)
        cuda = self.device.type == "cuda"
        if self.memory is None:
            self.memory = self._probe(inputs, layers)
        held = float(torch.cuda.memory_allocated(self.device)) if cuda else 0.0
        tokens = int(inputs["input_ids"].numel())
        interval = self.memory.choose(tokens, held)
        set_interval(layers, interval)
        self.intervals[interval] = self.intervals.get(interval, 0) + 1
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        return tokens, interval, held

    def _probe(self, inputs: dict[str, torch.Tensor], layers) -> ActivationMemory:
        model = self.emola_model
        text = model.base_llava.config.text_config
        budget = (self.cfg.memory_budget_gib * GIB if self.cfg.memory_budget_gib is not None
                  else torch.cuda.get_device_properties(self.device).total_memory - HEADROOM
                  if self.device.type == "cuda" else float("inf"))
        small = _first_rows(inputs, 2, model)
        return probe(lambda: self.objective(**small).loss, layers, int(small["input_ids"].numel()), text.hidden_size,
                     model.base_llava.get_input_embeddings().weight.element_size(), self.objective.parameters(), budget)


_ROW_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "loss_weights")
_SAMPLE_KEYS = ("pixel_values", "prior", "au_targets", "au_mask", "emotion_targets")


def _first_rows(inputs: dict[str, torch.Tensor], rows: int, model) -> dict[str, torch.Tensor]:
    """The first ``rows`` rows of a collated micro batch with their samples' images, priors and AU
    targets (a packed row holds several samples: counted by their <prior> or <image> tokens)."""
    ids = inputs["input_ids"][:rows]
    samples = ids.shape[0]
    if "attention_mask" not in inputs:   # packed
        if model.prior_token_id is not None and "prior" in inputs:
            samples = int((ids == model.prior_token_id).sum())
        elif model.image_token_id is not None and "pixel_values" in inputs:
            samples = int((ids == model.image_token_id).sum()) // model.base_llava.config.image_seq_length
    out = {k: v[:rows] for k, v in inputs.items() if k in _ROW_KEYS}
    out.update({k: v[:samples] for k, v in inputs.items() if k in _SAMPLE_KEYS})
    out.update({k: v for k, v in inputs.items() if k not in _ROW_KEYS and k not in _SAMPLE_KEYS})
    return out
