"""Load ``params.yaml`` into an :class:`~emola.config.schema.EmolaConfig`.

``params.yaml`` holds a ``profile`` name, a ``profiles`` mapping and one section per stage.
The resolved configuration is built in three layers, later ones winning key by key:

1. ``profiles[profile]``: the profile's values (``tiny`` or ``emola-7b``);
2. the top-level sections (``data``, ``train``, ...): settings shared by every profile
   and user overrides; a key set here overrides the profile's value for *any* profile
   (``dvc exp run -S +train.lr=3e-4``: DVC's "+" adds the key to the empty section);
3. ``key=value`` overrides from a job's command line (dotted paths into the resolved
   configuration, e.g. ``train.lr=3e-4`` or ``profile=emola-7b``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from emola.config.schema import SECTIONS, EmolaConfig

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A parameter file or override is invalid; the message names every offending key."""


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float, as YAML 1.2 (and DVC) does."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path | str) -> Any:
    """Parse a YAML file with YAML 1.2 float rules."""
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def parse_value(text: str) -> Any:
    """Parse one override value the way YAML would (``3e-4`` -> float, ``null`` -> None)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506


def parse_overrides(args: Iterable[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "profile=emola-7b"]`` -> ``{"train.lr": 3e-4, "profile": "emola-7b"}``."""
    overrides: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
            raise ParamsError(f"override {arg!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=3e-4")
        overrides[key] = parse_value(value)
    return overrides


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``top`` into a copy of ``base``; mappings merge recursively, other values replace."""
    merged = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ParamsError(f"override {dotted}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(root)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif item["type"] == "missing":
            lines.append(f"  {key}: missing (set it in the profile or in its section)")
        else:
            got = item.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict) else ""
            lines.append(f"  {key}: {item['msg']}{shown}")
    return f"{source}: invalid parameters\n" + "\n".join(lines)


def resolve(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, source: str = "params") -> EmolaConfig:
    """Resolve a parsed params mapping (see the module docstring) into a validated config."""
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{source}: expected a mapping at the top level")
    overrides = dict(overrides or {})
    unknown = sorted(set(raw) - {"profile", "profiles", *SECTIONS})
    if unknown:
        raise ParamsError(f"{source}: unknown top-level key(s): {', '.join(unknown)}")
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, Mapping):
        raise ParamsError(f"{source}: profiles: expected a mapping of profile name to sections")
    profile = overrides.pop("profile", raw.get("profile"))
    if profile not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ParamsError(f"{source}: profile: unknown profile {profile!r} (known: {known})")
    overlay = profiles[profile] or {}
    bad = sorted(set(overlay) - set(SECTIONS))
    if bad:
        raise ParamsError(f"{source}: profiles.{profile}: unknown section(s): {', '.join(bad)}")

    tree: dict[str, Any] = {"profile": profile}
    for section in SECTIONS:
        layered = deep_merge(overlay.get(section) or {}, raw.get(section) or {})
        tree[section] = layered
    for dotted, value in overrides.items():
        if dotted.split(".")[0] not in SECTIONS:
            raise ParamsError(f"override {dotted}: unknown section {dotted.split('.')[0]!r}")
        _set_dotted(tree, dotted, value)
    try:
        return EmolaConfig.model_validate(tree)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, f"{source} (profile {profile})")) from None


def load_config(
    path: Path | str = DEFAULT_PARAMS,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> EmolaConfig:
    """Read ``params.yaml`` (or ``path``) and resolve it with optional overrides.

    ``overrides`` is either a mapping of dotted keys to values or ``KEY=VALUE`` strings.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found (run from the repository root or pass --params)")
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    try:
        raw = read_yaml(path)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return resolve(raw or {}, overrides, source=str(path))


def profile_names(path: Path | str = DEFAULT_PARAMS) -> list[str]:
    """Names of the profiles defined in a params file."""
    return sorted((read_yaml(path) or {}).get("profiles") or {})
