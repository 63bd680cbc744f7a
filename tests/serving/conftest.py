"""One real EmoLA Serve application per test module: `serve run` on 127.0.0.1 with an API key."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, VENV_BIN

API_KEY = "test-key-0123456789"
ARTIFACTS = REPO / "test-output"   # screenshots and logs kept with the test output (gitignored)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def client(self, key: str | None = API_KEY, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


def start_server(tmp: Path, overrides: list[str], api_key: str | None = API_KEY, timeout: float = 240) -> Server:
    """`serve run` of a config generated like serve/config.yaml, with ``overrides``; waits for /readyz."""
    from serve.app import render, serve_config

    port = free_port()
    overrides = [f"serve.port={port}", *overrides]
    config = serve_config(REPO / "params.yaml", overrides)
    (tmp / "config.yaml").write_text(render(config))
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_SERVE_LOG_TO_STDERR="1")
    env.pop("RAY_ADDRESS", None)
    env.pop("EMOLA_API_KEY", None)
    if api_key:
        env["EMOLA_API_KEY"] = api_key
    log = tmp / "serve.log"
    process = subprocess.Popen([str(VENV_BIN / "serve"), "run", str(tmp / "config.yaml")], cwd=REPO, env=env,
                               stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve run exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return Server(url, process, log)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(Server(url, process, log))
    raise RuntimeError(f"the server was not ready in {timeout} s:\n{log.read_text()[-4000:]}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGINT)   # serve run shuts Serve and its local Ray down
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    subprocess.run([str(VENV_BIN / "ray"), "stop", "--force"], capture_output=True)


@pytest.fixture(scope="package")
def server(tiny_checkpoint, small_pipeline, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("serve"), [
        f"serve.checkpoint={tiny_checkpoint}", f"serve.landmark_cache={small_pipeline['landmarks']}",
        "serve.max_body_bytes=2000000", "serve.max_image_pixels=4000000", "serve.min_replicas=1",
        "serve.max_replicas=1", "evaluate.generation.max_new_tokens=48"])
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def synth_test_images(small_pipeline) -> list[tuple[Path, str]]:
    """(image, emotion label) of the small release's emotion test records."""
    from emola.data.manifest import read_manifest

    rows = [r for r in read_manifest(small_pipeline["manifests"] / "test.jsonl") if r.task == "emotion"]
    return [(r.image_path(), r.emotion) for r in rows]
