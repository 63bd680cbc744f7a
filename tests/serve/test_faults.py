"""Serving under overload and faults over real HTTP: 503 with Retry-After, a killed model replica, and a request
that kills its replica (not repeated onto the next one).

Outside tests/serve/app on purpose (like test_routing.py): its server runs with two
model replicas and small queues, and two local `serve run` instances would share one Ray.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time

import httpx
import pytest

from serve.local import replica_processes

pytestmark = pytest.mark.slow

# Two model and two face replicas (autoscaling bounds apply to both) and the ingress fit 2 cores: 4 x 0.4 + 0.1.
LIMITS = ["serve.min_replicas=2", "serve.max_replicas=2", "serve.max_ongoing_requests=2",
          "serve.max_queued_requests=2", "serve.num_cpus=0.4", "landmarks.cpus_per_actor=0.4",
          "evaluate.generation.max_new_tokens=48"]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, small_pipeline, tmp_path_factory):
    from serve import local

    srv = local.start(tmp_path_factory.mktemp("serve-engine"), [
        f"serve.checkpoint={tiny_checkpoint}", f"serve.landmark_cache={small_pipeline['landmarks']}", *LIMITS],
        import_path="tests.serve.poison:build_app")   # the real application; its model dies on one question
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def face(small_pipeline) -> bytes:
    from emola.data.manifest import read_manifest

    row = next(r for r in read_manifest(small_pipeline["manifests"] / "test.jsonl") if r.task == "emotion")
    return row.image_path().read_bytes()


def _load(server, face: bytes, clients: int, seconds: float, on_tick=None) -> list[tuple[int, dict, dict]]:
    """``clients`` threads sending /v1/analyze in a loop for ``seconds``; (status, headers, body) of every answer."""
    answers: list[tuple[int, dict, dict]] = []
    stop = time.time() + seconds

    def client_loop():
        with server.client(timeout=60) as client:
            while time.time() < stop:
                try:
                    r = client.post("/v1/analyze", files={"file": ("f.jpg", face, "image/jpeg")},
                                    data={"task": "both"})
                    answers.append((r.status_code, dict(r.headers), r.json()))
                except httpx.HTTPError as err:   # a lost request: the test fails on it
                    answers.append((0, {}, {"error": repr(err)}))

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    if on_tick:
        on_tick()
    for t in threads:
        t.join()
    return answers


def test_overflow_gets_503_with_retry_after(server, face):
    answers = _load(server, face, clients=24, seconds=6)
    statuses = {status for status, _, _ in answers}
    assert statuses <= {200, 503}, [a for a in answers if a[0] not in (200, 503)][:3]
    assert 200 in statuses and 503 in statuses
    for status, headers, body in answers:
        if status == 503:
            assert headers.get("retry-after") == "1" and body["error"]["code"] == "overloaded"


def test_a_killed_replica_loses_no_request_and_comes_back(server, face):
    assert len(replica_processes()) == 2
    killed: list[int] = []

    def kill_one():
        time.sleep(2.0)
        victim = replica_processes()[0]
        killed.append(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)

    answers = _load(server, face, clients=4, seconds=8, on_tick=kill_one)
    assert killed
    lost = [a for a in answers if a[0] not in (200, 503)]
    assert not lost, lost[:3]                      # every accepted request got an answer or a retryable 503
    assert all(h.get("retry-after") for s, h, _ in answers if s == 503)
    assert sum(s == 200 for s, _, _ in answers) > 10
    deadline = time.time() + 90                    # Serve starts a new replica; the server keeps serving
    while time.time() < deadline and len([p for p in replica_processes() if p.pid not in killed]) < 2:
        time.sleep(1)
    assert len([p for p in replica_processes() if p.pid not in killed]) == 2
    # Still serving: a client that honours Retry-After (the new replica may still be loading) gets its answer.
    with server.client() as client:
        deadline = time.time() + 60
        while True:
            ok = client.post("/v1/analyze", files={"file": ("f.jpg", face, "image/jpeg")}, data={"task": "emotion"})
            if ok.status_code != 503 or time.time() > deadline:
                break
            assert ok.headers.get("retry-after"), ok.text
            time.sleep(float(ok.headers["retry-after"]))
    assert ok.status_code == 200, ok.text


def _wait_for_replicas(count: int, exclude: set[int], seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and len([p for p in replica_processes() if p.pid not in exclude]) < count:
        time.sleep(1)
    assert len([p for p in replica_processes() if p.pid not in exclude]) == count


def _ready(server, face: bytes) -> None:
    """Both replicas loaded and answering (a new replica may still be loading its checkpoint)."""
    with server.client() as client:
        deadline = time.time() + 90
        while client.post("/v1/analyze", files={"file": ("f.jpg", face, "image/jpeg")},
                          data={"task": "emotion"}).status_code != 200:
            assert time.time() < deadline
            time.sleep(1)


def _poisoned(server, face: bytes) -> tuple[set[int], list[dict]]:
    """Both replicas up and answering; their pids, and a chat turn whose question kills the replica answering it."""
    from tests.serve.poison import POISON

    _wait_for_replicas(2, set())
    _ready(server, face)
    messages = [{"role": "user", "content": [
        {"type": "text", "text": f"{POISON}: what emotion is this face?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(face).decode()}}]}]
    return {p.pid for p in replica_processes()}, messages


def test_a_request_that_kills_its_replica_is_not_repeated_onto_the_next(server, face):
    """Alone on the deployment it is the likely cause: one replica dies, the answer says so (500), no repeat."""
    before, messages = _poisoned(server, face)
    with server.client() as client:
        started = time.time()
        response = client.post("/v1/chat/completions", json={"model": "emola-tiny", "messages": messages})
        assert response.status_code == 500 and response.json()["error"]["code"] == "replica_crashed", response.text
        assert "likely cause" in response.json()["error"]["message"] and time.time() - started < 30
        time.sleep(2)
        alive = {p.pid for p in replica_processes()}
        assert len(before - alive) == 1, (before, alive)   # one replica died, not two or three
        _wait_for_replicas(2, before - alive)
        _ready(server, face)


def test_a_replica_dying_mid_stream_ends_the_stream_without_exception_text(server, face):
    """The status line is out, so the error is in-band: it names an incident, never the exception or a trace."""
    before, messages = _poisoned(server, face)
    with server.client() as client:
        with client.stream("POST", "/v1/chat/completions", json={"model": "emola-tiny", "messages": messages,
                                                                  "stream": True}) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
    error = next(json.loads(e[6:]) for e in events if '"error"' in e)["error"]
    assert error["code"] == "stream_failed" and "incident" in error["message"], error
    assert "Error" not in error["message"] and "Traceback" not in error["message"] and "pid" not in error["message"]
    time.sleep(2)
    _wait_for_replicas(2, before - {p.pid for p in replica_processes()})
