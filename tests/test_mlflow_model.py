"""EmoLA as an MLflow model: logged with a signature, registered, loaded with pyfunc, served by `mlflow models serve`."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pandas as pd
import pytest

from emola import Analyzer
from emola.config.schema import GenerationConfig
from tests.conftest import VENV_BIN

GREEDY = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 12, "seed": 0}


@pytest.fixture(scope="module")
def registry(tiny_checkpoint, synth_release, tmp_path_factory):
    """A sqlite registry holding the tiny checkpoint as ``models:/emola@champion``, logged as the trainer logs it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from emola.evaluate.registry import register_and_maybe_promote
    from emola.mlflow_model import log_emola_model

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("pyfunc-test", artifact_location=str(root / "artifacts"))
    with mlflow.start_run(experiment_id=experiment) as run:
        model_uri = log_emola_model(tiny_checkpoint, example_image=synth_release / "images/test/000000.jpg")
    entry = register_and_maybe_promote(MlflowClient(tracking_uri=uri), "emola", run.info.run_id, 10.0, "t", {})
    assert entry["champion"] and entry["version"] == 1
    yield {"uri": uri, "run_id": run.info.run_id, "model_uri": model_uri}
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    mlflow.set_tracking_uri(previous or "")


@pytest.fixture
def image_root(synth_release, monkeypatch):
    """Paths are taken only under a configured root: the small release's folder, for these tests."""
    from emola.pyfunc import ROOT_ENV

    monkeypatch.setenv(ROOT_ENV, str(synth_release))
    return synth_release


def _faces(real_photos, synth_release) -> pd.DataFrame:
    """Good rows in every accepted form: raw bytes, base64, a data URL, a path under the image root; both tasks; a
    free question."""
    hopper, astronaut = real_photos["grace_hopper"], real_photos["astronaut"]
    synth = [f"images/test/{p.name}" for p in sorted((synth_release / "images/test").iterdir())[:4]]
    b64 = base64.b64encode(astronaut.read_bytes()).decode()
    return pd.DataFrame({
        "image": [hopper.read_bytes(), astronaut.read_bytes(), b64, f"data:image/png;base64,{b64}",
                  real_photos["t1"].read_bytes(), *synth],
        "task": ["emotion", "emotion", "au", "emotion", "emotion", *["emotion"] * len(synth)],
        "question": [None, None, None, None, "Is this person calm?", *[None] * len(synth)],
    })


def test_pyfunc_champion_answers_like_the_analyzer(registry, tiny_checkpoint, real_photos, synth_release, image_root):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/emola@champion")
    frame = _faces(real_photos, synth_release)
    out = model.predict(frame, params=GREEDY)
    assert list(out.columns)[:4] == ["image", "task", "status", "emotion"] and len(out) == len(frame)

    analyzer = Analyzer.from_checkpoint(tiny_checkpoint, generation=GenerationConfig(**GREEDY))
    emotion_rows = [i for i in range(len(frame)) if frame.task[i] == "emotion" and frame.question[i] is None]
    images = [frame.image[i] if isinstance(frame.image[i], bytes) else frame.image[i] for i in emotion_rows]
    images = [base64.b64decode(x.split(",", 1)[1]) if isinstance(x, str) and x.startswith("data:") else
              synth_release / x if isinstance(x, str) else x for x in images]
    expected = analyzer.analyze_many(images, "emotion")
    assert [out.emotion[i] for i in emotion_rows] == [r.emotion for r in expected]
    assert [out.description[i] for i in emotion_rows] == [r.description for r in expected]
    assert (out.status[:5] == "ok").all() and out.emotion[0] in {"happiness", "sadness", "surprise", "anger",
                                                                   "neutral", "disgust", "fear"}
    assert isinstance(out.aus[2], str) and pd.isna(out.emotion[2])            # the AU row: AU codes, no emotion
    assert list(out.image[5:]) == list(frame.image[5:]) and out.image[:5].isna().all()   # a path row names its path
    free = analyzer.analyze(real_photos["t1"], question="Is this person calm?")
    assert out.description[4] == free.description


def test_bad_rows_come_back_as_rows_with_a_status(registry, real_photos, image_root):
    import mlflow

    (image_root / "notes.txt").write_text("not a picture")
    model = mlflow.pyfunc.load_model("models:/emola@champion")
    out = model.predict(pd.DataFrame({
        "image": ["bm90IGFuIGltYWdl", "notes.txt", "gone.jpg", "%%%", None, base64.b64encode(
            real_photos["tom_hanks"].read_bytes()).decode()],
        "task": ["emotion", "emotion", "emotion", "emotion", "emotion", "pose"]}), params=GREEDY)
    assert list(out.status) == ["unreadable", "unreadable", "missing", "bad_input", "bad_input", "bad_input"], out
    assert all(out.reason[i] for i in range(len(out))) and out.description.isna().all()
    assert "row 5" in out.reason[5] and "pose" in out.reason[5]


def test_a_cell_never_opens_a_server_path_outside_the_image_root(registry, real_photos, image_root, monkeypatch,
                                                                   tmp_path):
    """Without a root no path is opened: each answer is the same once the files are gone (no existence oracle);
    with one, nothing outside it (``..``, absolute paths, links) is read; images over the byte cap are refused."""
    import mlflow

    from emola.pyfunc import MAX_BYTES_ENV, ROOT_ENV

    secret = tmp_path / "outside"
    secret.mkdir()
    face = secret / "face.jpg"
    face.write_bytes(real_photos["grace_hopper"].read_bytes())
    (secret / "notes.txt").write_text("private")
    (image_root / "link.jpg").unlink(missing_ok=True)
    (image_root / "link.jpg").symlink_to(face)
    probes = [str(face), str(secret / "notes.txt"), str(secret / "gone.jpg"), "/etc/passwd", str(secret)]

    monkeypatch.delenv(ROOT_ENV)
    model = mlflow.pyfunc.load_model("models:/emola@champion")
    out = model.predict(pd.DataFrame({"image": probes}), params=GREEDY)
    assert "ok" not in set(out.status) and out.description.isna().all(), out
    shutil.rmtree(secret)
    gone = model.predict(pd.DataFrame({"image": probes}), params=GREEDY)
    assert list(gone.status) == list(out.status) and list(gone.reason) == list(out.reason)
    secret.mkdir()
    face.write_bytes(real_photos["grace_hopper"].read_bytes())

    monkeypatch.setenv(ROOT_ENV, str(image_root))
    monkeypatch.setenv(MAX_BYTES_ENV, "40000")
    model = mlflow.pyfunc.load_model("models:/emola@champion")
    escapes = [str(face), f"../{secret.name}/face.jpg", "link.jpg", "/etc/passwd"]
    big = base64.b64encode(real_photos["grace_hopper"].read_bytes()).decode()   # 60 kB: over the cap
    out = model.predict(pd.DataFrame({"image": [*escapes, big, "images/test/000000.jpg"]}), params=GREEDY)
    assert set(out.status[:3]) == {"missing"} and out.status[3] in ("missing", "unreadable"), out   # never "ok"
    assert out.description[:4].isna().all()
    assert out.status[4] == "too_large" and out.status[5] in ("ok", "no_face")   # read and analysed


def test_concurrent_predicts_share_the_engine_safely(registry, real_photos):
    """MLflow's server calls predict from several threads: each gets its own rows, as one call alone would."""
    from concurrent.futures import ThreadPoolExecutor

    import mlflow

    model = mlflow.pyfunc.load_model("models:/emola@champion")
    frames = [pd.DataFrame({"image": [real_photos[name].read_bytes()], "task": [task]})
              for name in ("grace_hopper", "astronaut", "tom_hanks") for task in ("emotion", "au")]
    alone = [model.predict(f, params=GREEDY).description[0] for f in frames]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda f: model.predict(f, params=GREEDY).description[0], frames * 2))
    assert together == alone * 2


def test_the_signature_and_example_are_logged_and_both_kinds_of_version_resolve(registry, tiny_checkpoint, tmp_path):
    import mlflow
    from mlflow.models import get_model_info
    from mlflow.tracking import MlflowClient

    from emola.evaluate.registry import register_and_maybe_promote
    from emola.model.reference import resolve_checkpoint

    info = get_model_info("models:/emola@champion")
    assert info.signature.inputs.input_names() == ["image", "task", "question"]
    assert info.signature.inputs.required_input_names() == ["image"]
    assert {"description", "emotion", "aus", "face_x0", "status", "reason"} <= set(info.signature.outputs.input_names())
    assert {p.name for p in info.signature.params} == {"temperature", "top_p", "max_new_tokens", "seed"}
    assert info.saved_input_example_info is not None
    assert "python_function" in info.flavors

    config = (tiny_checkpoint / "emola_config.json").read_text()
    for reference in ("models:/emola@champion", "models:/emola/1", f"runs:/{registry['run_id']}/model"):
        assert (resolve_checkpoint(reference).path / "emola_config.json").read_text() == config, reference
    # A version registered before MLflow models: the checkpoint folder as plain run artifacts.
    with mlflow.start_run(experiment_id=MlflowClient().get_experiment_by_name("pyfunc-test").experiment_id) as run:
        mlflow.log_artifacts(str(tiny_checkpoint), artifact_path="model")
    client = MlflowClient(tracking_uri=registry["uri"])
    entry = register_and_maybe_promote(client, "emola-old", run.info.run_id, 5.0, "t", {})
    assert client.get_model_version("emola-old", entry["version"]).source == f"runs:/{run.info.run_id}/model"
    assert (resolve_checkpoint("models:/emola-old@champion").path / "emola_config.json").read_text() == config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_good_and_a_bad_row_and_opens_no_path(registry, real_photos, tmp_path):
    port = _free_port()
    # `mlflow models serve` starts `uvicorn` by name: the venv's bin on PATH, as in an activated venv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"], "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(VENV_BIN / "mlflow"), "models", "serve", "-m", "models:/emola@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        good = base64.b64encode(real_photos["grace_hopper"].read_bytes()).decode()
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {
            "dataframe_records": [{"image": good, "task": "emotion"}, {"image": "bm90IGFuIGltYWdl", "task": "au"}],
            "params": GREEDY})
        assert status == 200, body
        rows = body["predictions"]
        assert [r["status"] for r in rows] == ["ok", "unreadable"] and rows[0]["emotion"] and rows[1]["reason"]
        # A path names nothing on the server: an existing file answers as a missing one does.
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [
            {"image": str(real_photos["grace_hopper"])}, {"image": str(tmp_path / "gone.jpg")}], "params": GREEDY})
        assert status == 200 and [r["status"] for r in body["predictions"]] == ["bad_input"] * 2, body
        # Malformed input: an error without a stack trace.
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [{"task": "emotion"}]})
        assert status == 400 and "stack_trace" not in body and "Traceback" not in json.dumps(body), body
        # Concurrent callers (MLflow runs predict in threads) each get their own answer.
        from concurrent.futures import ThreadPoolExecutor

        faces = [base64.b64encode(real_photos[n].read_bytes()).decode() for n in ("grace_hopper", "astronaut")] * 3
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda image: _post(f"http://127.0.0.1:{port}/invocations", {
                "dataframe_records": [{"image": image}], "params": GREEDY}), faces))
        assert all(s == 200 for s, _ in answers)
        assert len({a[1]["predictions"][0]["description"] for a in answers[0::2]}) == 1
        # The server keeps serving after a bad batch.
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [{"image": good}],
                                                                      "params": GREEDY})
        assert status == 200 and body["predictions"][0]["status"] == "ok"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
