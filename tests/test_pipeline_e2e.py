"""The README's main job on a fresh copy of the repository: dvc repro, no-op re-run, push/pull, exp run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest
import yaml

from tests.conftest import REPO, VENV_BIN


def _git_files(repo):
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def fresh_clone(repo_root, tmp_path_factory):
    """The repository's files (tracked and new, not ignored) in a new git repository."""
    clone = tmp_path_factory.mktemp("clone") / "repo"
    for rel in _git_files(repo_root):
        if (repo_root / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo_root / rel, clone / rel)
    env = _env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"]):
        subprocess.run(cmd, cwd=clone, check=True, env=env)
    return clone


def _env():
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # README command 1 uses the default store at the repository root
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"  # `python` in dvc.yaml is the venv's
    env.update(GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@localhost", GIT_COMMITTER_NAME="ci",
               GIT_COMMITTER_EMAIL="ci@localhost")
    return env


def _dvc(clone, *args):
    run = subprocess.run(["dvc", *args], cwd=clone, capture_output=True, text=True, env=_env())
    assert run.returncode == 0, f"dvc {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    return run.stdout + run.stderr


@pytest.mark.slow
@pytest.mark.timeout(2400)   # the whole pipeline: 17-20 min on 2 cores (training 1,600 steps), then a no-op repro
def test_dvc_repro_on_a_fresh_clone(fresh_clone):
    started = time.perf_counter()
    out = _dvc(fresh_clone, "repro")
    elapsed = time.perf_counter() - started
    # Quiet: stage lines, a training line every train.log_every steps, results (full logs go to files); nothing
    # at error level, none of Ray's, MLflow's or DeepSpeed's own lines.
    lines = out.splitlines()
    assert len(lines) <= 65, f"dvc repro printed {len(lines)} lines:\n{out}"
    noise = ("PlacementGroupCleaner", "is_gradient_checkpointing", "all_gather_into_tensor", "Loading weights",
             "core_worker.cc", "Token authentication", "Reporting training result", "RayTrainWorker",
             "TrainController", "INFO mlflow", "Setting accelerator", "Deprecat")
    assert not [line for line in lines if any(n in line for n in noise) or re.search(r"\] E |ERROR", line)], out
    rendered = re.search(r"FABA-Synth rendered (\d+) images in ([\d.]+) s", out)
    assert rendered, out
    images, seconds = int(rendered.group(1)), float(rendered.group(2))
    print(f"dvc repro: {elapsed:.1f} s, {len(lines)} lines; FABA-Synth default set: {images} images in {seconds:.1f} s")
    assert 3000 <= images <= 5000 and seconds < 120  # 3,900 images in 44 s on 2 cores

    summary = json.loads((fresh_clone / "data/manifests/summary.json").read_text())
    assert summary["images"] == images and summary["rejected"] == 0
    assert all(n > 0 for n in summary["rows"].values())

    # The landmarks stage covers every FABA-Synth image of the manifests.
    landmarks = json.loads((fresh_clone / "data/landmarks/summary.json").read_text())
    assert landmarks["images"] == images and landmarks["status"] == {"ok": images}
    assert landmarks["backend"].startswith("annotation@") and landmarks["prior_dim"] == 136

    # The train stage exported a model and logged its run to the default MLflow database.
    info = json.loads((fresh_clone / "models/emola/training.json").read_text())
    assert info["steps"] > 0 and info["tracking_uri"] == f"sqlite:///{fresh_clone / 'mlflow.db'}"
    assert (fresh_clone / "models/emola/emola_config.json").is_file()
    print(f"train: {info['steps']} steps, final loss {info['final_loss']:.3f}")

    # The committed results, exactly: training is reproducible on the same kind of machine
    # (tests/train/test_training_e2e.py), so a fresh clone's scores are the repository's.
    scores = json.loads((fresh_clone / "reports/metrics.json").read_text())
    print(f"evaluate: emotion S_re {scores['emotion']['S_re']:.1f}, AU S_re {scores['au']['S_re']:.1f}")
    assert scores == json.loads((REPO / "reports/metrics.json").read_text()), scores
    assert scores["emotion"]["S_re"] >= 90 and scores["au"]["S_re"] >= 78, scores   # the targets they meet
    baselines = json.loads((fresh_clone / "reports/baselines.json").read_text())
    assert baselines["prior_off"]["emotion"]["S_re"] < scores["emotion"]["S_re"] - 30  # the model reads the prior

    _check_the_registered_champion(fresh_clone)

    # The video stage: the readout head on every frame of the 20 FABA-Synth clips, on Ray Data.
    video = json.loads((fresh_clone / "reports/video_metrics.json").read_text())
    head = video["head"]
    print(f"video: {video['frames']} frames; head at the apex: emotion {head['apex']['smoothed']['emotion_accuracy']}, "
          f"AU F1 {head['apex']['smoothed']['au_macro_f1']}")
    assert video["status"] == {"ok": 20} and video["face_frames"] == video["frames"] == 600 and head["clips"] == 20
    assert head["apex"]["smoothed"]["emotion_accuracy"] >= 90 and head["apex"]["smoothed"]["au_macro_f1"] >= 60
    assert head == json.loads((REPO / "reports/video_metrics.json").read_text())["head"]   # the committed ones
    assert head["key_moments"]["smoothed"]["within_3_frames"] >= 16   # of 20 faces (20 on this machine)
    assert len(list((fresh_clone / "reports/video").glob("*.csv"))) == 20

    stages = yaml.safe_load((fresh_clone / "dvc.yaml").read_text())["stages"]
    again = _dvc(fresh_clone, "repro")
    assert again.count("didn't change, skipping") == len(stages) and "Data and pipelines are up to date" in again
    assert "up to date" in _dvc(fresh_clone, "status")
    # Bytecode is not source: compiling the stages' code (as importing it from this folder does) changes no stage.
    subprocess.run([str(VENV_BIN / "python"), "-m", "compileall", "-q", "platform", "jobs"], cwd=fresh_clone,
                   check=True)
    assert list((fresh_clone / "platform/emola/config").glob("__pycache__/*.pyc"))
    assert "up to date" in _dvc(fresh_clone, "status")
    metrics = _dvc(fresh_clone, "metrics", "show")
    assert "rows.emotion_train" in metrics

    # The default local remote needs no set-up: push, lose the data and the cache, pull it back.
    _dvc(fresh_clone, "push")
    before = (fresh_clone / "data/manifests/train.jsonl").read_bytes()
    shutil.rmtree(fresh_clone / "data/release")
    (fresh_clone / "data/manifests/train.jsonl").unlink()
    shutil.rmtree(fresh_clone / ".dvc/cache")
    _dvc(fresh_clone, "pull")
    assert (fresh_clone / "data/manifests/train.jsonl").read_bytes() == before
    assert len(list((fresh_clone / "data/release/images/train").iterdir())) > 0
    assert "up to date" in _dvc(fresh_clone, "status")


def _check_the_registered_champion(clone):
    """The evaluate stage's champion loads with mlflow.pyfunc and answers like the Analyzer (greedy)."""
    import mlflow
    import pandas as pd

    from emola import Analyzer
    from emola.config.schema import GenerationConfig

    greedy = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 32, "seed": 0}
    faces = sorted((clone / "data/release/images/test").iterdir())[:16]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{clone / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model("models:/emola@champion")
        assert mlflow.models.get_model_info("models:/emola@champion").signature is not None
        # Bytes, as a caller sends them: a served model opens no path unless an image root is configured.
        out = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in faces]}), params=greedy)
    finally:
        mlflow.set_tracking_uri(previous)
    expected = Analyzer.from_checkpoint(clone / "models/emola", generation=GenerationConfig(**greedy)).analyze_many(faces)
    assert list(out.status) == [r.status for r in expected]
    assert [e if isinstance(e, str) else None for e in out.emotion] == [r.emotion for r in expected]
    assert sum(r.status == "ok" for r in expected) >= 4, [r.status for r in expected]


@pytest.mark.slow
def test_dvc_exp_run_set_param(fresh_clone):
    from emola.config import load_config

    out = _dvc(fresh_clone, "exp", "run", "-S", "data.synth.train=120", "-S", "data.synth.test=40", "data")
    assert "rendered 160 images" in out
    summary = json.loads((fresh_clone / "data/manifests/summary.json").read_text())
    assert summary["images"] == 160
    # A profile's value, by its path in params.yaml.
    _dvc(fresh_clone, "exp", "run", "-S", "profiles.tiny.train.lr=0.002", "data")
    assert load_config(fresh_clone / "params.yaml").train.lr == 0.002
    # A key added to a top-level section (DVC's "+" appends it): it wins for any profile.
    _dvc(fresh_clone, "exp", "run", "-S", "+train.lr=0.0005", "data")
    assert load_config(fresh_clone / "params.yaml").train.lr == 0.0005
    assert load_config(fresh_clone / "params.yaml", {"profile": "emola-7b"}).train.lr == 0.0005
