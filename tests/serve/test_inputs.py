"""Request parsing without a server: images, data URLs, chat messages; and the config file agreement."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serve.inputs import RequestError, b64_bytes, decode_upload, image_url_bytes, last_user_turn
from tests.conftest import REPO


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((32, 40, 3), 90, np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def _error(call) -> RequestError:
    with pytest.raises(RequestError) as info:
        call()
    return info.value


def test_decode_upload_maps_image_problems_to_statuses():
    image = decode_upload(_jpeg(), max_pixels=10_000)
    assert image.pixels.shape == (32, 40, 3) and len(image.sha256) == 64
    assert _error(lambda: decode_upload(b"", 10_000)).status == 400
    assert _error(lambda: decode_upload(b"GIF89a-not-really", 10_000)).status in (415, 422)
    assert _error(lambda: decode_upload(b"plain text", 10_000)).status == 415
    assert _error(lambda: decode_upload(_jpeg()[:200], 10_000)).status == 422
    too_large = _error(lambda: decode_upload(_jpeg(), max_pixels=1000))
    assert too_large.status == 413 and "exceeds the cap" in too_large.message


def test_the_replicas_get_the_smaller_of_bytes_and_pixels_and_decode_the_same_image():
    from serve.inputs import pixels_of

    image = decode_upload(_jpeg(), max_pixels=10_000)
    assert isinstance(image.wire, bytes) and np.array_equal(pixels_of(image.wire), image.pixels)
    noise = io.BytesIO()   # random pixels: the PNG is larger than the pixels themselves
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise, format="PNG")
    image = decode_upload(noise.getvalue(), max_pixels=10_000)
    assert isinstance(image.wire, np.ndarray) and pixels_of(image.wire) is image.pixels


def test_data_urls_and_remote_urls():
    data = _jpeg()
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    assert image_url_bytes(url, allow_remote=False, max_bytes=10**6, timeout_s=1) == data
    assert b64_bytes(base64.b64encode(data).decode().rstrip("=")) == data  # padding optional
    assert _error(lambda: image_url_bytes("data:text/plain;base64,aGk=", allow_remote=False, max_bytes=10,
                                          timeout_s=1)).status == 415
    assert _error(lambda: image_url_bytes("data:image/png,rawtext", allow_remote=False, max_bytes=10,
                                          timeout_s=1)).code == "bad_data_url"
    assert _error(lambda: image_url_bytes("https://example.com/a.jpg", allow_remote=False, max_bytes=10,
                                          timeout_s=1)).code == "remote_images_disabled"
    assert _error(lambda: image_url_bytes("file:///etc/passwd", allow_remote=True, max_bytes=10,
                                          timeout_s=1)).code == "bad_image_url"
    assert _error(lambda: b64_bytes("@@@")).code == "bad_base64"


def test_last_user_turn():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    turn = last_user_turn([{"role": "system", "content": "be brief"},
                           {"role": "user", "content": [{"type": "text", "text": "Which AUs?"}, image]}])
    assert turn.question == "Which AUs?" and turn.image_url.startswith("data:image/png")
    assert _error(lambda: last_user_turn([{"role": "assistant", "content": "x"}])).code == "no_user_message"
    assert _error(lambda: last_user_turn([{"role": "user", "content": "no image"}])).code == "one_image_needed"
    assert _error(lambda: last_user_turn([{"role": "user", "content": [image]}])).code == "no_question"
    assert _error(lambda: last_user_turn([{"role": "user", "content": [image, image,
                                                                       {"type": "text", "text": "q"}]}])).code == "one_image_needed"
    assert _error(lambda: last_user_turn([{"role": "user", "content": [{"type": "audio"}]}])).code == "bad_content"


def test_serve_config_file_is_generated_from_params():
    from serve.app import render, serve_config

    committed = (REPO / "serve/config.yaml").read_text()
    assert committed == render(serve_config("params.yaml")), \
        "serve/config.yaml is out of date: run `python -m serve.app > serve/config.yaml`"
    app = serve_config("params.yaml")["applications"][0]
    model = next(d for d in app["deployments"] if d["name"] == "EmolaModel")
    assert model["autoscaling_config"]["min_replicas"] == 1 and model["autoscaling_config"]["max_replicas"] == 2
    assert serve_config("params.yaml")["http_options"] == {"host": "127.0.0.1", "port": 8000, "request_timeout_s": 60.0}


def test_deployment_options_follow_params_overrides():
    from serve.app import serve_config

    config = serve_config("params.yaml", ["serve.max_replicas=5", "serve.num_gpus=1"])
    model = next(d for d in config["applications"][0]["deployments"] if d["name"] == "EmolaModel")
    assert model["autoscaling_config"]["max_replicas"] == 5 and model["ray_actor_options"]["num_gpus"] == 1
    assert config["applications"][0]["args"]["overrides"] == ["serve.max_replicas=5", "serve.num_gpus=1"]


def test_per_task_models_get_one_deployment_each(tiny_checkpoint, tmp_path):
    from serve.app import serve_config
    from tests.conftest import copy_as_task_part

    for task in ("emotion", "au"):
        copy_as_task_part(tiny_checkpoint, tmp_path / "split" / task, task)
    names = lambda config: [d["name"] for d in config["applications"][0]["deployments"]]  # noqa: E731
    assert names(serve_config("params.yaml", [f"serve.checkpoint={tmp_path / 'split'}"]))[:2] == \
        ["EmolaModel-au", "EmolaModel-emotion"]
    assert names(serve_config("params.yaml", ["profile=emola-7b"]))[:2] == ["EmolaModel-emotion", "EmolaModel-au"]
    assert names(serve_config("params.yaml"))[0] == "EmolaModel"


def test_video_options_parse_form_strings_and_json_values():
    from serve.inputs import video_options

    defaults = {"fps": None, "smoothing": 3, "describe": True, "task": "emotion"}
    assert video_options({}, defaults) == defaults
    assert video_options({"fps": "5", "smoothing": "1", "describe": "false"}, defaults) == {
        **defaults, "fps": 5.0, "smoothing": 1, "describe": False}
    assert video_options({"fps": 2.5, "smoothing": 5, "describe": False}, defaults)["fps"] == 2.5
    assert video_options({"fps": "all"}, {**defaults, "fps": 5.0})["fps"] is None
    for fields, code in (({"fps": "0"}, "invalid_fps"), ({"fps": "fast"}, "invalid_fps"), ({"fps": 61}, "invalid_fps"),
                         ({"fps": True}, "invalid_fps"), ({"smoothing": "0"}, "invalid_smoothing"),
                         ({"smoothing": 2.5}, "invalid_smoothing"), ({"smoothing": "40"}, "invalid_smoothing"),
                         ({"describe": "maybe"}, "invalid_describe")):
        with pytest.raises(RequestError) as caught:
            video_options(fields, defaults)
        assert caught.value.status == 400 and caught.value.code == code, fields
