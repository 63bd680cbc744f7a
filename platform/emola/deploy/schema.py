"""Strict validation of Kubernetes manifests, offline.

KubeRay resources (``ray.io/v1``) are checked against the ``openAPIV3Schema`` of their
CRDs with the API server's structural-schema rules: an object schema that lists
``properties`` (and does not set ``x-kubernetes-preserve-unknown-fields``) accepts no
other key, ``x-kubernetes-int-or-string`` accepts an integer or a string. Core kinds
(Deployment, Service, Secret, ...) are checked with ``kubernetes-validate``'s bundled
schemas in strict mode. Every problem is reported with its path in the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import yaml

#: The KubeRay CRDs the platform targets (v1.7 line). ``k8s/crds/`` holds their schemas,
#: extracted unchanged from ``ray-operator/config/crd/bases/`` (see k8s/crds/README.md).
CRD_DIR = Path(__file__).resolve().parents[3] / "k8s" / "crds"
KUBERAY_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
KUBERNETES_VERSION = "1.33.0"

_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list}


def crd_schema_from_file(path: Path) -> dict:
    """The ``v1`` ``openAPIV3Schema`` of a CRD YAML file."""
    crd = yaml.safe_load(path.read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


@lru_cache(maxsize=None)
def kuberay_schema(kind: str) -> dict:
    return json.loads((CRD_DIR / f"{KUBERAY_KINDS[kind]}.schema.json").read_text())


def _type_ok(value, schema: dict) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    kind = schema.get("type")
    if kind is None:
        return True
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def structural_errors(value, schema: dict, path: str = "") -> Iterator[str]:
    """Every violation of ``schema`` in ``value``, as ``path: problem``."""
    where = path or "(root)"
    if value is None:
        if not schema.get("nullable"):
            yield f"{where}: null is not allowed"
        return
    if not _type_ok(value, schema):
        expected = "integer or string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        yield f"{where}: expected {expected}, got {type(value).__name__} {value!r:.60}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{where}: {value!r} is not one of {schema['enum']}"
    if isinstance(value, dict):
        properties = schema.get("properties")
        for key in schema.get("required", []):
            if key not in value:
                yield f"{where}: missing required field {key!r}"
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if properties is not None and key in properties:
                yield from structural_errors(item, properties[key], child)
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from structural_errors(item, schema["additionalProperties"], child)
            elif properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                yield f"{child}: unknown field"
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from structural_errors(item, schema["items"], f"{path}[{i}]")
    elif isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            yield f"{where}: shorter than {schema['minLength']}"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield f"{where}: longer than {schema['maxLength']}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and "minimum" in schema:
        if value < schema["minimum"]:
            yield f"{where}: {value} is below the minimum {schema['minimum']}"


def manifest_errors(manifest: dict) -> list[str]:
    """Problems of one manifest (empty when it is valid)."""
    kind, api = manifest.get("kind"), manifest.get("apiVersion")
    name = f"{kind}/{(manifest.get('metadata') or {}).get('name', '?')}"
    if not kind or not api:
        return [f"{name}: apiVersion and kind are required"]
    if kind in KUBERAY_KINDS:
        if api != "ray.io/v1":
            return [f"{name}: apiVersion {api} (expected ray.io/v1)"]
        return [f"{name}: {e}" for e in structural_errors(manifest, kuberay_schema(kind))]
    try:
        import kubernetes_validate
    except ImportError:
        raise RuntimeError("validating core Kubernetes kinds needs kubernetes-validate: pip install -e '.[dev]'") from None
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        location = ".".join(str(p) for p in err.path) or "(root)"
        return [f"{name}: {location}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name}: no Kubernetes {KUBERNETES_VERSION} schema for {api} {kind}"]
    return []
