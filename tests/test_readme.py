"""Every command the README shows parses: `--help` of each (sub)command it names exits 0."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO, VENV_BIN

#: Programs whose subcommands are words: how many leading words name the (sub)command at most.
_SUBCOMMANDS = {"emola": 2, "dvc": 2, "ray": 2, "serve": 1, "mlflow": 2}


def _shell_commands() -> list[str]:
    """The README's bash blocks as commands: continuation lines and quoted newlines joined, split at ``&&``."""
    text = (REPO / "README.md").read_text()
    commands, pending = [], ""
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                shlex.split(pending, comments=True)
            except ValueError:      # a quote opened on this line closes on a later one
                continue
            command, pending = pending.split(" #", 1)[0].strip(), ""
            if command and not command.startswith("#"):
                commands += [part.strip() for part in command.split("&&")]
    return commands


def _help_call(command: str) -> tuple[str, ...] | None:
    """The ``--help`` call that checks ``command`` parses, or None for shell built-ins and setup."""
    words = shlex.split(command, comments=True)
    while words and "=" in words[0] and not words[0].startswith("-"):   # VAR=value prefixes
        words = words[1:]
    if not words or words[0] in ("export", ".", "bash", "curl"):
        return None
    if words[0].endswith("python"):
        if words[1] == "-m":
            return ("python", "-m", words[2], "--help")
        if words[1] == "-c":
            return None
        return ("python", words[1], "--help")
    program, rest = words[0], words[1:]
    sub = []
    for word in rest[:_SUBCOMMANDS.get(program, 0)]:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
            break
        sub.append(word)
    return (program, *sub, "--help")


def _calls() -> list[tuple[str, ...]]:
    calls = {call for command in _shell_commands() if (call := _help_call(command))}
    return sorted(calls)


def test_the_readme_shows_each_job_and_tool():
    programs = {call[0] if call[0] != "python" else call[2] if call[1] == "-m" else call[1] for call in _calls()}
    assert {"emola", "dvc", "ray", "serve", "mlflow", "jobs.data", "jobs.train", "jobs.evaluate",
            "benchmarks/gpu.py"} <= programs, programs


@pytest.mark.parametrize("call", _calls(), ids=" ".join)
def test_each_readme_command_parses(call):
    program = sys.executable if call[0] == "python" else str(VENV_BIN / call[0])
    run = subprocess.run([program, *call[1:]], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, f"{' '.join(call)}:\n{run.stdout[-1500:]}\n{run.stderr[-1500:]}"
