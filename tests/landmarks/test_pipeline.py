"""The landmark job: bad inputs get statuses, the cache holds every good image, re-runs are incremental."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emola.config import load_config
from emola.data.manifest import ManifestRow
from emola.landmarks.cache import LandmarkCache
from emola.landmarks.cache import prior_vectors
from emola.landmarks.pipeline import run_landmark_job
from emola.fileio import atomic_write_lines
from emola.imaging import sha256_bytes


def _manifest(path, root, images, landmarks=None):
    """A manifest with one emotion row per image file (name relative to root)."""
    rows = []
    for i, name in enumerate(images):
        data = (root / name).read_bytes() if (root / name).is_file() else b""
        lm = landmarks[i] if landmarks else None
        rows.append(ManifestRow(uid=f"emotion/test/{name}", id=name, task="emotion", split="test", root=str(root),
                                image=name, image_sha256=sha256_bytes(data), question="q?", answer="a.",
                                emotion="neutral", landmark=lm, landmark_layout="ibug68" if lm else None))
    atomic_write_lines(path, (r.model_dump_json() for r in rows))
    return path


def _landmarks_cfg(repo_root, cache, **overrides):
    sets = {f"landmarks.{k}": v for k, v in {"cache": str(cache), **overrides}.items()}
    return load_config(repo_root / "params.yaml", sets).landmarks


@pytest.fixture(scope="module")
def bad_inputs(real_photos, tmp_path_factory):
    """Real photos in every awkward format, plus files that are not usable images."""
    root = tmp_path_factory.mktemp("bad-inputs")
    photo = Image.open(real_photos["grace_hopper"]).convert("RGB")
    photo.save(root / "good.jpg")
    photo.convert("L").save(root / "grey.png")
    photo.convert("CMYK").save(root / "cmyk.jpg")
    rgba = photo.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "alpha.png")
    rotated = photo.rotate(90, expand=True)  # stored sideways, EXIF says turn it upright
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": undoes the counter-clockwise turn above
    rotated.save(root / "exif_rotated.jpg", exif=exif)
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_bytes(b"not an image at all")
    data = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, format="PNG")
    (root / "bomb.png").write_bytes(buffer.getvalue())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 260, 3), np.uint8)).save(root / "noface.png")
    return root


EXPECTED = {
    "good.jpg": "ok", "grey.png": "ok", "cmyk.jpg": "ok", "alpha.png": "ok", "exif_rotated.jpg": "ok",
    "zero.jpg": "unreadable", "text.jpg": "unreadable", "truncated.jpg": "unreadable",
    "bomb.png": "too_large", "noface.png": "no_face",
}


@pytest.mark.slow
def test_bad_inputs_are_reported_and_good_images_cached_through_ray(repo_root, bad_inputs, tmp_path):
    manifest = _manifest(tmp_path / "test.jsonl", bad_inputs, list(EXPECTED))
    cfg = _landmarks_cfg(repo_root, tmp_path / "cache", backend="dlib-68")
    summary = run_landmark_job([manifest], cfg, max_pixels=40_000_000, use_ray=True)
    assert summary["images"] == len(EXPECTED) and summary["processed"] == len(EXPECTED)

    table = LandmarkCache(cfg.cache).read(summary["backend"])
    status = {}
    shas = {sha256_bytes((bad_inputs / n).read_bytes()): n for n in EXPECTED}
    for row in table.to_pylist():
        status[shas[row["image_sha256"]]] = row["status"]
        if row["status"] == "ok":
            assert len(row["points"][0]) == 136 and len(row["prior"]) == 136
        else:
            assert row["reason"] and row["prior"] == []
    assert status == EXPECTED

    rejects = [json.loads(line) for line in (tmp_path / "cache/rejects.jsonl").read_text().splitlines()]
    assert {r["image"].split("/")[-1]: r["status"] for r in rejects} == {k: v for k, v in EXPECTED.items() if v != "ok"}
    assert "exceeds the cap" in next(r["reason"] for r in rejects if r["status"] == "too_large")

    # EXIF rotation is applied: the upright face lands where it does in the original photo.
    rows = {shas[r["image_sha256"]]: r for r in table.to_pylist()}
    good, turned = rows["good.jpg"], rows["exif_rotated.jpg"]
    assert (turned["width"], turned["height"]) == (good["width"], good["height"])
    assert np.allclose(turned["boxes"][0], good["boxes"][0], atol=12)


def test_rerun_processes_only_new_images(repo_root, synth_release, tmp_path):
    train = json.loads((synth_release / "train/train_emotion_anno.json").read_text())
    images = [r["image"] for r in train]
    landmarks = [r["landmark"] for r in train]
    cfg = _landmarks_cfg(repo_root, tmp_path / "cache")  # annotation backend
    first = _manifest(tmp_path / "a.jsonl", synth_release, images[:-3], landmarks[:-3])
    s1 = run_landmark_job([first], cfg, use_ray=False)
    assert s1["processed"] == len(images) - 3 and s1["status"] == {"ok": len(images) - 3}

    every = _manifest(tmp_path / "b.jsonl", synth_release, images, landmarks)
    s2 = run_landmark_job([every], cfg, use_ray=False)
    assert s2["processed"] == 3 and s2["images"] == len(images)
    assert len(LandmarkCache(cfg.cache).parts()) == 2
    s3 = run_landmark_job([every], cfg, use_ray=False)
    assert s3["processed"] == 0
    assert len(LandmarkCache(cfg.cache).parts()) == 2

    priors = prior_vectors(cfg.cache, s3["backend"], [sha256_bytes((synth_release / i).read_bytes()) for i in images])
    assert len(priors) == len(images) and all(v.shape == (136,) for v in priors.values())


def test_a_new_backend_version_does_not_reuse_old_rows(repo_root, real_photos, tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    shutil.copy(real_photos["grace_hopper"], root / "gh.jpg")
    manifest = _manifest(tmp_path / "m.jsonl", root, ["gh.jpg"])
    cfg = _landmarks_cfg(repo_root, tmp_path / "cache", backend="dlib-68")
    assert run_landmark_job([manifest], cfg, use_ray=False)["processed"] == 1
    cfg_all = _landmarks_cfg(repo_root, tmp_path / "cache", backend="dlib-68", all_faces=True)
    assert run_landmark_job([manifest], cfg_all, use_ray=False)["processed"] == 0  # same backend version
    keys = pq.read_table(LandmarkCache(cfg.cache).parts()[0]).column("backend").to_pylist()
    assert keys == ["dlib-68@1"]


def test_an_interrupted_write_leaves_the_cache_as_it_was(repo_root, synth_release, tmp_path, monkeypatch):
    train = json.loads((synth_release / "train/train_emotion_anno.json").read_text())[:5]
    manifest = _manifest(tmp_path / "m.jsonl", synth_release, [r["image"] for r in train], [r["landmark"] for r in train])
    cfg = _landmarks_cfg(repo_root, tmp_path / "cache")
    run_landmark_job([manifest], cfg, use_ray=False)
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())

    import emola.landmarks.cache as cache_module

    def crash(table, path, **kwargs):
        open(path, "wb").write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.pq, "write_table", crash)
    more = json.loads((synth_release / "train/train_emotion_anno.json").read_text())[5:8]
    manifest2 = _manifest(tmp_path / "m2.jsonl", synth_release, [r["image"] for r in train + more],
                          [r["landmark"] for r in train + more])
    with pytest.raises(OSError, match="disk full"):
        run_landmark_job([manifest2], cfg, use_ray=False)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before
    monkeypatch.undo()
    assert run_landmark_job([manifest2], cfg, use_ray=False)["processed"] == 3
