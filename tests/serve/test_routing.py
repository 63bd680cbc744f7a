"""One model per task behind one endpoint: `serve run` over a folder of per-task checkpoints.

Outside tests/serve/app on purpose: that package keeps its own server up for all its tests,
and two local `serve run` instances would share one Ray.
"""

from __future__ import annotations

import base64

import pytest

from tests.conftest import copy_as_task_part

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def split_server(tiny_checkpoint, small_pipeline, tmp_path_factory):
    from serve import local

    root = tmp_path_factory.mktemp("split")
    for task in ("emotion", "au"):   # the layout train.separate_models exports
        copy_as_task_part(tiny_checkpoint, root / "models" / task, task)
    srv = local.start(root / "serve", [
        f"serve.checkpoint={root / 'models'}", f"serve.landmark_cache={small_pipeline['landmarks']}",
        "serve.min_replicas=1", "serve.max_replicas=1", "evaluate.generation.max_new_tokens=16",
        "serve.num_cpus=0.5"])   # two model replicas, the face replica and the ingress fit 2 cores
    yield srv, root / "models"
    srv.stop()


def test_each_task_goes_to_its_own_model(split_server, small_pipeline, tmp_path):
    from emola.data.manifest import read_manifest
    from emola.synth.clips import generate_clips

    clip = generate_clips(tmp_path, count=1, seed=1, size=64, fps=10, seconds=2.0)[0]

    server, models = split_server
    row = next(r for r in read_manifest(small_pipeline["manifests"] / "test.jsonl") if r.task == "emotion")
    image = base64.b64encode(row.image_path().read_bytes()).decode()
    with server.client() as client:
        listed = client.get("/v1/models").json()["data"]
        assert [(m["id"], m["tasks"]) for m in listed] == [("emola-tiny-au", ["au"]), ("emola-tiny-emotion", ["emotion"])]
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and sorted(ready["models"]) == ["au", "emotion"]

        body = client.post("/v1/analyze", json={"image": image, "task": "both"}).json()
        for task in ("emotion", "au"):
            result = body["results"][task]
            assert result["model"] == f"emola-tiny-{task}"
            assert result["model_version"]["reference"] == str(models / task)
            assert result["batch_size"] == 1   # separate deployments: no shared batch
        assert body["emotion"] is not None and body["aus"] is not None

        messages = [{"role": "user", "content": [
            {"type": "text", "text": "What AUs are conveyed by this face?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + image}}]}]
        chat = client.post("/v1/chat/completions", json={"model": "emola-tiny-au", "messages": messages})
        assert chat.status_code == 200 and chat.json()["model"] == "emola-tiny-au"
        unknown = client.post("/v1/chat/completions", json={"model": "emola-tiny", "messages": messages})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        assert "emola-tiny-au" in unknown.json()["error"]["message"]
        # These published-style parts have no readout head: a video is refused with a reason, not a 500.
        video = client.post("/v1/analyze", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
        assert video.status_code == 400 and video.json()["error"]["code"] == "video_not_supported", video.text
        assert client.get("/healthz").status_code == 200   # still serving
