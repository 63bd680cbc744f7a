"""The typed shape of ``params.yaml``: one model per pipeline stage.

Every model forbids unknown keys and validates strictly (a string is not a number), so a
typo in ``params.yaml`` or in an override fails loudly with the key's dotted path instead
of being ignored. Values come from ``params.yaml`` only: the models carry no defaults
for anything a profile decides.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Task = Literal["emotion", "au"]


class Section(BaseModel):
    """Base for every params section: strict types, no unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------- data
class SynthConfig(Section):
    """FABA-Synth generation (``emola data synth``)."""

    train: int = Field(ge=1, description="images in the train split")
    test: int = Field(ge=1, description="images in the test split")
    seed: int
    image_size: int = Field(ge=64, le=1024, description="square image side in pixels")
    au_only_fraction: float = Field(
        ge=0.0, le=1.0, description="share of images with free AU combinations (AU task only)"
    )
    workers: int = Field(ge=1, description="processes used for rendering")


class ReleaseFiles(Section):
    """Annotation files of a FABA-Instruct release, relative to its root."""

    emotion_train: str
    emotion_test: str
    au_train: str
    au_test: str

    def by_task_split(self) -> dict[tuple[str, str], str]:
        """``{(task, split): relative path}`` for the four files."""
        return {
            ("emotion", "train"): self.emotion_train,
            ("emotion", "test"): self.emotion_test,
            ("au", "train"): self.au_train,
            ("au", "test"): self.au_test,
        }


class FabaInstructImport(Section):
    """Where the user's copy of the official FABA-Instruct release lives."""

    root: str | None = Field(description="release root; required when data.source is faba-instruct")


class DataConfig(Section):
    """Stage ``data``: produce a release (synthesize or import) and convert it to manifests."""

    source: Literal["synth", "faba-instruct"]
    release: str = Field(description="the versioned release folder the stage writes (official layout)")
    manifests: str = Field(description="folder of the normalized manifests")
    files: ReleaseFiles
    synth: SynthConfig
    faba_instruct: FabaInstructImport
    max_image_pixels: int = Field(ge=1, description="images above this pixel count are rejected")

    @model_validator(mode="after")
    def _import_needs_root(self) -> "DataConfig":
        if self.source == "faba-instruct" and not self.faba_instruct.root:
            raise ValueError(
                "data.faba_instruct.root must name the FABA-Instruct release folder "
                "when data.source is 'faba-instruct'"
            )
        return self


# ---------------------------------------------------------------------- landmarks
class InsightFaceConfig(Section):
    model_path: str | None = Field(
        description="2d106det ONNX file; the EMOLA_INSIGHTFACE_MODEL environment variable wins"
    )
    mode: Literal["paper", "aligned"]


class LandmarksConfig(Section):
    """Stage ``landmarks``: the facial prior expert's input."""

    backend: Literal["annotation", "dlib-68", "insightface-2d106"]
    insightface: InsightFaceConfig
    all_faces: bool
    cache: str = Field(description="folder of the landmark cache (parquet)")
    cpus_per_actor: float = Field(gt=0)
    gpus_per_actor: float = Field(ge=0)
    actors: int = Field(ge=1)
    batch_size: int = Field(ge=1)


# -------------------------------------------------------------------------- model
class TinyArchitecture(Section):
    """Small random-init LLaVA used by the ``tiny`` profile (CLIP-style vision, Llama-style LM)."""

    vision_hidden: int = Field(ge=8)
    vision_layers: int = Field(ge=2, description="vision_feature_layer -2 needs two layers")
    vision_heads: int = Field(ge=1)
    patch_size: int = Field(ge=2)
    text_hidden: int = Field(ge=8)
    text_layers: int = Field(ge=1)
    text_heads: int = Field(ge=1)
    text_intermediate: int = Field(ge=8)
    vocab_size: int = Field(ge=300)
    init_std: float = Field(gt=0, description="weight init std of the random decoder (Llama's default: 0.02)")


class LoraConfig(Section):
    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0.0, lt=1.0)
    targets: list[str] = Field(min_length=1, description="LLM linear layers LoRA adapts")
    modules_to_save: list[str] = Field(
        description="LLM modules trained in full (a random-init decoder needs lm_head and norm)"
    )


class ModelConfig(Section):
    """EmoLA architecture: base checkpoint, prior token, ablation switches, LoRA."""

    base: str | None = Field(description="HF-format LLaVA checkpoint (hub id or path); null builds `tiny`")
    tiny: TinyArchitecture | None
    image_size: int = Field(ge=32)
    vision_feature_layer: int
    vision: Literal["clip", "none"]
    prior: Literal["landmarks", "none"]
    prior_dim: int = Field(ge=1, description="length of the landmark prior vector")
    prior_align: bool = Field(
        description="similarity-align landmark priors (position, scale, in-plane rotation) to the training "
                    "mean shape before the projector (published: false, raw vectors)")
    prior_standardize: bool = Field(
        description="standardize prior vectors with training-set mean and std (published: false, raw vectors)")
    template: str = Field(description="conversation template name")
    dtype: Literal["float32", "bfloat16", "float16"]
    lora: LoraConfig

    @model_validator(mode="after")
    def _tiny_needs_architecture(self) -> "ModelConfig":
        if self.base is None and self.tiny is None:
            raise ValueError("model.tiny must be set when model.base is null")
        return self


# -------------------------------------------------------------------------- train
class TrainConfig(Section):
    """Stage ``train``: Ray Train + DeepSpeed LoRA fine-tuning."""

    tasks: list[Task] = Field(min_length=1)
    task_weights: dict[Task, float] = Field(
        default_factory=dict,
        description="times each task's examples appear per epoch (default 1; fractions round per example with "
                    "train.seed), e.g. {au: 2}; published: {}")
    separate_models: bool = Field(description="one model per task, as published")
    epochs: int = Field(ge=1)
    max_steps: int | None = Field(ge=1, description="stop after this many optimizer steps")
    micro_batch: int = Field(ge=1)
    grad_accum: int = Field(ge=1)
    lr: float = Field(gt=0)
    projector_lr: float = Field(gt=0)
    prior_aux_weight: float = Field(ge=0, description="weight of the AU loss on the prior token; 0: published recipe")
    readout_weight: float = Field(
        default=0.0, ge=0,
        description="weight of the readout head's AU and emotion losses (the head is trained and exported with the "
                    "model: per-frame probabilities without generation); 0: no head, the published recipe")
    prior_warmup_steps: int = Field(
        default=0, ge=0,
        description="full-batch steps fitting the prior projector and the AU head to the AU labels before training; "
                    "0: published recipe")
    prior_warmup_lr: float = Field(default=1e-2, gt=0, description="AdamW learning rate of those steps")
    au_code_weight: float = Field(
        default=1.0, gt=0,
        description="language-model loss weight of the answer tokens that spell an AU code (AU12); 1: published recipe")
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    schedule: Literal["cosine", "linear", "constant"]
    max_length: int = Field(ge=16)
    checkpointing: Literal["none", "all", "every_other", "every_fourth", "selective", "auto"] = Field(
        description="activation checkpointing of the decoder layers: none; all (recompute every layer, published); "
                    "every_other or every_fourth layer; selective (every layer keeps its matrix-product and attention "
                    "outputs and recomputes only the elementwise operations); auto (per micro batch, the fewest "
                    "recomputed layers whose estimated peak fits memory_budget_gib)")
    memory_budget_gib: float | None = Field(
        default=None, gt=0,
        description="checkpointing auto: memory a worker's step may use; null: the GPU's memory less 4 GiB (CPU: no "
                    "limit)")
    compile: bool = Field(description="torch.compile each decoder layer (fuses norms, RoPE, SwiGLU, LoRA scaling)")
    sparse_logits: bool = Field(
        description="apply the LM head only where a loss is taken (answer tokens); the loss is unchanged")
    fused_adam: bool = Field(description="PyTorch's fused AdamW kernel instead of the per-tensor loop")
    packing: bool = Field(
        description="pack the micro batch's samples into rows of up to max_length tokens, attention kept within "
                    "each sample, instead of padding every sample to the longest; the loss is unchanged")
    precision: Literal["fp32", "bf16"]
    zero_stage: Literal[0, 1, 2, 3]
    offload: Literal["none", "cpu"]
    num_workers: int = Field(ge=1)
    use_gpu: bool
    seed: int
    group_by_length: bool
    checkpoint_every: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    max_failures: int = Field(ge=0)
    storage_path: str
    output: str = Field(description="exported model folder (a DVC output)")
    log_every: int = Field(ge=1)

    @field_validator("task_weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = {task: w for task, w in weights.items() if not w > 0}
        if bad:
            raise ValueError(f"task weights must be > 0 (drop the task from train.tasks instead): {bad}")
        return weights


# ----------------------------------------------------------------------- evaluate
class GenerationConfig(Section):
    """Decoding: temperature 0 is greedy; published EmoLA samples at 0.01 with top_p 0.5."""

    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(ge=1)
    seed: int = Field(default=0, ge=0, description="the sampling seed of every answer (a request's answer depends "
                                                   "only on it, its prompt and these settings)")


#: Published EmoLA sampling: temperature 0.01, top_p 0.5 (the answer stops at </s>). The published scripts allow
#: 2,048 new tokens, which needs the model's whole 4,096-token context; 512 here (AU answers average about 300
#: tokens) fits the engine's 2,048 beside the 576 image tokens (docs/reproducing-emola.md, "Evaluate exactly as
#: published", sets 2,048).
PUBLISHED_GENERATION = GenerationConfig(temperature=0.01, top_p=0.5, max_new_tokens=512, seed=0)


class EvaluateConfig(Section):
    """Stage ``evaluate``: REGE on the test manifests."""

    dataset: Literal["FABA", "DISFA", "BP4D", "GFT", "EmotioNet"]
    batch_size: int = Field(ge=1)
    replicas: int = Field(ge=1)
    generation: GenerationConfig
    reports: str
    register_as: str = Field(description="MLflow registered model name")


# ---------------------------------------------------------------------- inference
class InferenceConfig(Section):
    """The inference engine (``emola.engine``) that evaluation, Serve and the Analyzer generate with."""

    device: Literal["auto", "cpu", "cuda"] = Field(description="auto: CUDA when there is a GPU")
    merge_lora: bool = Field(description="merge LoRA into the base weights at load (the checkpoint is unchanged)")
    max_batch: int = Field(ge=1, description="requests decoded together at most (KV-cache slots); 1: no batching")
    max_context: int | None = Field(
        ge=16, description="tokens per request, prompt and answer (KV-cache length); null: the model's context")
    max_prefill_tokens: int = Field(
        ge=1, description="padded prompt tokens prefilled in one step; later arrivals start a step later")
    length_bucket: int = Field(ge=1, description="decode attention reads the cache in multiples of this many tokens")
    cuda_graphs: bool = Field(description="on CUDA, capture each decode shape once and replay it (CPU: eager)")
    overlap_steps: bool = Field(
        description="launch each step before reading the tokens of the one before it: the device computes while "
                    "the host hands out tokens and prepares the next step (a request that ends on its end token "
                    "costs one discarded row of a step); the same tokens either way; on CPU nothing runs beside "
                    "the host")
    decode_attention: Literal["matmul", "sdpa", "varlen"] = Field(
        description="decode-step attention over the KV cache: two matrix products (exact like transformers' "
                    "eager attention) or PyTorch's fused scaled_dot_product_attention kernel, each row over the "
                    "cache up to a length bucket; or varlen, each row over its own length through a Triton "
                    "kernel on CUDA (needs packed_prefill; on an H200 at the emola-7b shape faster than sdpa from "
                    "8 to 64 requests in flight, a little slower with one)")
    packed_prefill: bool = Field(
        description="arrivals' prompts go through the running requests' decode step (one pass, the decode rows "
                    "riding on the prompts' weight reads) instead of a prefill pass of their own; on CUDA it needs "
                    "a variable-length attention kernel that passes its check, else the engine prefills apart")
    kv_cache_dtype: Literal["auto", "float8_e4m3fn"] = Field(
        description="the KV cache's dtype: auto, the model's; float8_e4m3fn halves the bytes each decode step reads "
                    "(needs decode_attention varlen; lossy: keys and values rounded to 3 mantissa bits)")
    kernel_fallback: bool = Field(
        description="on CUDA a fast kernel (Triton decode attention, RoPE, the prompts' variable-length attention) "
                    "is checked against its PyTorch reference when the engine starts; false: a failed check stops "
                    "the engine with the reason (a replica is not ready); true: it runs the slower PyTorch path "
                    "instead and says so")
    prefill_bucket: int | None = Field(
        ge=1, description="pad prompts to a multiple of this many tokens (and a group of prompts to a row bucket) so "
                          "that on CUDA each prefill shape, vision tower included, is captured once as a CUDA graph; "
                          "null: prompts are prefilled at their own length, eagerly (packed_prefill: not used)")

    @model_validator(mode="after")
    def _varlen_is_packed(self) -> "InferenceConfig":
        if self.decode_attention == "varlen" and not self.packed_prefill:
            raise ValueError("inference.decode_attention varlen needs inference.packed_prefill: true")
        if self.kv_cache_dtype != "auto" and self.decode_attention != "varlen":
            raise ValueError(f"inference.kv_cache_dtype {self.kv_cache_dtype} needs inference.decode_attention: varlen "
                             f"(the kernel that reads it), not {self.decode_attention}")
        return self


# -------------------------------------------------------------------------- serve
class ServeConfig(Section):
    """Ray Serve deployment of EmoLA."""

    host: str
    port: int = Field(ge=1, le=65535)
    checkpoint: str | dict[Task, str] = Field(
        description="checkpoint folder (one model, or train.separate_models' per-task parts) or MLflow URI such as "
                    "models:/emola@champion; or one reference per task, e.g. {emotion: models:/emola-emotion@champion, "
                    "au: models:/emola-au@champion}")
    model_name: str = Field(min_length=1, description="the model id of /v1/models and chat completions")
    landmark_cache: str | None = Field(description="landmark cache consulted by image hash before the live backend")
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float = Field(gt=0)
    max_ongoing_requests: int = Field(ge=1)
    max_queued_requests: int = Field(
        ge=1, description="requests waiting for a model replica beyond max_ongoing_requests; more get 503")
    max_body_bytes: int = Field(ge=1024)
    max_image_pixels: int = Field(ge=1)
    request_timeout_s: float = Field(gt=0)
    allow_remote_images: bool
    num_cpus: float = Field(gt=0)
    num_gpus: float = Field(ge=0)

    @model_validator(mode="after")
    def _replica_bounds(self) -> "ServeConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError("serve.min_replicas must not exceed serve.max_replicas")
        if isinstance(self.checkpoint, dict) and not self.checkpoint:
            raise ValueError("serve.checkpoint: an empty task mapping")
        return self


# -------------------------------------------------------------------------- video
class VideoLimitsConfig(Section):
    """Caps on one video: before decoding (bytes, stated duration and resolution), on what is decoded, and on the
    analysis."""

    max_bytes: int = Field(ge=1)
    max_duration_s: float = Field(gt=0, description="stated duration, and the presentation time decoding may reach")
    max_frames: int = Field(ge=1, description="sampled frames")
    max_pixels: int = Field(ge=1, description="width x height of every decoded frame, whatever the header says")
    max_decoded_frames: int = Field(ge=1, description="frames decoded, sampled or not")
    max_decode_s: float = Field(gt=0, description="wall time of one decoding pass")
    max_faces: int = Field(ge=1, description="faces analysed per frame: the largest")
    max_descriptions: int = Field(ge=0, description="descriptions generated per video: the strongest key moments")


class ClipsConfig(Section):
    """FABA-Synth expression clips (stage ``clips``): neutral, onset, apex, offset, with head motion."""

    count: int = Field(ge=1)
    seed: int
    size: int = Field(ge=64, description="square side in pixels")
    fps: float = Field(gt=0)
    seconds: float = Field(gt=0)


class VideoConfig(Section):
    """Per-frame video analysis (``emola analyze clip.mp4``, stage ``video``, Serve's video uploads)."""

    input: str = Field(description="folder of videos the video stage analyses")
    reports: str = Field(description="the stage's per-video tables and file report")
    metrics: str = Field(description="the stage's scores of the readout head on labelled clips")
    fps: float | None = Field(ge=0.1, le=60, description="frames sampled per second, 0.1 to 60; null: every frame")
    smoothing: int = Field(ge=1, description="centered window over sampled frames (1: none)")
    describe: bool = Field(description="generate a description at each key moment")
    task: Task = Field(description="the question asked at key moments")
    landmarks: Literal["auto", "detect"] = Field(
        description="auto: the landmarks a clip's label file ships (FABA-Synth clips), else the detector; "
                    "detect: always the checkpoint's landmark backend")
    min_iou: float = Field(gt=0, le=1, description="box overlap that continues a face from one frame to the next")
    max_gap: int = Field(ge=0, description="sampled frames a face may be missing and keep its id")
    margin: float = Field(ge=0, description="crop margin, a fraction of the face box's longer side")
    limits: VideoLimitsConfig
    upload_limits: VideoLimitsConfig = Field(description="caps on a video uploaded to Serve's /v1/analyze")
    actors: int = Field(ge=1, description="Ray Data actors of the video stage, each with its own model")
    cpus_per_actor: float = Field(gt=0)
    gpus_per_actor: float = Field(ge=0)
    clips: ClipsConfig


# ------------------------------------------------------------------------- root
class EmolaConfig(Section):
    """The resolved configuration: the profile's values, the sections on top, then overrides."""

    profile: str
    data: DataConfig
    landmarks: LandmarksConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    inference: InferenceConfig
    serve: ServeConfig
    video: VideoConfig


SECTIONS: tuple[str, ...] = ("data", "landmarks", "model", "train", "evaluate", "inference", "serve",
                              "video")
