"""The platform's security rules for its Kubernetes manifests, checked offline (``emola k8s validate``).

Schemas say whether a manifest is well formed; these rules say whether it is safe to run
beside other workloads. Each rule has a name, and every problem names the rule, the
manifest and the place, so that a manifest that drops a rule fails:

- ``pod-security``: every namespace enforces the ``restricted`` Pod Security Standard;
- ``security-context``: every pod runs as non-root with the runtime's seccomp profile, every
  container without privilege or privilege escalation, with every capability dropped and a
  read-only root file system (writable places are ``emptyDir`` volumes);
- ``storage-limits``: every container limits CPU, memory and ephemeral storage, and every
  ``emptyDir`` has a ``sizeLimit``;
- ``secrets``: each workload (its ``app.kubernetes.io/component`` or name) reads only the
  Secrets of :data:`ALLOWED_SECRETS`;
- ``no-secret-on-command-line``: no command or argument holds a credential, a URI with a
  password, or ``$(VAR)`` of a Secret (Kubernetes would expand it into the process's command
  line, which every process on the node can read);
- ``mlflow-auth``: the MLflow server runs MLflow's authentication app;
- ``network-policy``: ingress is denied by default, and MLflow, the Ray head and Serve admit
  only the clients a policy names;
- ``job-deadline``: every RayJob and Job has an ``activeDeadlineSeconds``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

#: Workload (component label, else the name) -> the Secrets it may read.
ALLOWED_SECRETS = {
    "mlflow": {"emola-mlflow-db", "emola-mlflow-auth", "emola-s3"},
    "ray": {"emola-ray-auth", "emola-mlflow-client", "emola-s3"},
    "job-landmarks": {"emola-ray-auth", "emola-mlflow-client", "emola-s3-read"},
    "job-train": {"emola-ray-auth", "emola-mlflow-client", "emola-s3"},
    "job-evaluate": {"emola-ray-auth", "emola-mlflow-client", "emola-s3-read"},
    "serve": {"emola-ray-auth", "emola-mlflow-client", "emola-api"},
    "postgres": {"emola-postgres"},
    "minio": {"emola-s3"},
    "minio-bucket": {"emola-s3"},
}
#: Services that must be reached only by named clients: their pods' ``app.kubernetes.io/component`` or name.
GUARDED = ("mlflow", "ray", "serve")
_CREDENTIAL = re.compile(r"(://[^/\s:@]+:[^@\s/]+@)|((password|passwd|secret|token)=\S)", re.IGNORECASE)
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def security_errors(docs: list[dict]) -> list[str]:
    """Every violation of the rules above in the manifests ``docs``, as ``rule: kind/name: where: problem``."""
    errors: list[str] = []
    for doc in docs:
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"
        for rule, problem in _manifest_problems(doc):
            errors.append(f"{rule}: {name}: {problem}")
    errors += [f"network-policy: {p}" for p in _network_problems(docs)]
    return errors


def _workload(doc: dict) -> str:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    return labels.get("app.kubernetes.io/component") or labels.get("app.kubernetes.io/name") or \
        (doc.get("metadata") or {}).get("name", "?")


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """``(where, pod spec)`` of every pod a manifest creates."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        template = spec.get("template") or {}
        yield "spec.template", template.get("spec") or {}
    elif kind == "Pod":
        yield "spec", spec
    elif kind in ("RayCluster", "RayJob", "RayService"):
        cluster = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
                   "RayService": spec.get("rayClusterConfig")}[kind] or {}
        prefix = {"RayCluster": "spec", "RayJob": "spec.rayClusterSpec", "RayService": "spec.rayClusterConfig"}[kind]
        head = (cluster.get("headGroupSpec") or {}).get("template") or {}
        yield f"{prefix}.headGroupSpec.template", head.get("spec") or {}
        for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
            template = group.get("template") or {}
            yield f"{prefix}.workerGroupSpecs[{i}].template", template.get("spec") or {}
        if kind == "RayJob":
            submitter = spec.get("submitterPodTemplate")
            if submitter is None:
                yield "spec.submitterPodTemplate", {}   # missing: KubeRay's default pod has no security context
            else:
                yield "spec.submitterPodTemplate", submitter.get("spec") or {}


def _manifest_problems(doc: dict) -> Iterator[tuple[str, str]]:
    kind = doc.get("kind")
    if kind == "Namespace":
        labels = (doc.get("metadata") or {}).get("labels") or {}
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            yield "pod-security", "metadata.labels: pod-security.kubernetes.io/enforce is not 'restricted'"
    if kind in ("RayJob", "Job") and not (doc.get("spec") or {}).get("activeDeadlineSeconds"):
        yield "job-deadline", "spec.activeDeadlineSeconds is not set"
    workload = _workload(doc)
    allowed = ALLOWED_SECRETS.get(workload)
    for where, pod in pod_specs(doc):
        yield from _pod_problems(where, pod, workload, allowed)
    if kind == "Deployment" and workload == "mlflow":
        containers = ((doc.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
        words = [w for c in containers for w in [*(c.get("command") or []), *(c.get("args") or [])]]
        if "--app-name=basic-auth" not in words and not (
                "--app-name" in words and words[words.index("--app-name") + 1:][:1] == ["basic-auth"]):
            yield "mlflow-auth", "the MLflow server does not run --app-name basic-auth"


def _pod_problems(where: str, pod: dict, workload: str, allowed: set[str] | None) -> Iterator[tuple[str, str]]:
    context = pod.get("securityContext") or {}
    if context.get("runAsNonRoot") is not True:
        yield "security-context", f"{where}.spec.securityContext.runAsNonRoot is not true"
    if (context.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        yield "security-context", f"{where}.spec.securityContext.seccompProfile is not RuntimeDefault"
    for volume in pod.get("volumes") or []:
        if "emptyDir" in volume and not (volume["emptyDir"] or {}).get("sizeLimit"):
            yield "storage-limits", f"{where}.spec.volumes[{volume.get('name')}]: emptyDir without sizeLimit"
        secret = (volume.get("secret") or {}).get("secretName")
        if secret and allowed is not None and secret not in allowed:
            yield "secrets", f"{where}.spec.volumes[{volume.get('name')}]: Secret {secret} is not one {workload} needs"
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
    if not containers:
        yield "security-context", f"{where}: no pod template"
    for container in containers:
        at = f"{where}.spec.containers[{container.get('name')}]"
        yield from _container_problems(at, container, workload, allowed)


def _container_problems(at: str, container: dict, workload: str, allowed: set[str] | None
                        ) -> Iterator[tuple[str, str]]:
    context = container.get("securityContext") or {}
    if context.get("allowPrivilegeEscalation") is not False:
        yield "security-context", f"{at}.securityContext.allowPrivilegeEscalation is not false"
    if context.get("privileged"):
        yield "security-context", f"{at}.securityContext.privileged"
    if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
        yield "security-context", f"{at}.securityContext.capabilities.drop does not hold ALL"
    if context.get("readOnlyRootFilesystem") is not True:
        yield "security-context", f"{at}.securityContext.readOnlyRootFilesystem is not true"
    limits = (container.get("resources") or {}).get("limits") or {}
    for resource in ("cpu", "memory", "ephemeral-storage"):
        if resource not in limits:
            yield "storage-limits", f"{at}.resources.limits.{resource} is not set"
    secret_vars = set()
    for item in container.get("env") or []:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            secret_vars.add(item.get("name"))
            if allowed is not None and ref.get("name") not in allowed:
                yield "secrets", f"{at}.env[{item.get('name')}]: Secret {ref.get('name')} is not one {workload} needs"
    for source in container.get("envFrom") or []:
        secret = (source.get("secretRef") or {}).get("name")
        if secret and (allowed is None or secret not in allowed):
            yield "secrets", f"{at}.envFrom: Secret {secret} is not one {workload} needs"
    if allowed is None and secret_vars:
        yield "secrets", f"{at}: workload {workload!r} reads Secrets but has no entry in the allowed list"
    for word in [*(container.get("command") or []), *(container.get("args") or [])]:
        if _CREDENTIAL.search(str(word)):
            yield "no-secret-on-command-line", f"{at}: a credential on the command line: {str(word)[:60]!r}"
        for var in _VAR.findall(str(word)):
            if var in secret_vars:
                yield "no-secret-on-command-line", f"{at}: $({var}) puts a Secret on the command line"


def _network_problems(docs: list[dict]) -> Iterator[str]:
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    if not any(not ((p.get("spec") or {}).get("podSelector") or {}).get("matchLabels")
               and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or [])
               and not (p.get("spec") or {}).get("ingress") for p in policies):
        yield "no default-deny ingress policy (podSelector {}, policyTypes [Ingress], no rules)"
    for guarded in GUARDED:
        admitting = [p for p in policies if _selects(p, guarded)]
        if not admitting:
            yield f"no policy admits named clients to {guarded}"
        for policy in admitting:
            for i, rule in enumerate((policy.get("spec") or {}).get("ingress") or []):
                sources = rule.get("from") or []
                if not sources or any(not (s.get("podSelector") or {}).get("matchLabels")
                                      and not (s.get("namespaceSelector") or {}).get("matchLabels")
                                      and "ipBlock" not in s for s in sources):
                    yield (f"NetworkPolicy/{policy['metadata']['name']}: ingress[{i}] admits any pod "
                           f"(name its clients with labels)")


def _selects(policy: dict, workload: str) -> bool:
    labels = ((policy.get("spec") or {}).get("podSelector") or {}).get("matchLabels") or {}
    return workload in (labels.get("app.kubernetes.io/component"), labels.get("app.kubernetes.io/name"))
