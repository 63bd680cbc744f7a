"""The Ray Serve application: ingress -> face detector and model(s), configured from ``params.yaml``.

One model deployment serves a joint checkpoint; per-task models (``train.separate_models``,
or ``serve.checkpoint`` as a task mapping) get one deployment each, and the ingress routes
every request to the model of its task.

``serve run serve/config.yaml`` (or ``serve deploy``) imports :func:`build_app` with the
``args`` of that file: the params file and optional ``KEY=VALUE`` overrides. Deployment
options (autoscaling, max ongoing requests, CPUs and GPUs) come from the ``serve``
section; ``serve/config.yaml`` repeats them so Serve's own tooling shows them, and
:func:`serve_config` generates that file, so the two never disagree (tested).

    python -m serve.app > serve/config.yaml        # regenerate after changing params
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from emola.config import EmolaConfig, load_config
from emola.model.reference import pin_reference, serving_parts

REPO = Path(__file__).resolve().parents[1]
APP_NAME = "emola"
IMPORT_PATH = "serve.app:build_app"


def model_deployment_name(part: str) -> str:
    """``EmolaModel`` for a single model; ``EmolaModel-<part>`` for each per-task model."""
    return f"EmolaModel-{part}" if part else "EmolaModel"


def deployment_options(cfg: EmolaConfig, parts: dict[str, str]) -> dict[str, dict]:
    """Serve options per deployment, from the ``serve`` section; one model deployment per served part.

    ``parts``: :func:`~emola.model.reference.serving_parts` of ``serve.checkpoint``.
    """
    s = cfg.serve
    autoscaling = {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                   "target_ongoing_requests": s.target_ongoing_requests,
                   # React within seconds: a request here takes tenths of a second to seconds.
                   "upscale_delay_s": 2.0, "downscale_delay_s": 10.0, "metrics_interval_s": 1.0,
                   "look_back_period_s": 5.0}
    # Beyond max_ongoing_requests (what one replica's engine queues and batches) and
    # max_queued_requests waiting for a replica, a call fails at once: the ingress answers 503.
    # The ingress calls the model and face replicas over Serve's gRPC transport (serve/api.py), whose replica
    # servers take 4 MiB per message unless told otherwise: room for the largest body the ingress accepts.
    def grpc_limit() -> dict:
        return {"env_vars": {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(s.max_body_bytes + 2**20)}}

    model = {"max_ongoing_requests": s.max_ongoing_requests, "max_queued_requests": s.max_queued_requests,
             "autoscaling_config": autoscaling,
             "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus, "runtime_env": grpc_limit()}}
    return {
        **{model_deployment_name(part): dict(model) for part in parts},
        "LandmarkDetector": {"max_ongoing_requests": s.max_ongoing_requests, "autoscaling_config": dict(autoscaling),
                         "ray_actor_options": {"num_cpus": cfg.landmarks.cpus_per_actor,
                                               "num_gpus": cfg.landmarks.gpus_per_actor, "runtime_env": grpc_limit()}},
        # The ingress only parses and awaits: a small CPU share, many concurrent requests.
        "EmolaAPI": {"max_ongoing_requests": 4 * s.max_ongoing_requests, "num_replicas": 1,
                     "ray_actor_options": {"num_cpus": 0.1}},
    }


def video_settings(cfg: EmolaConfig) -> dict:
    """What the ingress needs for video uploads: the analysis defaults of ``video`` and the upload limits."""
    from dataclasses import asdict

    from emola.video_analysis import VideoOptions

    options = asdict(VideoOptions.from_config(cfg.video, cfg.video.upload_limits))
    return {"limits": options.pop("limits"), "options": options}


def build_app(args: dict | None = None):
    """The application for ``serve run``: ``args`` = ``{params: FILE, overrides: [KEY=VALUE, ...]}``."""
    from serve.model import EmolaModel

    return make_app(args, EmolaModel)


def make_app(args: dict | None, EmolaModel):
    """:func:`build_app` with another model deployment ``EmolaModel`` (the fault tests use one that crashes on
    demand)."""
    from serve.api import EmolaAPI
    from serve.landmarks import LandmarkDetector

    args = dict(args or {})
    params = Path(args.get("params", "params.yaml"))
    if not params.is_absolute() and not params.is_file():
        params = REPO / params   # replicas on a cluster need not start in the repository
    cfg = load_config(params, list(args.get("overrides") or []))
    s = cfg.serve
    # An alias is resolved here, once per deployment: every replica, started now or by autoscaling later, loads
    # that version, whatever the alias points to by then.
    parts = {part: pin_reference(reference) for part, reference in serving_parts(s.checkpoint).items()}
    options = deployment_options(cfg, parts)
    faces = LandmarkDetector.options(**options["LandmarkDetector"]).bind(
        list(parts.values()), cfg.landmarks.model_dump(), s.landmark_cache)
    models = {part: EmolaModel.options(name=model_deployment_name(part), **options[model_deployment_name(part)]).bind(
        reference, cfg.inference.model_dump(), max(1, int(s.num_cpus)), cfg.landmarks.model_dump())
        for part, reference in parts.items()}
    settings = {"model_name": s.model_name, "max_body_bytes": s.max_body_bytes, "max_image_pixels": s.max_image_pixels,
                "request_timeout_s": s.request_timeout_s, "allow_remote_images": s.allow_remote_images,
                "generation": cfg.evaluate.generation.model_dump(), "video": video_settings(cfg)}
    return EmolaAPI.options(**options["EmolaAPI"]).bind(faces, models, settings)


def serve_config(params: str | Path = "params.yaml", overrides: list[str] | None = None) -> dict:
    """The Serve config file (``serve/config.yaml``) for these params."""
    cfg = load_config(params, overrides or [])
    options = deployment_options(cfg, serving_parts(cfg.serve.checkpoint))
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.serve.host, "port": cfg.serve.port,
                         "request_timeout_s": cfg.serve.request_timeout_s},
        "applications": [{
            "name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
            "args": {"params": str(params), "overrides": list(overrides or [])},
            "deployments": [{"name": name, **opts} for name, opts in options.items()],
        }],
    }


HEADER = "# Generated by `python -m serve.app > serve/config.yaml` from params.yaml; tests check they agree.\n"


def render(config: dict) -> str:
    return HEADER + yaml.safe_dump(config, sort_keys=False)


if __name__ == "__main__":
    sys.stdout.write(render(serve_config(sys.argv[1] if len(sys.argv) > 1 else "params.yaml", sys.argv[2:])))
