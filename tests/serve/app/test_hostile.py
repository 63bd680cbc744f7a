"""A hostile caller over real HTTP: bodies that lie about their size, JSON that breaks parsers, uploads that name
server files, containers built to exhaust the decoder, and callers that leave mid-analysis."""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
import psutil
import pytest

from serve.local import replica_processes
from tests.serve.hostile_media import encoded, hostile_videos, mutations

pytestmark = pytest.mark.slow


def _model_replica() -> psutil.Process:
    (replica,) = replica_processes("EmolaModel")
    return replica


def _still_serving(client, synth_test_images) -> None:
    image = synth_test_images[0][0]
    ok = client.post("/v1/analyze", files={"file": (image.name, image.read_bytes(), "image/jpeg")},
                     data={"task": "emotion"})
    assert ok.status_code == 200, ok.text


def _chunked_upload(url: str, kind: str, head: bytes, limit: int = 60_000_000) -> tuple[int, int]:
    """Send a chunked body of up to ``limit`` bytes over a raw socket, checking for an answer after every chunk;
    ``(status, bytes sent when the answer came)`` (status 0: none came; the server read everything)."""
    import select
    import socket
    from urllib.parse import urlparse

    from tests.serve.app.conftest import API_KEY

    where = urlparse(url)
    sock = socket.create_connection((where.hostname, where.port), timeout=30)
    sock.sendall(f"POST /v1/analyze HTTP/1.1\r\nHost: {where.netloc}\r\nAuthorization: Bearer {API_KEY}\r\n"
                 f"Content-Type: {kind}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    sent, chunk = 0, b"\xff" * 65536
    try:
        for piece in [head] + [chunk] * (limit // len(chunk)):
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        else:
            sock.sendall(b"0\r\n\r\n")
        sock.settimeout(30)
        status_line = sock.recv(65536).split(b"\r\n", 1)[0].decode()
        return int(status_line.split()[1]), sent
    except OSError:   # the server closed the connection on the unread rest: the answer came before
        return 413, sent
    finally:
        sock.close()


def test_a_chunked_body_over_the_cap_is_refused_while_it_is_read(server, synth_test_images):
    """No Content-Length to check: the cap (6 MB here) holds on the bytes received, for multipart and JSON: the 413
    comes while the client is still sending, not after 60 MB."""
    cases = {"multipart/form-data; boundary=xyz": b'--xyz\r\nContent-Disposition: form-data; name="file"; '
                                                 b'filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n',
             "application/json": b'{"image": "'}
    for kind, head in cases.items():
        status, sent = _chunked_upload(server.url, kind, head)
        assert status == 413 and sent < 30_000_000, (kind, status, sent)
    with server.client() as client:
        _still_serving(client, synth_test_images)


def test_malformed_json_of_any_shape_is_a_400(server, synth_test_images):
    bodies = {"deep nesting": b"[" * 20000 + b"]" * 20000, "deep objects": b'{"a":' * 20000 + b"1" + b"}" * 20000,
              "huge integer": b'{"image": ' + b"9" * 5000 + b"}", "not utf-8": b'{"image": "\xff\xfe"}',
              "a list": b"[1, 2]", "NaN soup": b'{"image": NaN, "task": Infinity}'}
    with server.client() as client:
        for what, body in bodies.items():
            for route in ("/v1/analyze", "/v1/chat/completions"):
                response = client.post(route, content=body, headers={"content-type": "application/json"})
                assert 400 <= response.status_code < 500, (what, route, response.status_code, response.text[:200])
                assert "Traceback" not in response.text
        _still_serving(client, synth_test_images)


def test_an_upload_that_names_a_server_file_is_not_a_video_and_reveals_nothing(server, recording):
    """The ffconcat playlist that made the replica analyse data/clips/0000.mp4: refused unread, and a real path
    answers exactly as a missing one."""
    answers = []
    with server.client() as client:
        for target in (recording, recording.with_name("missing.mp4"), "data/clips/0000.mp4"):
            playlist = f"ffconcat version 1.0\nfile {target}\n".encode()
            multipart = client.post("/v1/analyze", files={"video": ("v.mp4", playlist, "video/mp4")})
            json_body = client.post("/v1/analyze", json={"video": base64.b64encode(playlist).decode()})
            for response in (multipart, json_body):
                assert response.status_code == 415 and response.json()["error"]["code"] == "video_not_video"
                answers.append(response.json())
    assert all(a == answers[0] for a in answers)


def test_hostile_and_fuzzed_containers_get_a_4xx_in_bounded_time_and_memory(server, recording, synth_test_images):
    cases = {name: value for name, value in hostile_videos(str(recording)).items()}
    base = encoded("matroska", frames=12)
    cases.update({f"mutated_{i}": (data, {200, 413, 415, 422}) for i, data in enumerate(mutations(base, 16, seed=7))})
    replica = _model_replica()
    before = replica.memory_info().rss
    worst = 0.0
    with server.client(timeout=60) as client:
        for name, (data, statuses) in cases.items():
            started = time.monotonic()
            response = client.post("/v1/analyze", files={"video": ("v.mkv", data, "video/x-matroska")},
                                   data={"describe": "false"})
            worst = max(worst, time.monotonic() - started)
            assert response.status_code in statuses, (name, response.status_code, response.text[:300])
            assert "Traceback" not in response.text and str(recording.parent) not in response.text, name
        _still_serving(client, synth_test_images)
    assert worst < 20, worst
    assert replica.is_running() and replica.memory_info().rss - before < 400 * 2**20   # no decoder bomb landed


def test_video_requests_are_bounded_by_their_fps_range(server, recording):
    with server.client() as client:
        for fps in ("0.0000001", "0", "-1", "61", "nan", "1e400"):
            response = client.post("/v1/analyze", files={"video": ("v.mp4", recording.read_bytes(), "video/mp4")},
                                   data={"fps": fps})
            assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_fps", fps


def _long_video(recording, tmp_path) -> bytes:
    """25 s of a panning group photo at 10 fps (250 frames of six faces): many seconds of analysis on 2 cores."""
    import av
    from PIL import Image

    with av.open(str(recording)) as source:
        photo = next(source.decode(video=0)).to_ndarray(format="rgb24")
    photo = np.asarray(Image.fromarray(photo).resize((640, 448)))
    path = tmp_path / "long.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 448, "yuv420p"
        for i in range(250):
            frame = np.roll(photo, i % 7, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def test_a_caller_that_leaves_stops_the_video_analysis(server, recording, tmp_path, synth_test_images):
    data = _long_video(recording, tmp_path)

    def videos(client) -> dict:
        return client.get("/readyz").json()["model"]["videos"]

    with server.client() as client:
        before = videos(client)
        assert before["running"] == 0
        with server.client(timeout=3) as impatient:
            with pytest.raises(httpx.TimeoutException):
                impatient.post("/v1/analyze", files={"video": ("long.mp4", data, "video/mp4")},
                               data={"fps": "all", "describe": "false"})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and videos(client)["running"]:
            time.sleep(0.25)
        after = videos(client)
        assert after["running"] == 0 and after["cancelled"] == before["cancelled"] + 1, after
        _still_serving(client, synth_test_images)


def test_concurrent_photos_through_the_detector_do_not_crash_the_face_deployment(server, real_photos):
    """dlib is not thread-safe and Serve runs the face deployment's calls in threads: 16 uncached photos at once
    used to crash it (SIGSEGV) and answer 503. Each is answered, by the same replica."""
    from concurrent.futures import ThreadPoolExecutor

    photos = [real_photos[name].read_bytes() for name in ("grace_hopper", "astronaut", "t1")]

    def face_pids() -> set[int]:
        return {p.pid for p in replica_processes("LandmarkDetector")}

    before = face_pids()
    with server.client(timeout=120) as client:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: client.post(
                "/v1/analyze", files={"file": ("p.jpg", photos[i % len(photos)], "image/jpeg")},
                data={"task": "emotion"}), range(16)))
    assert [a.status_code for a in answers] == [200] * 16, [a.text[:200] for a in answers if a.status_code != 200]
    assert face_pids() == before
