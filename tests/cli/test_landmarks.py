"""``emola landmarks`` on real photos."""

import json
import subprocess

from PIL import Image

from tests.conftest import VENV_BIN


def _run(*args, cwd=None):
    return subprocess.run([VENV_BIN / "emola", "landmarks", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_json_per_image_and_plots(real_photos, tmp_path, repo_root):
    run = _run(real_photos["t1"], real_photos["astronaut"], "--all-faces", "--plot", tmp_path / "faces.png", cwd=repo_root)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [len(r["faces"]) for r in records] == [6, 1]
    for record in records:
        assert record["status"] == "ok" and record["backend"] == "dlib-68@1"
        for face in record["faces"]:
            assert len(face["box"]) == 4 and len(face["points"]) == 68 and "score" in face
        plot = Image.open(record["plot"])
        assert plot.size == (record["width"], record["height"])
    assert {p.name for p in tmp_path.iterdir()} == {"faces-t1.png", "faces-astronaut.png"}


def test_largest_face_only_by_default(real_photos, repo_root):
    record = json.loads(_run(real_photos["t1"], cwd=repo_root).stdout)
    assert len(record["faces"]) == 1


def test_unusable_images_are_reported_with_exit_1(tmp_path, repo_root, real_photos):
    (tmp_path / "empty.jpg").write_bytes(b"")
    run = _run(tmp_path / "empty.jpg", real_photos["grace_hopper"], cwd=repo_root)
    assert run.returncode == 1
    bad, good = [json.loads(line) for line in run.stdout.splitlines()]
    assert bad["status"] == "unreadable" and bad["reason"] == "empty file"
    assert good["status"] == "ok"
