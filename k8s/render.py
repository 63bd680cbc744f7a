"""Render the RayJobs and the RayService from their sources, so nothing is written twice.

    python k8s/render.py            # rewrite k8s/base/rayjobs.yaml and k8s/base/rayservice.yaml
    python k8s/render.py --check    # exit 1 when the committed files are out of date (CI runs the test)

Sources: the pod definitions of ``k8s/base/raycluster.yaml``; the job entry points of
``dvc.yaml``'s stages (``jobs.landmarks``, ``jobs.train``, ``jobs.evaluate``); and
``serve/config.yaml`` rendered for the cluster. The cluster differs from the local
config only by :data:`CLUSTER_OVERRIDES` (documented in k8s/README.md).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emola import http_guard  # noqa: E402
from emola.config import load_config  # noqa: E402
from serve.app import serve_config  # noqa: E402

BASE = REPO / "k8s" / "base"
#: What the cluster's serve config changes relative to serve/config.yaml: the published
#: profile (its serve section: 0.0.0.0, one model per task from the registry, 1-4 GPU replicas each).
CLUSTER_OVERRIDES = ["profile=emola-7b"]
#: Cluster runs use the published profile; the DVC remote and Ray storage live on S3.
# data/ and models/ are the workspace PVC; Ray Train checkpoints go to S3.
PROFILE, CHECKPOINTS = "profile=emola-7b", "train.storage_path=s3://emola-artifacts/ray"
#: Each job: its entry point, overrides, how long it may run (``activeDeadlineSeconds``) and whether it writes to S3
#: (Ray Train's checkpoints): the others get the read-only key pair ``emola-s3-read``.
JOBS = {
    "landmarks": {"entrypoint": "python -m jobs.landmarks", "overrides": [PROFILE], "ttl": 3600,
                  "deadline": 6 * 3600, "writes_s3": False},
    "train": {"entrypoint": "python -m jobs.train", "overrides": [PROFILE, CHECKPOINTS], "ttl": 86400,
              "deadline": 72 * 3600, "writes_s3": True},
    "evaluate": {"entrypoint": "python -m jobs.evaluate", "overrides": [PROFILE, CHECKPOINTS], "ttl": 86400,
                 "deadline": 12 * 3600, "writes_s3": False},
}
_SECURE = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}
#: The image holds the repository at /app (k8s/Dockerfile); data comes from the DVC remote `s3`.
RUNTIME_ENV = {"env_vars": {"PYTHONPATH": "/app", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}}


def cluster_spec() -> dict:
    return yaml.safe_load((BASE / "raycluster.yaml").read_text())["spec"]


def _containers(spec: dict):
    for template in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]:
        yield from template["spec"]["containers"]


def _read_only_s3(spec: dict) -> dict:
    """The cluster with the read-only S3 key pair instead of the read-write one."""
    for container in _containers(spec):
        for item in container.get("env", []):
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["name"] == "emola-s3":
                ref["name"] = "emola-s3-read"
    return spec


def _submitter(pod_security: dict) -> dict:
    """The pod that runs ``ray job submit`` against the job's cluster (K8sJobMode): restricted like every pod."""
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": "ray-submitter", "emola.dev/ray-client": "true"}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": copy.deepcopy(pod_security),
            "containers": [{
                "name": "ray-job-submitter", "image": "ghcr.io/emola-platform/emola:0.1.0",
                "env": [{"name": "HOME", "value": "/tmp"}, {"name": "RAY_AUTH_MODE", "value": "token"},
                        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "emola-ray-auth",
                                                                                  "key": "token"}}}],
                "securityContext": copy.deepcopy(_SECURE),
                "resources": {"limits": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi"},
                              "requests": {"cpu": "200m", "memory": "256Mi"}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        },
    }


def rayjob(name: str, entry: dict) -> dict:
    spec = copy.deepcopy(cluster_spec())   # each job gets its own cluster: the same pods, deleted after
    if not entry["writes_s3"]:
        spec = _read_only_s3(spec)
    overrides = " ".join(entry["overrides"])
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": f"emola-{name}", "labels": {"app.kubernetes.io/name": "emola",
                                                         "app.kubernetes.io/component": f"job-{name}"}},
        "spec": {
            # dvc pull fetches exactly the data versions of the commit in the image, then the job runs.
            "entrypoint": f"bash -c 'cd /app && dvc pull -r s3 && {entry['entrypoint']} {overrides}'",
            "runtimeEnvYAML": yaml.safe_dump(RUNTIME_ENV, sort_keys=False),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": entry["ttl"],
            "activeDeadlineSeconds": entry["deadline"],
            "backoffLimit": 1,
            "submissionMode": "K8sJobMode",
            "submitterPodTemplate": _submitter(spec["headGroupSpec"]["template"]["spec"]["securityContext"]),
            "rayClusterSpec": spec,
        },
    }


def rayservice() -> dict:
    """The Serve cluster: the API key, no S3 keys (models come through MLflow's artifact proxy), its pods labelled
    ``serve`` for the NetworkPolicy that admits Serve's clients."""
    spec = copy.deepcopy(cluster_spec())
    for template in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]:
        template["metadata"]["labels"]["app.kubernetes.io/component"] = "serve"
    cap = load_config(REPO / "params.yaml", CLUSTER_OVERRIDES).serve.max_body_bytes
    for container in _containers(spec):
        container["env"] = [item for item in container["env"] if item["name"] not in
                            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
        container["env"] += [
            {"name": "EMOLA_API_KEY", "valueFrom": {"secretKeyRef": {"name": "emola-api", "key": "api-key"}}},
            # Serve's proxy caps request bodies as it reads them (emola.http_guard), at serve.max_body_bytes.
            {"name": "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "value": http_guard.CALLBACK},
            {"name": http_guard.MAX_BODY_ENV, "value": str(cap)}]
    serve_cfg = serve_config("params.yaml", CLUSTER_OVERRIDES)
    # On KubeRay the Serve config is per application; http_options/proxy_location stay as rendered.
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": {"name": "emola-serve", "labels": {"app.kubernetes.io/name": "emola",
                                                       "app.kubernetes.io/component": "serve"}},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_cfg, sort_keys=False),
            "rayClusterConfig": spec,
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the serve config, the runtime env) as readable ``|`` blocks."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def rendered() -> dict[Path, str]:
    header = "# Generated by `python k8s/render.py` from k8s/base/raycluster.yaml, dvc.yaml's jobs and serve/; do not edit.\n"
    jobs = [rayjob(name, entry) for name, entry in JOBS.items()]
    return {
        BASE / "rayjobs.yaml": header + yaml.dump_all(jobs, Dumper=_Dumper, sort_keys=False),
        BASE / "rayservice.yaml": header + yaml.dump(rayservice(), Dumper=_Dumper, sort_keys=False),
    }


def main() -> int:
    stale = [path for path, text in rendered().items() if not path.is_file() or path.read_text() != text]
    if "--check" in sys.argv:
        for path in stale:
            print(f"{path.relative_to(REPO)} is out of date: run python k8s/render.py")
        return 1 if stale else 0
    for path, text in rendered().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
