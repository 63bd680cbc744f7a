"""Run the application locally with ``serve run`` in a child process (tests and benchmarks).

The config is generated like ``serve/config.yaml`` with parameter overrides, so what is
tested is what ``serve run serve/config.yaml`` deploys.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from emola.cli.serve_commands import guard_env
from serve.app import render, serve_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def replica_processes(deployment: str = "EmolaModel") -> list:
    """The local processes of ``deployment``'s replicas (application ``emola``), as psutil processes."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(f"ServeReplica:emola:{deployment}" in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    url: str
    process: subprocess.Popen
    log: Path
    api_key: str | None

    def client(self, key: str | None = "default", timeout: float = 120) -> httpx.Client:
        key = self.api_key if key == "default" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)   # serve run shuts Serve and its local Ray down
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True)


def start(workdir: Path, overrides: list[str], api_key: str | None = None, timeout: float = 240,
          import_path: str | None = None) -> LocalServer:
    """``serve run`` with ``overrides`` on a free port of 127.0.0.1; returns once ``/readyz`` answers 200.
    ``import_path``: another application builder (tests)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = serve_config(REPO / "params.yaml", [f"serve.port={port}", *overrides])
    if import_path:
        config["applications"][0]["import_path"] = import_path
    (workdir / "config.yaml").write_text(render(config))
    # As `emola serve` runs it: Serve's proxy caps request bodies as it reads them, at serve.max_body_bytes.
    env = dict(os.environ, PYTHONUNBUFFERED="1", **guard_env(workdir / "config.yaml"))
    env.pop("RAY_ADDRESS", None)
    env.pop("EMOLA_API_KEY", None)
    if api_key:
        env["EMOLA_API_KEY"] = api_key
    log = workdir / "serve.log"
    process = subprocess.Popen([str(BIN / "serve"), "run", str(workdir / "config.yaml")], cwd=REPO, env=env,
                               stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    server = LocalServer(f"http://127.0.0.1:{port}", process, log, api_key)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve run exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(server.url + "/readyz", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.stop()
    raise RuntimeError(f"the server was not ready in {timeout} s:\n{log.read_text()[-4000:]}")
