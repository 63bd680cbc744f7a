"""FABA-Synth generation: sample faces, render them, write the official release layout.

Each image is a pure function of ``(seed, split, index)``, so the output is identical
whatever the number of worker processes. Layout (as the official FABA-Instruct release)::

    images/{split}/{index:06d}.jpg       rendered face
    landmarks/{split}/{index:06d}.npy    68 iBUG points, float32 (136,), x0 y0 x1 y1 ... in pixels
    train/train_emotion_anno.json        train records (conversations), emotion task
    train/train_au_anno.json             train records, AU task
    eval/eval_emotion_anno.json          test records (label, gpt4), emotion task
    eval/eval_au_anno.json               test records, AU task
    synth.json                           generator version, parameters and counts

Emotion faces follow the EMFACS prototypes of the 7 FABA classes with an intensity and
appear in both tasks (neutral faces, having no AU, in the emotion task only); a share
``au_only_fraction`` of the images carry free AU combinations and appear in the AU task
only. Train records carry extra ``label`` fields the official train files lack.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emola.labels import EMOTION_PROTOTYPES, EMOTIONS, format_au_label
from emola.fileio import replace_dir
from emola.synth.action_units import RENDERED_AUS, apply_action_units
from emola.synth.descriptions import AU_QUESTIONS, EMOTION_QUESTIONS, au_description, emotion_description
from emola.synth.face_model import Identity, Pose, neutral_face, project
from emola.synth.render import Appearance, render_face

GENERATOR_VERSION = "1"
SOURCE = "FABA-Synth"
#: An AU at or above this intensity is labelled active; below it is invisible jitter.
ACTIVE_THRESHOLD = 0.25
_SPLIT_CODE = {"train": 0, "test": 1}
# AU pairs that cannot show together (opposite movements of the same features).
_EXCLUSIVE = ((26, 27), (5, 43), (7, 43), (24, 25), (24, 26), (24, 27), (12, 15), (23, 27))

DEFAULT_FILES: dict[tuple[str, str], str] = {
    ("emotion", "train"): "train/train_emotion_anno.json",
    ("emotion", "test"): "eval/eval_emotion_anno.json",
    ("au", "train"): "train/train_au_anno.json",
    ("au", "test"): "eval/eval_au_anno.json",
}


@dataclass(frozen=True)
class FaceSpec:
    """What one synthetic face shows."""

    emotion: str | None                 # None for a free AU combination
    intensity: float                    # of the emotion (free combinations: mean AU intensity)
    au_intensities: Mapping[int, float] = field(default_factory=dict)

    @property
    def active(self) -> tuple[int, ...]:
        return tuple(sorted(au for au, v in self.au_intensities.items() if v >= ACTIVE_THRESHOLD))


def sample_face_spec(rng: np.random.Generator, au_only_fraction: float) -> FaceSpec:
    """An emotion prototype with intensity, or (with ``au_only_fraction``) a free AU combination."""
    jitter = {int(au): float(rng.uniform(0.0, 0.12)) for au in rng.choice(RENDERED_AUS, 2, replace=False)}
    if rng.random() < au_only_fraction:
        chosen = [au for au in RENDERED_AUS if rng.random() < 0.22] or [int(rng.choice(RENDERED_AUS))]
        for a, b in _EXCLUSIVE:
            if a in chosen and b in chosen:
                chosen.remove(b if rng.random() < 0.5 else a)
        chosen = chosen[:6]
        values = {au: float(rng.uniform(0.35, 1.0)) for au in chosen}
        aus = {**{au: v for au, v in jitter.items() if au not in values}, **values}
        return FaceSpec(None, float(np.mean(list(values.values()))), aus)
    emotion = EMOTIONS[int(rng.integers(len(EMOTIONS)))]
    intensity = float(rng.uniform(0.35, 1.0))
    values = {au: float(np.clip(intensity * rng.uniform(0.85, 1.15), 0.3, 1.0)) for au in EMOTION_PROTOTYPES[emotion]}
    blocked = {b for a, b in _EXCLUSIVE if a in values} | {a for a, b in _EXCLUSIVE if b in values}
    aus = {**{au: v for au, v in jitter.items() if au not in values and au not in blocked}, **values}
    return FaceSpec(emotion, intensity, aus)


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODE[split], index, stream])


def render_sample(out_dir: str, split: str, index: int, seed: int, size: int, au_only_fraction: float) -> dict:
    """Render and write one image and its landmarks; return its records by task."""
    spec = sample_face_spec(_rng(seed, split, index, 0), au_only_fraction)
    rng = _rng(seed, split, index, 1)
    identity, pose, appearance = Identity.sample(rng), Pose.sample(rng, size), Appearance.sample(rng)
    points = apply_action_units(neutral_face(identity), spec.au_intensities)
    image = render_face(points, spec.au_intensities, pose, appearance, size, rng)
    landmarks = project(points, pose).astype(np.float32)

    stem = f"{index:06d}"
    image_rel, landmark_rel = f"images/{split}/{stem}.jpg", f"landmarks/{split}/{stem}.npy"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=appearance.jpeg_quality)
    Path(out_dir, image_rel).write_bytes(buffer.getvalue())
    np.save(Path(out_dir, landmark_rel), landmarks.reshape(-1), allow_pickle=False)

    records: dict[str, dict] = {}
    text_rng = _rng(seed, split, index, 2)
    common = {"image": image_rel, "landmark": landmark_rel, "source": SOURCE}
    if spec.emotion is not None:
        answer = emotion_description(spec.emotion, spec.intensity, text_rng)
        question = EMOTION_QUESTIONS[int(text_rng.integers(len(EMOTION_QUESTIONS)))]
        records["emotion"] = _record(split, stem, common, question, answer, spec.emotion, intensity=round(spec.intensity, 3))
    if spec.active:
        answer = au_description(spec.au_intensities, spec.active, text_rng)
        question = AU_QUESTIONS[int(text_rng.integers(len(AU_QUESTIONS)))]
        intensities = {str(au): round(spec.au_intensities[au], 3) for au in spec.active}
        records["au"] = _record(split, stem, common, question, answer, format_au_label(spec.active), au_intensities=intensities)
    return records


def _record(split: str, stem: str, common: dict, question: str, answer: str, label: str, **extra) -> dict:
    if split == "test":
        return {**common, "label": label, "gpt4": answer}
    conversations = [{"from": "human", "value": f"{question}\n<image>"}, {"from": "gpt", "value": answer}]
    return {"id": f"synth-{split}-{stem}", **common, "conversations": conversations, "label": label, **extra}


def _render_chunk(args: tuple) -> list[dict]:
    out_dir, split, indices, seed, size, fraction = args
    return [render_sample(out_dir, split, i, seed, size, fraction) for i in indices]


def generate(
    out_dir: Path | str,
    *,
    train: int,
    test: int,
    seed: int,
    image_size: int = 192,
    au_only_fraction: float = 0.3,
    workers: int = 1,
    files: Mapping[tuple[str, str], str] = DEFAULT_FILES,
    overwrite: bool = False,
) -> dict:
    """Write FABA-Synth to ``out_dir``; return the summary written to ``synth.json``.

    The release is built in a temporary sibling folder and moved into place at the end,
    so an interrupted run never leaves a partial release. An existing non-empty
    ``out_dir`` is replaced only with ``overwrite=True``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True / --force to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        counts: Counter = Counter()
        by_file: dict[tuple[str, str], list[dict]] = {key: [] for key in files}
        for split, n in (("train", train), ("test", test)):
            (staging / "images" / split).mkdir(parents=True)
            (staging / "landmarks" / split).mkdir(parents=True)
            chunks = [(str(staging), split, range(s, min(s + 64, n)), seed, image_size, au_only_fraction) for s in range(0, n, 64)]
            if workers > 1:
                # Spawned, not forked: a caller holding threads (Ray, torch) can deadlock a forked child.
                with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                    results = [r for chunk in pool.map(_render_chunk, chunks) for r in chunk]
            else:
                results = [r for chunk in map(_render_chunk, chunks) for r in chunk]
            for records in results:
                for task, record in records.items():
                    by_file[(task, split)].append(record)
                    counts[f"{task}_{split}"] += 1
        for (task, split), records in by_file.items():
            path = staging / files[(task, split)]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
        summary = {
            "generator": f"FABA-Synth {GENERATOR_VERSION}",
            "params": {"train": train, "test": test, "seed": seed, "image_size": image_size, "au_only_fraction": au_only_fraction},
            "images": {"train": train, "test": test},
            "records": dict(sorted(counts.items())),
            "emotion_classes": dict(sorted(Counter(r["label"] for key, rs in by_file.items() if key[0] == "emotion" for r in rs).items())),
        }
        (staging / "synth.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary
