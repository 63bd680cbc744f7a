"""FABA-Synth: determinism, layout, labels consistent with texts and images, learnability."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.feature import hog

from emola.labels import EMOTION_PROTOTYPES, EMOTIONS, parse_au_label
from emola.metrics.rege_parsers import NEGATIONS, aus_of, emotion_of
from emola.synth.dataset import ACTIVE_THRESHOLD, generate


def _records(root, rel):
    return json.loads((root / rel).read_text())


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = generate(tmp_path / "a", train=12, test=4, seed=3, image_size=96, workers=1)
    b = generate(tmp_path / "b", train=12, test=4, seed=3, image_size=96, workers=2)
    assert a["records"] == b["records"]
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    c = generate(tmp_path / "c", train=12, test=4, seed=4, image_size=96, workers=1)
    assert (tmp_path / "c/images/train/000000.jpg").read_bytes() != (tmp_path / "a/images/train/000000.jpg").read_bytes()
    assert c["params"]["seed"] == 4


def test_refuses_to_overwrite_without_permission(tmp_path):
    out = tmp_path / "release"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate(out, train=2, test=1, seed=1, image_size=96)
    assert (out / "mine.txt").read_text() == "keep me"
    generate(out, train=2, test=1, seed=1, image_size=96, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "synth.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["release"]  # no staging folders left


def test_official_layout_and_landmarks(synth_release, release_files):
    for (task, split), rel in release_files.items():
        for record in _records(synth_release, rel):
            image = Image.open(synth_release / record["image"])
            assert image.size == (96, 96) and image.format == "JPEG"
            points = np.load(synth_release / record["landmark"], allow_pickle=False)
            assert points.shape == (136,) and points.dtype == np.float32
            xy = points.reshape(68, 2)
            assert (xy > -5).all() and (xy < 101).all()  # the face is in the picture
            if split == "train":
                assert record["conversations"][0]["value"].endswith("\n<image>")
                assert record["id"].startswith("synth-train-")
            else:
                assert set(record) >= {"image", "landmark", "label", "gpt4"}


def test_emotion_texts_parse_to_their_labels_with_the_rege_parser(synth_release, release_files):
    for split in ("train", "test"):
        for r in _records(synth_release, release_files[("emotion", split)]):
            text = r["conversations"][1]["value"] if split == "train" else r["gpt4"]
            first = text.split(".")[0].lower()
            assert not any(n in first for n in NEGATIONS), first  # REGE drops negated sentences
            assert emotion_of(text) == r["label"], text
            assert 35 <= len(text.split()) <= 65


def test_au_texts_name_exactly_the_labelled_aus(synth_release, release_files):
    lengths = []
    for split in ("train", "test"):
        for r in _records(synth_release, release_files[("au", split)]):
            text = r["conversations"][1]["value"] if split == "train" else r["gpt4"]
            label = parse_au_label(r["label"])
            assert label and aus_of(text) == label, (r["label"], text)
            for au in label:
                assert f"AU{au} (" in text  # named as "AU12 (Lip Corner Puller)"
            lengths.append(len(text.split()))
    assert 140 <= min(lengths) and max(lengths) <= 215


def test_emotion_faces_follow_emfacs_and_au_task_has_free_combinations(tmp_path):
    generate(tmp_path, train=150, test=10, seed=2, image_size=64, workers=2)
    emotion = {r["image"]: r for r in _records(tmp_path, "train/train_emotion_anno.json")}
    au = _records(tmp_path, "train/train_au_anno.json")
    assert set(r["label"] for r in emotion.values()) == set(EMOTIONS)
    prototypes = {tuple(sorted(p)) for p in EMOTION_PROTOTYPES.values() if p}
    free = 0
    for r in au:
        label = parse_au_label(r["label"])
        if r["image"] in emotion:
            assert label == tuple(sorted(EMOTION_PROTOTYPES[emotion[r["image"]]["label"]]))
        else:
            free += label not in prototypes
        assert all(v >= ACTIVE_THRESHOLD for v in r["au_intensities"].values())
    assert free >= 20  # non-prototypical combinations exist
    assert all(0.35 <= r["intensity"] <= 1.0 for r in emotion.values())
    # Neutral faces carry no AU, so they are in the emotion task only.
    assert all(r["image"] not in {a["image"] for a in au} for r in emotion.values() if r["label"] == "neutral")


def _hog_features(root, rel):
    records = _records(root, rel)
    feats = [hog(np.asarray(Image.open(root / r["image"]).convert("L"), np.float32) / 255,
                 orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)) for r in records]
    return torch.tensor(np.array(feats)), torch.tensor([EMOTIONS.index(r["label"]) for r in records])


def _fit_linear(x, y, steps=100):
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], len(EMOTIONS))
    opt = torch.optim.LBFGS(model.parameters(), max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + 0.1 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


@pytest.mark.slow
def test_emotions_are_learnable_from_the_pixels(tmp_path):
    """A linear classifier on HOG features of the pixels beats chance (1/7) by far;
    the same classifier trained on shuffled labels does not."""
    generate(tmp_path, train=840, test=280, seed=11, image_size=96, au_only_fraction=0.0, workers=2)
    x_train, y_train = _hog_features(tmp_path, "train/train_emotion_anno.json")
    x_test, y_test = _hog_features(tmp_path, "eval/eval_emotion_anno.json")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    accuracy = (_fit_linear(x_train, y_train)(x_test).argmax(1) == y_test).float().mean().item()
    shuffled = y_train[torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))]
    control = (_fit_linear(x_train, shuffled)(x_test).argmax(1) == y_test).float().mean().item()
    print(f"emotion accuracy from pixels: {accuracy:.3f} (shuffled-label control {control:.3f}, chance {1 / 7:.3f})")
    assert accuracy >= 0.35  # 2.5x chance
    assert control <= 0.25
