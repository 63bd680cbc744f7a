"""Every command the README and the docs show parses: the `--help` of each (sub)command they name exits 0 and
lists every `--flag` they pass, and every `section.key=value` override they give a job is a parameter."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN

#: Programs whose subcommands are words: how many leading words name the (sub)command at most.
_SUBCOMMANDS = {"emola": 2, "dvc": 2, "ray": 2, "serve": 1, "mlflow": 2, "hf": 1}
#: The files a user follows: the README, the guides, the cluster runbook.
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "k8s" / "README.md"]
_OVERRIDE = re.compile(r"^[a-z_]+(\.[a-z0-9_]+)+=")


def _shell_commands(path: Path) -> list[str]:
    """A file's bash blocks as commands: continuation lines and quoted newlines joined, split at ``&&``."""
    commands, pending = [], ""
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                shlex.split(pending, comments=True)
            except ValueError:      # a quote opened on this line closes on a later one
                continue
            command, pending = pending.strip(), ""
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def _words(command: str) -> list[list[str]]:
    """The commands of a line (split at unquoted ``&&``, ``;`` and ``|``), each as words without ``VAR=value``
    prefixes; a command after a lone ``--`` (``ray job submit ... -- python -m jobs.train ...``) is a command of
    its own."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    parts, current = [], []
    for word in lexer:
        if word in ("&&", ";", "|", "||", "&") or (word == "--" and current):
            parts.append(current)
            current = []
        else:
            current.append(word)
    parts.append(current)
    out = []
    for part in parts:
        while part and "=" in part[0] and not part[0].startswith("-"):
            part = part[1:]
        if part:
            out.append(part)
    return out


def _help_call(words: list[str]) -> tuple[str, ...] | None:
    """The ``--help`` call that checks a command parses, or None for shell built-ins, setup and programs this
    environment does not install (kubectl, curl, helm)."""
    if words[0] in ("export", ".", "bash", "curl"):
        return None
    if words[0].endswith("python"):
        if len(words) < 2 or words[1] == "-c":
            return None
        if words[1] == "-m":
            return ("python", "-m", words[2], "--help")
        return ("python", words[1], "--help")
    program, rest = words[0], words[1:]
    if not (VENV_BIN / program).is_file():
        return None
    sub = []
    for word in rest[:_SUBCOMMANDS.get(program, 0)]:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
            break
        sub.append(word)
    return (program, *sub, "--help")


def _checked() -> dict[tuple[str, ...], dict]:
    """Each help call, with the long flags and the overrides the documents pass to it, and where."""
    calls: dict[tuple[str, ...], dict] = {}
    for path in DOCUMENTS:
        for command in _shell_commands(path):
            for words in _words(command):
                call = _help_call(words)
                if call is None:
                    continue
                entry = calls.setdefault(call, {"flags": set(), "overrides": set(), "files": set()})
                entry["files"].add(path.relative_to(REPO).as_posix())
                entry["flags"] |= {w.split("=", 1)[0] for w in words if w.startswith("--") and len(w) > 2}
                if call[0] == "python" and call[1] == "-m" and call[2].startswith("jobs."):
                    given = tuple(w for w in words if _OVERRIDE.match(w) or w.startswith("profile="))
                    if given:
                        entry["overrides"].add(given)
    return calls


CALLS = _checked()


@functools.cache
def _help(call: tuple[str, ...]) -> subprocess.CompletedProcess:
    program = sys.executable if call[0] == "python" else str(VENV_BIN / call[0])
    return subprocess.run([program, *call[1:]], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_the_readme_shows_each_job_and_tool():
    readme = {call for call, entry in CALLS.items() if "README.md" in entry["files"]}
    programs = {call[0] if call[0] != "python" else call[2] if call[1] == "-m" else call[1] for call in readme}
    assert {"emola", "dvc", "ray", "serve", "mlflow", "jobs.data", "jobs.train", "jobs.evaluate",
            "benchmarks/gpu.py"} <= programs, programs


def test_the_documents_are_read():
    files = set().union(*(entry["files"] for entry in CALLS.values()))
    assert {"README.md", "docs/ray-jobs.md", "docs/reproducing-emola.md", "docs/using.md", "k8s/README.md"} <= files


@pytest.mark.parametrize("call", sorted(CALLS), ids=" ".join)
def test_each_command_parses_and_knows_every_flag_the_documents_pass(call):
    run = _help(call)
    entry = CALLS[call]
    where = ", ".join(sorted(entry["files"]))
    assert run.returncode == 0, f"{' '.join(call)} ({where}):\n{run.stdout[-1500:]}\n{run.stderr[-1500:]}"
    text = run.stdout + run.stderr
    unknown = sorted(flag for flag in entry["flags"] if not re.search(re.escape(flag) + r"\b", text))
    assert not unknown, f"{' '.join(call[:-1])} ({where}) has no {', '.join(unknown)}"


def test_every_override_the_documents_give_a_job_is_a_parameter():
    """Each command's overrides together (values like ``$PWD/...`` are only paths to the loader)."""
    from emola.config import load_config

    given = sorted(set().union(*(entry["overrides"] for entry in CALLS.values())))
    assert len(given) >= 5
    for overrides in given:
        load_config(REPO / "params.yaml", list(overrides))
