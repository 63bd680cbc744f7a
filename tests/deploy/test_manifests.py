"""k8s/: every overlay builds, validates strictly, references what exists, and serves serve/config.yaml."""

from __future__ import annotations

import copy
import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from emola.deploy.kustomize import KustomizeError, build
from emola.deploy.schema import CRD_DIR, KUBERAY_KINDS, crd_schema_from_file, manifest_errors
from tests.conftest import REPO

OVERLAYS = ["k8s/base", "k8s/overlays/dev", "k8s/overlays/prod"]
SHARED_CRDS = REPO.parent / "shared" / "kuberay-crds"


def _render_module():
    sys.path.insert(0, str(REPO / "k8s"))
    try:
        return importlib.import_module("render")
    finally:
        sys.path.remove(str(REPO / "k8s"))


def _find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates_strictly(overlay):
    docs = build(REPO / overlay)
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "RayJob", "RayService", "Deployment", "Service"} <= kinds
    errors = [e for d in docs for e in manifest_errors(d)]
    assert errors == []


def test_validation_rejects_unknown_fields_and_wrong_types():
    docs = build(REPO / "k8s/overlays/dev")
    cluster = copy.deepcopy(_find(docs, "RayCluster"))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4                 # typo of maxReplicas
    assert manifest_errors(cluster) == ["RayCluster/emola: spec.workerGroupSpecs[0].maxReplica: unknown field"]
    cluster = copy.deepcopy(_find(docs, "RayCluster"))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    assert "expected integer" in manifest_errors(cluster)[0]
    cluster = copy.deepcopy(_find(docs, "RayCluster"))
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    assert "imagePullPolicy: expected string" in manifest_errors(cluster)[0]
    job = copy.deepcopy(_find(docs, "RayJob", "emola-train"))
    job["spec"]["shutdownAfterJobFinish"] = True
    assert manifest_errors(job) == ["RayJob/emola-train: spec.shutdownAfterJobFinish: unknown field"]
    service = copy.deepcopy(_find(docs, "RayService"))
    service["spec"]["serveConfigV2"] = {"applications": []}                   # must be a YAML string
    assert "serveConfigV2: expected string" in manifest_errors(service)[0]
    mlflow = copy.deepcopy(_find(docs, "Deployment", "mlflow"))
    mlflow["spec"]["template"]["spec"]["containers"][0]["bogus"] = 1
    assert "'bogus' was unexpected" in manifest_errors(mlflow)[0]
    mlflow = copy.deepcopy(_find(docs, "Deployment", "mlflow"))
    mlflow["spec"]["replicas"] = "two"
    assert "spec.replicas" in manifest_errors(mlflow)[0]


def test_vendored_crd_schemas_match_the_kuberay_crds():
    if not SHARED_CRDS.is_dir():
        pytest.skip(f"{SHARED_CRDS} is not on this machine; k8s/crds/ is the vendored copy")
    for plural in KUBERAY_KINDS.values():
        vendored = json.loads((CRD_DIR / f"{plural}.schema.json").read_text())
        assert vendored == crd_schema_from_file(SHARED_CRDS / f"ray.io_{plural}.yaml"), plural


def test_generated_manifests_are_up_to_date():
    render = _render_module()
    for path, text in render.rendered().items():
        assert path.read_text() == text, f"{path} is out of date: run python k8s/render.py"


def test_rayservice_serves_serve_config_yaml_with_only_the_documented_overrides():
    render = _render_module()
    local = yaml.safe_load((REPO / "serve/config.yaml").read_text())
    cluster = yaml.safe_load(_find(build(REPO / "k8s/overlays/prod"), "RayService")["spec"]["serveConfigV2"])
    (local_app,), (cluster_app,) = local["applications"], cluster["applications"]
    # The same application ...
    for key in ("name", "route_prefix", "import_path"):
        assert cluster_app[key] == local_app[key]
    assert cluster_app["args"]["params"] == local_app["args"]["params"]
    # The published profile serves one model per task, so its model deployment is one per task.
    names = lambda app: [d["name"] for d in app["deployments"] if not d["name"].startswith("EmolaModel")]  # noqa: E731
    assert names(cluster_app) == names(local_app)
    assert [d["name"] for d in local_app["deployments"] if d["name"].startswith("EmolaModel")] == ["EmolaModel"]
    # ... differing only by the documented overrides, and exactly what serve/app.py renders with them.
    assert cluster_app["args"]["overrides"] == render.CLUSTER_OVERRIDES == ["profile=emola-7b"]
    from serve.app import serve_config

    assert cluster == serve_config("params.yaml", render.CLUSTER_OVERRIDES)
    assert cluster["http_options"]["host"] == "0.0.0.0" and local["http_options"]["host"] == "127.0.0.1"
    models = [d for d in cluster_app["deployments"] if d["name"].startswith("EmolaModel")]
    assert [d["name"] for d in models] == ["EmolaModel-emotion", "EmolaModel-au"]
    assert all(d["ray_actor_options"]["num_gpus"] >= 1 for d in models)
    readme = (REPO / "k8s/README.md").read_text()
    assert "profile=emola-7b" in readme  # the override is documented


def test_manifests_reference_what_exists():
    docs = build(REPO / "k8s/overlays/dev")
    text = yaml.safe_dump_all(docs)
    # Job entry points are modules of the repository.
    for job in (d for d in docs if d["kind"] == "RayJob"):
        module = re.search(r"python -m (jobs\.\w+)", job["spec"]["entrypoint"])[1]
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module
        yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
    # The Serve import path resolves; its params file exists.
    config = yaml.safe_load(_find(docs, "RayService")["spec"]["serveConfigV2"])
    module, _, attr = config["applications"][0]["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert (REPO / config["applications"][0]["args"]["params"]).is_file()
    # ConfigMaps and PVCs that pods reference are part of the build; Secrets are documented.
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name in set(re.findall(r"configMapKeyRef:\s*\{?\s*key: [\w-]+,?\s*name: ([\w-]+)", text)) | {"emola-storage"}:
        assert ("ConfigMap", name) in names
    for claim in set(re.findall(r"claimName: ([\w-]+)", text)):
        assert ("PersistentVolumeClaim", claim) in names, claim
    runbook = (REPO / "k8s/README.md").read_text()
    for secret in set(re.findall(r"name: (emola-[\w-]+)\n\s*(?:key|optional)", text)) | {"emola-s3", "emola-mlflow-db"}:
        assert secret in runbook, f"secret {secret} is not documented in k8s/README.md"
    # The Dockerfile installs the platform with the gpu extra by default.
    dockerfile = (REPO / "k8s/Dockerfile").read_text()
    assert "ARG EXTRAS=gpu" in dockerfile and ".[${EXTRAS}]" in dockerfile
    # Every Ray pod runs the platform image.
    images = set(re.findall(r"image: (ghcr\.io/emola-platform/\S+)", text))
    assert images == {"ghcr.io/emola-platform/emola:dev"}


def test_kustomize_subset_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(KustomizeError, match="unsupported fields"):
        build(tmp_path)


def test_cli_validates_overlays_and_reports_problems(tmp_path):
    import shutil

    from emola.cli.main import main

    assert main(["k8s", "validate", str(REPO / "k8s/overlays/dev"), str(REPO / "k8s/overlays/prod")]) == 0
    broken = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", broken)
    (broken / "base/mlflow.yaml").write_text((broken / "base/mlflow.yaml").read_text().replace(
        "replicas: 1", "replicas: one"))
    assert main(["k8s", "validate", str(broken / "overlays/dev")]) == 1
