"""The security rules of k8s/: both overlays keep every one, and a manifest that drops any one fails."""

from __future__ import annotations

import copy

import pytest

from emola.deploy.kustomize import build
from emola.deploy.security import security_errors
from tests.conftest import REPO


@pytest.fixture(scope="module")
def dev() -> list[dict]:
    return build(REPO / "k8s/overlays/dev")


def _find(docs, kind, name=None):
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def _mlflow(docs):
    return _find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]


def _train_head(docs):
    return _find(docs, "RayJob", "emola-train")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]


def _drop_namespace_label(docs):
    del _find(docs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]


def _root_pod(docs):
    _mlflow(docs)["securityContext"]["runAsNonRoot"] = False


def _no_seccomp(docs):
    del _train_head(docs)["securityContext"]["seccompProfile"]


def _escalation(docs):
    _mlflow(docs)["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True


def _capabilities(docs):
    spec = _find(docs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    spec["containers"][0]["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}


def _writable_root(docs):
    _find(docs, "Deployment", "postgres")["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesystem"] = False


def _no_submitter_template(docs):
    del _find(docs, "RayJob", "emola-landmarks")["spec"]["submitterPodTemplate"]


def _no_storage_limit(docs):
    del _train_head(docs)["containers"][0]["resources"]["limits"]["ephemeral-storage"]


def _unbounded_empty_dir(docs):
    _find(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["volumes"][0]["emptyDir"] = {}


def _api_key_in_a_job(docs):
    _train_head(docs)["containers"][0]["env"].append(
        {"name": "EMOLA_API_KEY", "valueFrom": {"secretKeyRef": {"name": "emola-api", "key": "api-key"}}})


def _write_keys_in_evaluate(docs):
    spec = _find(docs, "RayJob", "emola-evaluate")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    for item in spec["containers"][0]["env"]:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ref["name"] == "emola-s3-read":
            ref["name"] = "emola-s3"


def _password_on_command_line(docs):
    args = _mlflow(docs)["containers"][0]["args"]
    args.append("--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)")


def _literal_credential(docs):
    _mlflow(docs)["containers"][0]["args"].append("--backend-store-uri=postgresql://mlflow:hunter2@postgres/mlflow")


def _no_auth(docs):
    args = _mlflow(docs)["containers"][0]["args"]
    args.remove("--app-name=basic-auth")


def _no_default_deny(docs):
    docs.remove(_find(docs, "NetworkPolicy", "default-deny-ingress"))


def _mlflow_open_to_all(docs):
    _find(docs, "NetworkPolicy", "mlflow-clients")["spec"]["ingress"][0]["from"] = [{"podSelector": {}}]


def _no_serve_policy(docs):
    docs.remove(_find(docs, "NetworkPolicy", "serve-clients"))


def _no_job_deadline(docs):
    del _find(docs, "RayJob", "emola-train")["spec"]["activeDeadlineSeconds"]


BREAKS = {
    "pod-security": [_drop_namespace_label],
    "security-context": [_root_pod, _no_seccomp, _escalation, _capabilities, _writable_root, _no_submitter_template],
    "storage-limits": [_no_storage_limit, _unbounded_empty_dir],
    "secrets": [_api_key_in_a_job, _write_keys_in_evaluate],
    "no-secret-on-command-line": [_password_on_command_line, _literal_credential],
    "mlflow-auth": [_no_auth],
    "network-policy": [_no_default_deny, _mlflow_open_to_all, _no_serve_policy],
    "job-deadline": [_no_job_deadline],
}


@pytest.mark.parametrize("overlay", ["k8s/overlays/dev", "k8s/overlays/prod"])
def test_every_overlay_keeps_every_rule(overlay):
    assert security_errors(build(REPO / overlay)) == []


@pytest.mark.parametrize("rule,breaks", BREAKS.items(), ids=list(BREAKS))
def test_a_manifest_that_drops_a_rule_fails_on_that_rule(dev, rule, breaks):
    for broken in breaks:
        docs = copy.deepcopy(dev)
        broken(docs)
        errors = security_errors(docs)
        assert errors and all(e.startswith(f"{rule}: ") for e in errors), (broken.__name__, errors)


def test_the_cli_fails_an_overlay_that_drops_a_rule(tmp_path):
    import shutil

    from emola.cli.main import main

    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    mlflow = tmp_path / "k8s/base/mlflow.yaml"
    mlflow.write_text(mlflow.read_text().replace("            - --app-name=basic-auth\n", ""))
    assert main(["k8s", "validate", str(tmp_path / "k8s/overlays/dev")]) == 1
