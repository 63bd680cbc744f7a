"""EmoLA as an MLflow model: logged with a signature, registered, loaded with pyfunc, served by `mlflow models serve`."""

from __future__ import annotations

import base64
import json
import os
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


def _faces(real_photos, synth_release) -> pd.DataFrame:
    """Good rows in every accepted form: a path, raw bytes, base64, a data URL; both tasks; a free question."""
    hopper, astronaut = real_photos["grace_hopper"], real_photos["astronaut"]
    synth = sorted((synth_release / "images/test").iterdir())[:4]
    b64 = base64.b64encode(astronaut.read_bytes()).decode()
    return pd.DataFrame({
        "image": [str(hopper), astronaut.read_bytes(), b64, f"data:image/png;base64,{b64}", str(real_photos["t1"]),
                  *map(str, synth)],
        "task": ["emotion", "emotion", "au", "emotion", "emotion", *["emotion"] * len(synth)],
        "question": [None, None, None, None, "Is this person calm?", *[None] * len(synth)],
    })


def test_pyfunc_champion_answers_like_the_analyzer(registry, tiny_checkpoint, real_photos, synth_release):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/emola@champion")
    frame = _faces(real_photos, synth_release)
    out = model.predict(frame, params=GREEDY)
    assert list(out.columns)[:4] == ["image", "task", "status", "emotion"] and len(out) == len(frame)

    analyzer = Analyzer.from_checkpoint(tiny_checkpoint, generation=GenerationConfig(**GREEDY))
    emotion_rows = [i for i in range(len(frame)) if frame.task[i] == "emotion" and frame.question[i] is None]
    images = [frame.image[i] if isinstance(frame.image[i], bytes) else frame.image[i] for i in emotion_rows]
    images = [base64.b64decode(x.split(",", 1)[1]) if isinstance(x, str) and x.startswith("data:") else x for x in images]
    expected = analyzer.analyze_many(images, "emotion")
    assert [out.emotion[i] for i in emotion_rows] == [r.emotion for r in expected]
    assert [out.description[i] for i in emotion_rows] == [r.description for r in expected]
    assert (out.status[:5] == "ok").all() and out.emotion[0] in {"happiness", "sadness", "surprise", "anger",
                                                                   "neutral", "disgust", "fear"}
    assert isinstance(out.aus[2], str) and pd.isna(out.emotion[2])            # the AU row: AU codes, no emotion
    free = analyzer.analyze(real_photos["t1"], question="Is this person calm?")
    assert out.description[4] == free.description


def test_bad_rows_come_back_as_rows_with_a_status(registry, real_photos, tmp_path):
    import mlflow

    (tmp_path / "notes.txt").write_text("not a picture")
    model = mlflow.pyfunc.load_model("models:/emola@champion")
    out = model.predict(pd.DataFrame({
        "image": ["bm90IGFuIGltYWdl", str(tmp_path / "notes.txt"), str(tmp_path / "gone.jpg"), "%%%", None,
                  str(real_photos["tom_hanks"])],
        "task": ["emotion", "emotion", "emotion", "emotion", "emotion", "pose"]}), params=GREEDY)
    assert list(out.status) == ["unreadable", "unreadable", "missing", "bad_input", "bad_input", "bad_input"], out
    assert all(out.reason[i] for i in range(len(out))) and out.description.isna().all()
    assert "row 5" in out.reason[5] and "pose" in out.reason[5]


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
def test_mlflow_models_serve_answers_a_good_and_a_bad_row(registry, real_photos, tmp_path):
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
