"""``emola k8s``: build a kustomize overlay of ``k8s/`` and validate it strictly, offline."""

from __future__ import annotations

import argparse
import sys

import yaml


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("k8s", help="Kubernetes manifests").add_subparsers(dest="action", required=True)
    validate = group.add_parser("validate", help="validate every manifest of an overlay (KubeRay CRDs, Kubernetes schemas, "
                                                 "the platform's security rules)")
    validate.add_argument("overlay", nargs="+", help="kustomization folders, e.g. k8s/overlays/dev")
    validate.set_defaults(handler=_validate)
    build = group.add_parser("build", help="print the manifests of an overlay")
    build.add_argument("overlay")
    build.set_defaults(handler=_build)


def _validate(args: argparse.Namespace) -> int:
    from emola.deploy.kustomize import KustomizeError, build
    from emola.deploy.schema import manifest_errors
    from emola.deploy.security import security_errors

    failed = 0
    for overlay in args.overlay:
        try:
            docs = build(overlay)
        except (KustomizeError, OSError) as err:
            print(f"{overlay}: {err}", file=sys.stderr)
            failed += 1
            continue
        errors = [e for d in docs for e in manifest_errors(d)] + security_errors(docs)
        for error in errors:
            print(f"{overlay}: {error}", file=sys.stderr)
        failed += bool(errors)
        print(f"{overlay}: {len(docs)} manifests, {len(errors)} problems")
    return 1 if failed else 0


def _build(args: argparse.Namespace) -> int:
    from emola.deploy.kustomize import build

    sys.stdout.write(yaml.safe_dump_all(build(args.overlay), sort_keys=False))
    return 0
