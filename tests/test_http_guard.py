"""The proxy's body cap: a 413 as soon as the bytes received pass the cap, the rest left unread."""

from __future__ import annotations

import asyncio
import json

from emola.http_guard import BodyCap, proxy_middlewares


async def _app(scope, receive, send):
    """An application that reads the whole body, then answers 200 with its size."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def _run(chunks: int, chunk: int = 1000, headers=(), cap: int = 10_000) -> tuple[list[dict], int]:
    """(messages sent to the client, body messages the client had to deliver)."""
    delivered, sent = [0], []

    async def receive():
        delivered[0] += 1
        return {"type": "http.request", "body": b"x" * chunk, "more_body": delivered[0] < chunks}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": list(headers)}
    asyncio.run(BodyCap(_app, max_bytes=cap)(scope, receive, send))
    return sent, delivered[0]


def test_a_chunked_body_over_the_cap_is_refused_while_it_arrives():
    sent, delivered = _run(chunks=100_000)
    assert sent[0]["status"] == 413 and delivered == 11   # stopped at the chunk that passed 10,000 bytes
    assert json.loads(sent[1]["body"])["error"]["code"] == "body_too_large" and len(sent) == 2


def test_a_declared_length_over_the_cap_is_refused_unread_and_a_small_body_passes():
    sent, delivered = _run(chunks=5, headers=[(b"content-length", b"99999999")])
    assert sent[0]["status"] == 413 and delivered == 0
    sent, delivered = _run(chunks=5, headers=[(b"content-length", b"5000")])
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"5000"
    sent, _ = _run(chunks=1, headers=[(b"content-length", b"12abc")])
    assert sent[0]["status"] == 413


def test_the_proxy_hook_reads_its_cap_from_the_environment(monkeypatch):
    monkeypatch.setenv("EMOLA_MAX_BODY_BYTES", "1234")
    (middleware,) = proxy_middlewares()
    assert middleware.cls is BodyCap and middleware.kwargs == {"max_bytes": 1234}
