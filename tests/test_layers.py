"""The package's layers (docs/architecture.md): no module imports one of a higher layer, and
every DVC stage lists as deps every package its job imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

#: Bottom to top; a module may import its own layer and those below (docs/architecture.md).
LAYERS: list[tuple[str, ...]] = [
    ("emola.labels", "emola.fileio", "emola.imaging", "emola.config", "emola.runtime", "emola.tracking",
     "emola.video", "emola.http_guard"),
    ("emola.synth", "emola.deploy"),
    ("emola.data", "emola.metrics"),
    ("emola.landmarks", "emola.preflight"),
    ("emola.model",),
    ("emola.engine", "emola.mlflow_model"),
    ("emola.train", "emola.evaluate", "emola.analyzer", "emola.video_analysis", "emola.video_batch", "emola.pyfunc",
     "emola.mlflow_model_entry"),
    ("emola.cli",),
    ("jobs", "serve"),
]
PACKAGE = REPO / "platform" / "emola"


def _layer_of(module: str) -> int | None:
    for level, units in enumerate(LAYERS):
        if any(module == unit or module.startswith(unit + ".") for unit in units):
            return level
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO / "platform" if path.is_relative_to(PACKAGE) else REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _source_files() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "jobs").rglob("*.py")) + sorted((REPO / "serve").rglob("*.py"))
    return [f for f in files if f != PACKAGE / "__init__.py"]   # the facade re-exports the Analyzer lazily


def _imports(path: Path) -> set[str]:
    """Every emola/jobs/serve module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return {name for name in found if name.split(".")[0] in ("emola", "jobs", "serve")}


def test_every_module_has_a_layer():
    assert [_module_name(f) for f in _source_files() if _layer_of(_module_name(f)) is None] == []


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in _source_files():
        module = _module_name(path)
        for imported in _imports(path):
            level = _layer_of(imported)
            if level is not None and level > _layer_of(module):
                upward.append(f"{module} imports {imported}")
    assert upward == []


@pytest.mark.parametrize("level", range(len(LAYERS) - 2))
def test_importing_a_layer_loads_nothing_above_it(level):
    """What `python -c "import X"` loads, for every package of the layer (module-level imports)."""
    units = [u for u in LAYERS[level] if u != "emola.mlflow_model_entry"]
    script = ("import sys, importlib\n"
              f"for unit in {units!r}:\n"
              "    importlib.import_module(unit)\n"
              "print('\\n'.join(m for m in sys.modules if m.startswith('emola.')))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    loaded = [m for m in run.stdout.split() if (_layer_of(m) or 0) > level]
    assert loaded == [], f"importing {units} loads {loaded}"


def _job_closure(module: str) -> set[Path]:
    """Source files the stage's job module reaches through imports (the facade's lazy Analyzer aside)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        base = (REPO / "platform" if parts[0] == "emola" else REPO).joinpath(*parts)
        path = base / "__init__.py" if (base / "__init__.py").is_file() else base.with_suffix(".py")
        if not path.is_file() or path in seen:
            continue
        seen.add(path)
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        if path != PACKAGE / "__init__.py":
            todo += _imports(path)
    return {p for p in seen if p.name != "__init__.py" or p.parent not in (PACKAGE, REPO / "jobs")}


def test_each_stage_depends_on_every_package_its_job_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        job = stage["cmd"].split("python -m ", 1)[1].split()[0]
        deps = [REPO / (d if isinstance(d, str) else next(iter(d))) for d in stage["deps"]]
        uncovered = sorted(str(p.relative_to(REPO)) for p in _job_closure(job)
                           if not any(p == d or p.is_relative_to(d) for d in deps))
        if uncovered:
            missing[name] = uncovered
    assert missing == {}
