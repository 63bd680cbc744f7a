"""The model deployment's inference engine over real HTTP: a request joins a running stream's batch,
and a prompt too long for the context is refused at once."""

from __future__ import annotations

import base64
import json
import time

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def face(synth_test_images) -> bytes:
    return synth_test_images[0][0].read_bytes()


def _chat(face: bytes, question: str, **options) -> dict:
    url = "data:image/jpeg;base64," + base64.b64encode(face).decode()
    return {"model": "emola-tiny", "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}], **options}


def test_a_plain_request_joins_a_running_stream_and_finishes_first(server, face):
    with server.client() as client:
        alone = client.post("/v1/analyze", files={"file": ("f.jpg", face, "image/jpeg")}, data={"task": "emotion"})
        assert alone.status_code == 200, alone.text
        events: list[tuple[str, float]] = []
        with client.stream("POST", "/v1/chat/completions",
                           json=_chat(face, "Describe the face at length.", max_tokens=1500, stream=True)) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            for _ in range(6):   # the stream is under way
                next(lines)
            joined = client.post("/v1/analyze", files={"file": ("f.jpg", face, "image/jpeg")},
                                 data={"task": "emotion"})
            events.append(("plain", time.perf_counter()))
            rest = [line for line in lines if line.startswith("data: ")]
            events.append(("stream", time.perf_counter()))
    assert joined.status_code == 200, joined.text
    finish = json.loads(rest[-2][6:])["choices"][0]["finish_reason"]
    assert finish == "length"                                      # the stream ran its 1,500 tokens
    assert [name for name, _ in sorted(events, key=lambda e: e[1])] == ["plain", "stream"]
    result = joined.json()["results"]["emotion"]
    assert result["batch_size"] == 2                               # it decoded in the stream's batch
    assert result["description"] == alone.json()["results"]["emotion"]["description"]   # as when served alone


def test_a_prompt_longer_than_the_context_gets_400_at_once(server, face):
    question = "Why? " * 40_000   # 200,000 characters
    with server.client() as client:
        for stream in (False, True):
            started = time.perf_counter()
            response = client.post("/v1/chat/completions", json=_chat(face, question, max_tokens=16, stream=stream))
            elapsed = time.perf_counter() - started
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "context_length_exceeded" and "context of 2048 tokens" in error["message"]
            assert elapsed < 1.0, f"took {elapsed:.2f} s"
        assert client.post("/v1/analyze", files={"file": ("f.jpg", face, "image/jpeg")},
                           data={"task": "emotion"}).status_code == 200


