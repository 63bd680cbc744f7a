"""Landmark backends on real photos and on a small ONNX graph with 2d106det's signature."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emola.landmarks.annotation import AnnotationBackend
from emola.landmarks.backend import normalize_points
from emola.landmarks.dlib68 import Dlib68Backend


@pytest.fixture(scope="module")
def dlib_backend():
    return Dlib68Backend()


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _inside(points, box, margin=0.3):
    x0, y0, x1, y1 = box
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return ((points[:, 0] >= x0 - mx) & (points[:, 0] <= x1 + mx) & (points[:, 1] >= y0 - my) & (points[:, 1] <= y1 + my)).all()


@pytest.mark.parametrize("name, faces", [("astronaut", 1), ("grace_hopper", 1), ("t1", 6), ("tom_hanks", 1)])
def test_dlib_finds_the_faces_with_68_points_in_each_box(dlib_backend, real_photos, name, faces):
    result = dlib_backend.extract([_rgb(real_photos[name])], all_faces=True)[0]
    assert result.status == "ok" and len(result.faces) == faces
    for face in result.faces:
        assert face.points.shape == (68, 2)
        # dlib's box is tight on the inner face; the jaw line may lie a little outside it.
        assert _inside(face.points, face.box, margin=0.3), face.box
        inner = face.points[17:]  # brows, eyes, nose, mouth
        assert _inside(inner, face.box, margin=0.05)
    assert result.prior.shape == (136,) and np.abs(result.prior).max() <= 1.0001


def test_largest_face_is_selected_by_default(dlib_backend, real_photos):
    image = _rgb(real_photos["t1"])
    every = dlib_backend.extract([image], all_faces=True)[0]
    one = dlib_backend.extract([image])[0]
    assert len(one.faces) == 1
    assert one.faces[0].area == max(f.area for f in every.faces)
    assert [f.area for f in every.faces] == sorted((f.area for f in every.faces), reverse=True)


def test_every_face_of_a_group_photo_has_its_prior_without_another_pass(dlib_backend, real_photos):
    """dlib-68's prior is a function of the points alone: the selected face's equals face_prior, and so does
    each other face's the prior of its own crop."""
    image = np.asarray(Image.open(real_photos["t1"]).convert("RGB"))
    found = dlib_backend.extract([image], all_faces=True)[0]
    assert len(found.faces) >= 4
    np.testing.assert_allclose(dlib_backend.face_prior(found.faces[0]), found.prior)
    face = found.faces[2]
    x0, y0, x1, y1 = (int(v) for v in face.box)
    crop = dlib_backend.extract([image[max(0, y0 - 60):y1 + 60, max(0, x0 - 60):x1 + 60]])[0]
    assert crop.status == "ok"
    np.testing.assert_allclose(dlib_backend.face_prior(face), crop.prior, atol=0.05)


def test_an_image_without_a_face_is_reported(dlib_backend):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    result = dlib_backend.extract([noise])[0]
    assert result.status == "no_face" and result.reason and result.prior is None


def test_prior_normalization_ignores_position_and_size():
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 100, (68, 2))
    assert np.allclose(normalize_points(points), normalize_points(points * 3.5 + [40, -7]), atol=1e-5)


def test_annotation_backend_layouts():
    image = np.zeros((96, 128, 3), np.uint8)
    pixels = np.random.default_rng(2).uniform(10, 90, 136).astype(np.float32)
    raw106 = np.random.default_rng(3).uniform(-1, 1, 212).astype(np.float32)
    r68 = AnnotationBackend(68).extract([image], annotations=[pixels])[0]
    assert r68.status == "ok" and np.allclose(r68.faces[0].points.reshape(-1), pixels)
    assert np.allclose(r68.prior, normalize_points(pixels.reshape(-1, 2)))
    r106 = AnnotationBackend(106).extract([image], annotations=[raw106])[0]
    assert np.array_equal(r106.prior, raw106)  # the published vector, unchanged
    assert np.allclose(r106.faces[0].points[0], [(raw106[0] + 1) / 2 * 128, (raw106[1] + 1) / 2 * 96])
    bad = AnnotationBackend(68).extract([image, image], annotations=[None, raw106])
    assert [r.status for r in bad] == ["bad_annotation", "bad_annotation"]


# --------------------------------------------------------------- insightface-2d106
def _landmark_graph(path, weight=None, bias=None, batch="N"):
    """An ONNX graph with 2d106det's signature: data (N,3,192,192) -> fc1 (N,212).

    AveragePool 8x8 -> Flatten (1728) -> Gemm -> Tanh, with given or seeded weights.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = weight if weight is not None else rng.normal(0, 0.05, (1728, 212)).astype(np.float32)
    b = bias if bias is not None else np.zeros(212, np.float32)
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["data"], ["pool"], kernel_shape=[8, 8], strides=[8, 8]),
         helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "w", "b"], ["lin"]),
         helper.make_node("Tanh", ["lin"], ["fc1"])],
        "tiny2d106",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, 212])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return w, b


def _reference(blob, w, b):
    pooled = blob.reshape(3, 24, 8, 24, 8).mean(axis=(2, 4)).reshape(-1)
    return np.tanh(pooled @ w + b)


def test_paper_mode_is_the_published_preprocessing(tmp_path, real_photos):
    import cv2

    from emola.landmarks.insightface106 import InsightFace106Backend

    w, b = _landmark_graph(tmp_path / "2d106det.onnx")
    backend = InsightFace106Backend(str(tmp_path / "2d106det.onnx"), "paper")
    image = _rgb(real_photos["grace_hopper"])
    result = backend.extract([image])[0]

    bgr = cv2.imread(str(real_photos["grace_hopper"]))  # what the published code read
    blob = (cv2.resize(bgr, (192, 192)) / 255.0).astype(np.float32).transpose(2, 0, 1)
    assert np.allclose(result.prior, _reference(blob, w, b), atol=1e-5)
    rgb_blob = blob[::-1]
    assert not np.allclose(result.prior, _reference(rgb_blob, w, b), atol=1e-3)  # channel order matters
    assert result.prior.shape == (212,) and backend.prior_dim == 212
    assert result.faces[0].points.shape == (106, 2)
    assert backend.key.startswith("insightface-2d106@1-paper-")


def test_aligned_mode_crops_like_insightface_and_maps_points_back(tmp_path, real_photos):
    from emola.landmarks.insightface106 import InsightFace106Backend

    # Zero weights: the output is tanh(bias), so every point's crop position is known.
    bias = np.zeros(212, np.float32)
    bias[2:4] = np.arctanh([0.5, -0.5])  # point 1 at crop (144, 48)
    _landmark_graph(tmp_path / "m.onnx", weight=np.zeros((1728, 212), np.float32), bias=bias, batch=1)
    backend = InsightFace106Backend(str(tmp_path / "m.onnx"), "aligned")
    result = backend.extract([_rgb(real_photos["t1"])], all_faces=True)[0]
    assert result.status == "ok" and len(result.faces) == 6
    for face in result.faces:
        x0, y0, x1, y1 = face.box
        centre, scale = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), 192 / (max(x1 - x0, y1 - y0) * 1.5)
        assert np.allclose(face.points[0], centre, atol=1e-3)
        assert np.allclose(face.points[1], centre + np.array([48, -48]) / scale, atol=1e-3)
    assert np.allclose(result.prior, np.tanh(bias), atol=1e-6)
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    assert backend.extract([noise])[0].status == "no_face"


def test_missing_model_says_what_to_download(tmp_path, monkeypatch):
    from emola.landmarks.insightface106 import InsightFace106Backend

    monkeypatch.delenv("EMOLA_INSIGHTFACE_MODEL", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        InsightFace106Backend(str(tmp_path / "nowhere/2d106det.onnx"))
    message = str(err.value)
    assert "buffalo_l" in message and "2d106det.onnx" in message and "EMOLA_INSIGHTFACE_MODEL" in message


def test_environment_variable_names_the_model(tmp_path, monkeypatch):
    from emola.landmarks.insightface106 import InsightFace106Backend

    _landmark_graph(tmp_path / "env.onnx")
    monkeypatch.setenv("EMOLA_INSIGHTFACE_MODEL", str(tmp_path / "env.onnx"))
    assert InsightFace106Backend(None).model_path == tmp_path / "env.onnx"


def test_wrong_graph_signature_is_rejected(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from emola.landmarks.insightface106 import InsightFace106Backend

    graph = helper.make_graph([helper.make_node("Identity", ["data"], ["out"])], "g",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 112, 112])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(ValueError, match=r"expected input \(N, 3, 192, 192\)"):
        InsightFace106Backend(str(tmp_path / "bad.onnx"))
