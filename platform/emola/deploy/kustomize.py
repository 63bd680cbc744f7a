"""A small, exact subset of ``kustomize build`` for validating ``k8s/`` without a cluster or binary.

Supported (and all that ``k8s/`` uses): ``resources`` (files and other kustomizations),
``namespace``, ``commonLabels``-free ``labels`` with ``includeSelectors: false``,
``images`` (``newName``/``newTag``), and ``patches`` given as JSON 6902 operations
(``add``/``replace``/``remove``) on a ``target`` kind and name. Anything else in a
kustomization is an error here, so this never silently diverges from real kustomize.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}


class KustomizeError(ValueError):
    pass


def _load_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer must start with '/': {path}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def apply_json_patch(doc: dict, operations: list[dict], where: str) -> None:
    for op in operations:
        parts = _pointer(op["path"])
        parent = doc
        try:
            for part in parts[:-1]:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        except (KeyError, IndexError, ValueError):
            raise KustomizeError(f"{where}: path {op['path']} does not exist") from None
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if op["op"] == "add":
                    parent.insert(index, copy.deepcopy(op["value"]))
                else:
                    parent[index] = copy.deepcopy(op["value"])
            else:
                if op["op"] == "replace" and last not in parent:
                    raise KustomizeError(f"{where}: replace of missing {op['path']}")
                parent[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            try:
                del parent[int(last) if isinstance(parent, list) else last]
            except (KeyError, IndexError):
                raise KustomizeError(f"{where}: remove of missing {op['path']}") from None
        else:
            raise KustomizeError(f"{where}: unsupported patch op {op['op']!r}")


def _containers(node) -> list[dict]:
    """Every container list entry anywhere in a manifest (pod templates nest differently per kind)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += [c for c in value if isinstance(c, dict)]
            else:
                found += _containers(value)
    elif isinstance(node, list):
        for item in node:
            found += _containers(item)
    return found


def build(directory: Path | str) -> list[dict]:
    """The manifests of the kustomization in ``directory``."""
    directory = Path(directory)
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{directory}/kustomization.yaml: unsupported fields {sorted(unknown)}")
    docs: list[dict] = []
    for resource in spec.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs += build(path)
        elif path.is_file():
            docs += _load_documents(path)
        else:
            raise KustomizeError(f"{directory}/kustomization.yaml: resource {resource} not found")
    for patch in spec.get("patches", []):
        target = patch["target"]
        operations = yaml.safe_load((directory / patch["path"]).read_text()) if "path" in patch else yaml.safe_load(patch["patch"])
        matches = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not matches:
            raise KustomizeError(f"{directory}: patch target {target['kind']}/{target['name']} not found")
        for doc in matches:
            apply_json_patch(doc, operations, f"{directory}: patch of {target['kind']}/{target['name']}")
    for image in spec.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name, _, _tag = container.get("image", "").partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', _tag or 'latest')}"
    for label in spec.get("labels", []):
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    if namespace := spec.get("namespace"):
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = namespace
    return docs
