"""One real EmoLA Serve application for these tests: `serve run` on 127.0.0.1 with an API key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

API_KEY = "test-key-0123456789"
ARTIFACTS = REPO / "test-output"   # screenshots kept with the test output (gitignored)


@pytest.fixture(scope="package")
def server(readout_checkpoint, small_pipeline, tmp_path_factory):
    """The tiny model with a readout head, so that videos are answered too."""
    from serve import local

    srv = local.start(tmp_path_factory.mktemp("serve"), [
        f"serve.checkpoint={readout_checkpoint}", f"serve.landmark_cache={small_pipeline['landmarks']}",
        "serve.max_body_bytes=6000000", "serve.max_image_pixels=4000000", "serve.min_replicas=1",
        "serve.max_replicas=1", "evaluate.generation.max_new_tokens=48", "video.upload_limits.max_pixels=800000"], api_key=API_KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def synth_test_images(small_pipeline) -> list[tuple[Path, str]]:
    """(image, emotion label) of the small release's emotion test records."""
    from emola.data.manifest import read_manifest

    rows = [r for r in read_manifest(small_pipeline["manifests"] / "test.jsonl") if r.task == "emotion"]
    return [(r.image_path(), r.emotion) for r in rows]
