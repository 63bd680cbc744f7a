"""The Serve application over real HTTP on 127.0.0.1: analyze, OpenAI chat, health, auth, and bad input."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from emola.labels import EMOTIONS
from emola.metrics.rege_parsers import aus_of, emotion_of
from tests.serve.app.conftest import API_KEY

pytestmark = pytest.mark.slow


def _data_url(path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_health_readiness_and_models(server):
    with server.client(key=None) as open_client:
        assert open_client.get("/healthz").json() == {"status": "ok"}
        assert open_client.get("/readyz").json() == {"status": "ready"}   # no paths, run ids or state without the key
        assert open_client.get("/readyz", headers={"Authorization": "Bearer wrong"}).json() == {"status": "ready"}
    with server.client() as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["model"]["profile"] == "tiny"
        assert ready["faces"]["cached_images"] > 0   # FABA-Synth landmarks come from the cache
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["emola-tiny"]


def test_analyze_a_faba_synth_test_image(server, synth_test_images, small_pipeline):
    image, _label = synth_test_images[0]
    with server.client() as client:
        response = client.post("/v1/analyze", files={"file": (image.name, image.read_bytes(), "image/jpeg")},
                               data={"task": "both"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["emotion"] in EMOTIONS
    # The emotion and AUs are the REGE parsers' reading of the generated descriptions.
    assert body["emotion"] == emotion_of(body["results"]["emotion"]["description"])
    assert body["aus"] == sorted(aus_of(body["results"]["au"]["description"]))
    assert len(body["face"]["landmarks"]) == 68 and len(body["face"]["box"]) == 4
    assert body["landmark_source"] == "annotation@1-68"
    assert body["model_version"]["reference"].endswith("checkpoint")
    assert {r["model"] for r in body["results"].values()} == {"emola-tiny"}   # one joint model answers both
    assert {"decode", "landmarks", "generate", "total"} <= set(body["timings_ms"])
    # Emotion and AU questions for one image are generated in one batch.
    assert body["results"]["emotion"]["batch_size"] == 2


def test_a_cached_face_is_answered_by_the_ingress_and_others_go_to_the_detector(server, synth_test_images):
    """A known image (FABA-Synth: in the landmark cache) costs no call to the face deployment; an unknown one does."""
    blank = _png(np.full((96, 96, 3), 180, np.uint8))

    def detect_calls(client) -> int:
        return client.get("/readyz").json()["faces"]["detect_calls"]

    with server.client() as client:
        before = detect_calls(client)
        for image, _ in synth_test_images[:3]:
            response = client.post("/v1/analyze", files={"file": (image.name, image.read_bytes(), "image/jpeg")},
                                   data={"task": "emotion"})
            assert response.status_code == 200 and response.json()["landmark_source"] == "annotation@1-68"
        assert detect_calls(client) == before
        unknown = client.post("/v1/analyze", files={"file": ("blank.png", blank, "image/png")})
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "no_face"
        assert detect_calls(client) == before + 1


def test_an_upload_larger_than_grpcs_default_message_reaches_the_detector(server):
    """The ingress calls the face and model replicas over Serve's gRPC transport, whose replica servers take
    4 MiB per message by default; the app raises that to what ``serve.max_body_bytes`` (6 MB here) lets in,
    so a 5.9 MB upload is detected (no face in noise: 422) rather than failing the call (500)."""
    noise = np.random.default_rng(0).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    data = _png(noise)
    assert 4 * 2**20 < len(data) <= 6_000_000 and noise.nbytes > 4 * 2**20
    with server.client() as client:
        before = client.get("/readyz").json()["faces"]["detect_calls"]
        response = client.post("/v1/analyze", files={"file": ("noise.png", data, "image/png")},
                               data={"task": "emotion"})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "no_face"
        assert client.get("/readyz").json()["faces"]["detect_calls"] == before + 1


def test_analyze_json_base64_and_data_url(server, synth_test_images):
    image, _ = synth_test_images[1]
    with server.client() as client:
        plain = client.post("/v1/analyze", json={"image": base64.b64encode(image.read_bytes()).decode(), "task": "au"})
        url = client.post("/v1/analyze", json={"image": _data_url(image), "task": "emotion"})
    assert plain.status_code == 200 and plain.json()["aus"] is not None and plain.json()["emotion"] is None
    assert url.status_code == 200 and url.json()["emotion"] in EMOTIONS


def test_openai_client_chat_completion_and_stream(server, synth_test_images):
    import openai

    image, _ = synth_test_images[2]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What emotions are conveyed by this face?"},
        {"type": "image_url", "image_url": {"url": _data_url(image)}}]}]
    completion = client.chat.completions.create(model="emola-tiny", messages=messages, max_tokens=24)
    text = completion.choices[0].message.content
    assert text and completion.object == "chat.completion"
    # The untrained test checkpoint never says </s> within 24 tokens: cut by the limit, counted in tokens.
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 24
    assert completion.usage.prompt_tokens > 36   # template, question, 36 image tokens and the prior token
    stream = client.chat.completions.create(model="emola-tiny", messages=messages, max_tokens=24, stream=True)
    chunks = [c for c in stream if c.choices]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 3                      # streamed in pieces, not one block
    assert "".join(pieces) == text              # the same decoding as the non-streamed answer
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="remote URLs are disabled"):
        client.chat.completions.create(model="emola-tiny", messages=[{"role": "user", "content": [
            {"type": "text", "text": "Describe the face."},
            {"type": "image_url", "image_url": {"url": "https://example.com/face.jpg"}}]}])


def _bomb_png(side: int = 12000) -> bytes:
    """A ``side`` x ``side`` greyscale PNG of about 150 kB that decodes to 144 megapixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\x00" * (side + 1)   # filter byte + one grey byte per pixel
    raw = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_bad_inputs_get_the_right_4xx_and_the_server_keeps_serving(server, synth_test_images):
    good = synth_test_images[0][0].read_bytes()
    blank = _png(np.full((128, 128, 3), 200, np.uint8))   # an image with no face
    cases = {
        "non-image bytes": (415, "image_not_image", {"files": {"file": ("x.jpg", b"this is not an image", "image/jpeg")}}),
        "truncated JPEG": (422, "image_corrupt", {"files": {"file": ("t.jpg", good[: len(good) // 3], "image/jpeg")}}),
        "decompression bomb": (413, "image_too_large", {"files": {"file": ("bomb.png", _bomb_png(), "image/png")}}),
        "empty body": (400, "empty_body", {"content": b"", "headers": {"content-type": "application/json"}}),
        "empty file": (400, "image_empty", {"files": {"file": ("e.jpg", b"", "image/jpeg")}}),
        "oversized body": (413, "body_too_large", {"files": {"file": ("big.jpg", b"\xff" * 6_100_000, "image/jpeg")}}),
        "no face": (422, "no_face", {"files": {"file": ("blank.png", blank, "image/png")}}),
        "malformed JSON": (400, "malformed_json", {"content": b'{"image": ', "headers": {"content-type": "application/json"}}),
        "bad base64": (400, "bad_base64", {"json": {"image": "***not base64***"}}),
        "unknown task": (400, "invalid_task", {"json": {"image": base64.b64encode(good).decode(), "task": "age"}}),
    }
    with server.client() as client:
        for name, (status, code, request) in cases.items():
            response = client.post("/v1/analyze", **request)
            assert response.status_code == status, (name, response.text)
            assert response.json()["error"]["code"] == code, name
        bad_chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert bad_chat.status_code == 400 and bad_chat.json()["error"]["code"] == "one_image_needed"
        # Still serving after all of that.
        assert client.get("/healthz").status_code == 200
        ok = client.post("/v1/analyze", files={"file": ("a.jpg", good, "image/jpeg")}, data={"task": "emotion"})
        assert ok.status_code == 200
    for key in (None, "wrong-key", API_KEY + "x"):
        with server.client(key=key) as client:
            for path, method in (("/v1/models", "GET"), ("/v1/analyze", "POST"), ("/v1/chat/completions", "POST")):
                response = client.request(method, path, json={})
                assert response.status_code == 401, (key, path, response.text)
                assert response.json()["error"]["code"] == "invalid_api_key"


def _video(path, frames: int, size: tuple[int, int], fps: float = 10.0) -> bytes:
    from emola.video import write_video

    width, height = size
    images = [np.full((height, width, 3), 40 + 5 * i, np.uint8) for i in range(frames)]
    return write_video(path, images, fps).read_bytes()


def test_analyze_a_video_upload_multipart_and_json(server, recording):
    data = recording.read_bytes()
    with server.client() as client:
        response = client.post("/v1/analyze", files={"file": ("group.mp4", data, "video/mp4")},
                               data={"fps": "5", "smoothing": "3"})
        assert response.status_code == 200, response.text
        body = response.json()
        plain = client.post("/v1/analyze", json={"video": base64.b64encode(data).decode(), "fps": 5,
                                                 "describe": False})
    assert plain.status_code == 200, plain.text
    assert body["object"] == "video.analysis" and body["video"]["width"] == 1000 and body["video"]["height"] == 700
    assert body["options"]["fps"] == 5.0 and body["frames"] == 8          # 16 frames at 10 fps, sampled at 5
    assert sorted({r["frame"] for r in body["rows"]}) == list(range(0, 16, 2))
    assert {r["status"] for r in body["rows"] if r["frame"] >= 12} == {"no_face"}   # the empty wall
    assert body["faces"] >= 4
    faces = [r for r in body["rows"] if r["face_id"] is not None]
    assert all(abs(sum(r[e] for e in EMOTIONS) - 1) < 1e-3 and "AU12" in r for r in faces)
    assert body["key_moments"] and all(isinstance(k["description"], str) for k in body["key_moments"])
    assert {"probe", "analysis", "total"} <= set(body["timings_ms"])
    # The same video as JSON base64, without descriptions: the same probabilities, no text.
    other = plain.json()
    assert [r.get("happiness") for r in other["rows"]] == [r.get("happiness") for r in body["rows"]]
    assert all(r["description"] is None for r in other["rows"])


def test_bad_videos_get_their_4xx_and_the_server_keeps_serving(server, recording, tmp_path):
    good = recording.read_bytes()
    wide = _video(tmp_path / "wide.mp4", 2, (1280, 720))                 # 921,600 pixels: over the test cap
    long = _video(tmp_path / "long.mp4", 40, (64, 64), fps=1.0)          # 40 s: over the 30 s cap
    cases = {
        "text as a video": (415, "video_not_video", {"files": {"file": ("x.mp4", b"not a video", "video/mp4")}}),
        "truncated MP4": (422, "video_corrupt", {"files": {"file": ("t.mp4", good[: len(good) // 3], "video/mp4")}}),
        "empty video part": (400, "video_empty", {"files": {"video": ("e.mp4", b"", "video/mp4")}}),
        "resolution over the cap": (413, "video_too_large", {"files": {"file": ("w.mp4", wide, "video/mp4")}}),
        "duration over the cap": (413, "video_too_large", {"files": {"file": ("l.mp4", long, "video/mp4")}}),
        "bad fps": (400, "invalid_fps", {"files": {"file": ("g.mp4", good, "video/mp4")}, "data": {"fps": "fast"}}),
        "bad smoothing": (400, "invalid_smoothing", {"json": {"video": base64.b64encode(good).decode(),
                                                             "smoothing": 0}}),
    }
    with server.client() as client:
        for name, (status, code, request) in cases.items():
            response = client.post("/v1/analyze", **request)
            assert response.status_code == status, (name, response.text)
            assert response.json()["error"]["code"] == code, name
        assert client.get("/healthz").status_code == 200
        ok = client.post("/v1/analyze", files={"video": ("g.mp4", good, "application/octet-stream")},
                         data={"fps": "2", "describe": "false"})
        assert ok.status_code == 200 and ok.json()["frames"] == 4, ok.text


def test_a_real_photo_goes_through_the_detector_over_http(server, real_photos):
    """Not in the landmark cache: detection, landmarks and the prior on the face deployment, then both tasks; the
    response does not say whether an image was cached (its landmark source reads the same)."""
    photo = real_photos["grace_hopper"].read_bytes()
    with server.client() as client:
        before = client.get("/readyz").json()["faces"]["detect_calls"]
        response = client.post("/v1/analyze", files={"file": ("hopper.jpg", photo, "image/jpeg")},
                               data={"task": "both"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["face"]["landmarks"]) == 68 and body["face"]["score"] > 0
        assert body["emotion"] in EMOTIONS and body["aus"] is not None
        assert body["landmark_source"] == "annotation@1-68"   # the prior the model reads, as for a cached image
        assert client.get("/readyz").json()["faces"]["detect_calls"] == before + 1
