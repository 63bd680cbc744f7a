"""``insightface-2d106``: InsightFace's 2d106det landmark network on ONNX Runtime.

Two modes:

``paper``
    Exactly the published EmoLA feature extraction: the whole image (EmoLA used
    face-cropped AffectNet images) resized to 192x192 with OpenCV's default bilinear
    interpolation, BGR channel order, divided by 255, CHW; no detection, no alignment.
    Published checkpoints were trained on these inputs.
``aligned``
    As InsightFace's own ``Landmark`` wrapper: detect faces (dlib's HOG detector), crop a
    square of 1.5x the box's longer side around its centre, resize to 192, RGB, normalize
    by the mean and std the graph implies, and map the points back to image pixels.

Prior vector (both modes): the network's raw 212 outputs of the selected face (points
in [-1, 1] of the 192 px input), unchanged, as published.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from emola.landmarks.backend import Face, FaceResult, LandmarkBackend, bbox_of, order_faces

INPUT_SIZE = 192
MODEL_ENV = "EMOLA_INSIGHTFACE_MODEL"
DEFAULT_MODEL_PATH = Path("models/insightface/2d106det.onnx")


def resolve_model_path(configured: str | None) -> Path:
    """The model file: ``$EMOLA_INSIGHTFACE_MODEL``, else the configured path, else the default."""
    path = Path(os.environ.get(MODEL_ENV) or configured or DEFAULT_MODEL_PATH)
    if not path.is_file():
        raise FileNotFoundError(
            f"insightface-2d106: model file not found: {path}. Download InsightFace's buffalo_l model "
            f"pack, take its 2d106det.onnx (5,030,888 bytes) and put it at {path}, or point "
            f"landmarks.insightface.model_path or the {MODEL_ENV} environment variable at it."
        )
    return path


def _input_normalization(model_path: Path) -> tuple[float, float]:
    """(mean, std) as InsightFace decides it: graphs that subtract and scale themselves get (0, 1)."""
    import onnx

    nodes = onnx.load(str(model_path), load_external_data=False).graph.node[:8]
    has_sub = any(n.name.startswith(("Sub", "_minus")) for n in nodes) or any(i < 3 and n.name == "bn_data" for i, n in enumerate(nodes))
    has_mul = any(n.name.startswith(("Mul", "_mul")) for n in nodes) or any(i < 3 and n.name == "bn_data" for i, n in enumerate(nodes))
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 128.0)


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it (onnxruntime-gpu on a GPU worker), else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]


class InsightFace106Backend(LandmarkBackend):
    name = "insightface-2d106"
    num_points = 106

    def __init__(self, model_path: str | None, mode: str = "paper", providers: list[str] | None = None):
        import onnxruntime as ort

        if mode not in ("paper", "aligned"):
            raise ValueError(f"insightface-2d106: unknown mode {mode!r} (paper or aligned)")
        self.model_path = resolve_model_path(model_path)
        self.mode = mode
        self.session = ort.InferenceSession(str(self.model_path), providers=providers or default_providers())
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape
        if len(shape) != 4 or list(shape[1:]) != [3, INPUT_SIZE, INPUT_SIZE] or outputs[0].shape[-1] != 212:
            raise ValueError(f"{self.model_path}: expected input (N, 3, 192, 192) and output (N, 212), "
                             f"got {shape} and {outputs[0].shape}")
        self._input, self._output = inputs[0].name, outputs[0].name
        self._batch_fixed = isinstance(shape[0], int)
        digest = hashlib.sha256(self.model_path.read_bytes()).hexdigest()[:12]
        self.version = f"1-{mode}-{digest}"
        self.mean, self.std = _input_normalization(self.model_path)
        self._detector = None
        if mode == "aligned":
            from emola.landmarks.dlib68 import Dlib68Backend

            self._detector = Dlib68Backend()

    def run(self, blobs: np.ndarray) -> np.ndarray:
        """Raw network outputs: ``(N, 3, 192, 192)`` float32 -> ``(N, 212)``."""
        if not len(blobs):
            return np.zeros((0, 212), np.float32)
        if self._batch_fixed:  # graphs exported with batch 1 run one image at a time
            return np.concatenate([self.session.run([self._output], {self._input: b[None]})[0] for b in blobs])
        return self.session.run([self._output], {self._input: blobs.astype(np.float32)})[0]

    @staticmethod
    def paper_blob(image: np.ndarray) -> np.ndarray:
        """The published preprocessing of one RGB image: resize 192, BGR, /255, CHW."""
        import cv2

        bgr = np.ascontiguousarray(image[..., ::-1])
        resized = cv2.resize(bgr, (INPUT_SIZE, INPUT_SIZE))
        return (resized.astype(np.float32) / 255.0).transpose(2, 0, 1)

    def aligned_crop(self, image: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
        """InsightFace's crop of one face: ``(blob (3, 192, 192), affine M (2, 3))``."""
        import cv2

        x0, y0, x1, y1 = box
        scale = INPUT_SIZE / (max(x1 - x0, y1 - y0) * 1.5)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        m = np.array([[scale, 0, INPUT_SIZE / 2 - cx * scale], [0, scale, INPUT_SIZE / 2 - cy * scale]])
        crop = cv2.warpAffine(np.ascontiguousarray(image), m, (INPUT_SIZE, INPUT_SIZE), borderValue=0.0)
        blob = ((crop.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)  # RGB, as swapRB on BGR
        return blob, m

    def extract(self, images, *, all_faces=False, annotations=None):
        return self._extract_paper(images) if self.mode == "paper" else self._extract_aligned(images, all_faces)

    def _extract_paper(self, images) -> list[FaceResult]:
        outputs = self.run(np.stack([self.paper_blob(im) for im in images])) if len(images) else []
        results = []
        for image, raw in zip(images, outputs):
            height, width = image.shape[:2]
            points = (raw.reshape(-1, 2) + 1) / 2 * [width, height]
            results.append(FaceResult("ok", faces=[Face(bbox_of(points), 1.0, points.astype(np.float32))],
                                      prior=raw.astype(np.float32), width=width, height=height))
        return results

    def _extract_aligned(self, images, all_faces: bool) -> list[FaceResult]:
        results = []
        for image in images:
            height, width = image.shape[:2]
            try:
                found = self._detector.detect(image)
            except Exception as err:  # noqa: BLE001
                results.append(FaceResult.failed("error", f"face detection failed: {err}", width, height))
                continue
            if not found:
                results.append(FaceResult.failed("no_face", "no face detected", width, height))
                continue
            crops = [self.aligned_crop(image, box) for box, _ in found]
            raws = self.run(np.stack([blob for blob, _ in crops]))
            faces, prior_of = [], {}
            for (box, score), (_, m), raw in zip(found, crops, raws):
                crop_pts = (raw.reshape(-1, 2) + 1) * (INPUT_SIZE // 2)
                inverse = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
                points = (crop_pts @ inverse[:, :2].T + inverse[:, 2]).astype(np.float32)
                face = Face(tuple(float(v) for v in box), score, points)
                faces.append(face)
                prior_of[id(face)] = raw.astype(np.float32)
            faces = order_faces(faces, all_faces)
            results.append(FaceResult("ok", faces=faces, prior=prior_of[id(faces[0])], width=width, height=height))
        return results
