"""Importing the authors' released checkpoints: a tiny model in the exact published layout, and each failure named."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emola.model.importing import PROVENANCE_FILE, ReleaseImportError, import_release

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base(tiny_params, tiny_corpus, tmp_path_factory) -> Path:
    """An HF-format tiny LLaVA base folder (weights, config, tokenizer), as llava-hf/llava-1.5-7b-hf is at full size."""
    from emola.model.builder import build_emola

    model, processor, _ = build_emola(tiny_params.model, profile="tiny", landmark_backend="annotation@1-68",
                                      tasks=["emotion", "au"], corpus=tiny_corpus)
    folder = tmp_path_factory.mktemp("base") / "llava-tiny-hf"
    model.llava.save_pretrained(folder, safe_serialization=True)
    processor.tokenizer.save_pretrained(folder)
    return folder


def _published(base: Path, out: Path, *, r: int = 4, seed: int = 0, prior_in_non_lora: bool = False) -> dict:
    """A release in the original LLaVA training layout with random trained tensors; returns the tensors by name."""
    from transformers import LlavaConfig

    config = LlavaConfig.from_pretrained(base)
    text, hidden = config.text_config, config.text_config.hidden_size
    vision = config.vision_config.hidden_size
    g = torch.Generator().manual_seed(seed)
    shapes = {"q_proj": (hidden, hidden), "k_proj": (hidden, hidden), "v_proj": (hidden, hidden),
              "o_proj": (hidden, hidden), "gate_proj": (text.intermediate_size, hidden),
              "up_proj": (text.intermediate_size, hidden), "down_proj": (hidden, text.intermediate_size)}
    lora = {}
    for layer in range(text.num_hidden_layers):
        for proj in TARGETS:
            block = "self_attn" if proj in TARGETS[:4] else "mlp"
            out_f, in_f = shapes[proj]
            stem = f"base_model.model.model.layers.{layer}.{block}.{proj}"
            lora[f"{stem}.lora_A.weight"] = 0.1 * torch.randn(r, in_f, generator=g)
            lora[f"{stem}.lora_B.weight"] = 0.1 * torch.randn(out_f, r, generator=g)
    non_lora = {"base_model.model.model.mm_projector.0.weight": 0.05 * torch.randn(hidden, vision, generator=g),
                "base_model.model.model.mm_projector.0.bias": 0.05 * torch.randn(hidden, generator=g),
                "base_model.model.model.mm_projector.2.weight": 0.05 * torch.randn(hidden, hidden, generator=g),
                "base_model.model.model.mm_projector.2.bias": 0.05 * torch.randn(hidden, generator=g)}
    prior = {"model.landmark_feature_projector.0.weight": 0.05 * torch.randn(hidden, 136, generator=g),
             "model.landmark_feature_projector.0.bias": 0.05 * torch.randn(hidden, generator=g),
             "model.landmark_feature_projector.2.weight": 0.05 * torch.randn(hidden, hidden, generator=g),
             "model.landmark_feature_projector.2.bias": 0.05 * torch.randn(hidden, generator=g)}
    out.mkdir(parents=True)
    torch.save(lora, out / "adapter_model.bin")
    torch.save({**non_lora, **({f"base_model.{k}": v for k, v in prior.items()} if prior_in_non_lora else {})},
               out / "non_lora_trainables.bin")
    torch.save(prior, out / "landmark_feature_projector.bin")
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.05, "bias": "none",
        "target_modules": TARGETS, "task_type": "CAUSAL_LM"}))
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "image_aspect_ratio": "pad", "landmark_feature_hidden_size": 136,
        "mm_hidden_size": vision, "hidden_size": hidden}))
    return {**lora, **non_lora, **prior}


def _by_hand(base: Path, tensors: dict, tiny_params, r: int = 4):
    """The same weights placed into the platform's model module by module, without the importer."""
    from emola.config.schema import LoraConfig
    from emola.model.builder import build_emola
    from emola.model.lora import apply_lora

    lora = LoraConfig(r=r, alpha=2 * r, dropout=0.05, targets=TARGETS, modules_to_save=[])
    cfg = tiny_params.model.model_copy(update={"base": str(base), "tiny": None, "prior_align": False,
                                               "prior_standardize": False, "lora": lora})
    model, processor, _ = build_emola(cfg, profile="emola-7b", landmark_backend="annotation@1-68", tasks=["emotion"])
    apply_lora(model, lora)
    with torch.no_grad():
        layers = model.base_llava.model.language_model.layers
        for i, layer in enumerate(layers):
            for proj in TARGETS:
                block = "self_attn" if proj in TARGETS[:4] else "mlp"
                module = getattr(getattr(layer, block), proj)
                stem = f"base_model.model.model.layers.{i}.{block}.{proj}"
                module.lora_A["default"].weight.copy_(tensors[f"{stem}.lora_A.weight"])
                module.lora_B["default"].weight.copy_(tensors[f"{stem}.lora_B.weight"])
        for n, target in ((0, "linear_1"), (2, "linear_2")):
            vision = getattr(model.base_llava.model.multi_modal_projector, target)
            vision.weight.copy_(tensors[f"base_model.model.model.mm_projector.{n}.weight"])
            vision.bias.copy_(tensors[f"base_model.model.model.mm_projector.{n}.bias"])
            prior = getattr(model.prior_projector, target)
            prior.weight.copy_(tensors[f"model.landmark_feature_projector.{n}.weight"])
            prior.bias.copy_(tensors[f"model.landmark_feature_projector.{n}.bias"])
    return model.eval(), processor


def _import(release: Path, base: Path, out: Path) -> Path:
    return import_release(release, base=str(base), out=out, task="emotion", landmark_backend="annotation@1-68",
                          dtype="float32")


def test_an_imported_release_computes_what_the_same_weights_placed_by_hand_compute(base, tiny_params, tmp_path):
    from emola.engine import InferenceEngine
    from emola.model.checkpoint import load_checkpoint

    tensors = _published(base, tmp_path / "emola-emotion-lora")
    out = _import(tmp_path / "emola-emotion-lora", base, tmp_path / "imported")
    imported, processor, config = load_checkpoint(out)
    assert (config.tasks, config.prior_dim, config.prior_align, config.template) == (["emotion"], 136, False,
                                                                                      "vicuna_v1")
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert set(provenance["files"]) == {"config.json", "adapter_config.json", "adapter_model.bin",
                                        "non_lora_trainables.bin", "landmark_feature_projector.bin"}
    assert provenance["tensors"] == len(tensors) and all(len(h) == 64 for h in provenance["files"].values())
    reference, _ = _by_hand(base, tensors, tiny_params)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96, 96, 3), np.uint8) for _ in range(2)]
    priors = rng.normal(size=(2, 136)).astype(np.float32)
    batch = processor.generation_batch(["What emotions are conveyed by this face?", "Q?"], images, priors)
    with torch.no_grad():
        got, want = imported(**batch).logits, reference(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, _by_hand(base, {**tensors, **{k: v * 0 for k, v in tensors.items()
                                                                  if "landmark" in k}}, tiny_params)[0](**batch).logits)

    tok = processor.tokenizer
    greedy = tiny_params.evaluate.generation.model_copy(update={"temperature": 0.0, "max_new_tokens": 12})
    outputs = []
    for model in (imported, reference):
        engine = InferenceEngine(model, tiny_params.inference.model_copy(update={"device": "cpu"}),
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, processor=processor)
        outputs.append([c.text for c in engine.complete(["What emotions are conveyed by this face?", "Q?"], images,
                                                        priors, greedy)])
    assert outputs[0] == outputs[1]


def test_the_prior_projector_may_also_sit_in_the_other_trainables(base, tmp_path):
    _published(base, tmp_path / "release", prior_in_non_lora=True)
    assert (_import(tmp_path / "release", base, tmp_path / "out") / PROVENANCE_FILE).is_file()


def _broken(base: Path, tmp_path: Path, edit) -> Path:
    release = tmp_path / "release"
    _published(base, release)
    edit(release)
    return release


def _edit_pickle(name: str, change):
    def edit(release: Path):
        tensors = torch.load(release / name, weights_only=True)
        change(tensors)
        torch.save(tensors, release / name)
    return edit


class _RunsCode:
    """A pickle that would run code when loaded without weights_only."""

    def __reduce__(self):
        import os

        return (os.system, (f"touch {_RunsCode.flag}",))


@pytest.mark.parametrize("case, edit, message", [
    ("missing landmark projector", lambda r: (r / "landmark_feature_projector.bin").unlink(),
     r"4 tensor\(s\) missing: prior\.linear_1\.bias, prior\.linear_1\.weight"),
    ("extra unknown tensor", _edit_pickle("non_lora_trainables.bin",
                                          lambda t: t.__setitem__("base_model.model.model.vision_resampler.w",
                                                                  torch.zeros(2))),
     r"1 tensor\(s\) map to no part of EmoLA: non_lora_trainables\.bin:base_model\.model\.model\.vision_resampler\.w"),
    ("wrong shape", _edit_pickle("adapter_model.bin",
                                 lambda t: t.__setitem__("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight",
                                                         torch.zeros(3, 4))),
     r"adapter_model\.bin:base_model\.model\.model\.layers\.1\.mlp\.up_proj\.lora_B\.weight: shape \(3, 4\) where "
     r"the model's lora\.1\.mlp\.up_proj\.B has \(256, 4\)"),
    ("not a LoRA release", lambda r: (r / "adapter_model.bin").unlink(),
     r"not an EmoLA LoRA release: missing adapter_model\.bin"),
])
def test_each_broken_release_is_named(base, tmp_path, case, edit, message):
    release = _broken(base, tmp_path, edit)
    with pytest.raises(ReleaseImportError, match=message):
        _import(release, base, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_pickle_holding_more_than_tensors_is_refused_without_running_it(base, tmp_path):
    release = tmp_path / "release"
    _published(base, release)
    _RunsCode.flag = tmp_path / "ran"
    with open(release / "non_lora_trainables.bin", "wb") as fh:
        pickle.dump({"model.mm_projector.0.weight": _RunsCode()}, fh)
    with pytest.raises(ReleaseImportError, match=r"non_lora_trainables\.bin: refused: not a pickle of tensors only"):
        _import(release, base, tmp_path / "out")
    assert not _RunsCode.flag.exists()
    torch.save({"model.mm_projector.0.weight": [1, 2, 3]}, release / "non_lora_trainables.bin")
    with pytest.raises(ReleaseImportError, match=r"refused: expected a mapping of tensor names to tensors"):
        _import(release, base, tmp_path / "out")
    shutil.rmtree(release)


@pytest.mark.slow
def test_imported_releases_are_evaluated_registered_and_served(base, small_pipeline, tmp_path, monkeypatch):
    """Two imported per-task checkpoints go through `jobs.evaluate` (registered as emola-emotion and emola-au)
    and are served from the registry, as trained models are."""
    import os
    import subprocess
    import sys

    import httpx
    from mlflow.tracking import MlflowClient

    from serve import local
    from tests.conftest import REPO, VENV_BIN

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    for seed, task in enumerate(("emotion", "au")):
        _published(base, tmp_path / f"emola-{task}-lora", seed=seed)
        run = subprocess.run([str(VENV_BIN / "emola"), "import", "emola-release", str(tmp_path / f"emola-{task}-lora"),
                              "--base", str(base), "--out", str(tmp_path / "imported" / task), "--task", task,
                              "--landmark-backend", "annotation@1-68", "--dtype", "float32"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout)["mlflow_run_id"]
    evaluation = subprocess.run(
        [sys.executable, "-m", "jobs.evaluate", "--checkpoint", str(tmp_path / "imported"),
         f"data.manifests={small_pipeline['manifests']}", f"landmarks.cache={small_pipeline['landmarks']}",
         f"evaluate.reports={tmp_path / 'reports'}", "evaluate.generation.max_new_tokens=12", "evaluate.batch_size=8"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert set(json.loads((tmp_path / "reports/metrics.json").read_text())) == {"emotion", "au"}
    client = MlflowClient(tracking_uri=uri)
    for task in ("emotion", "au"):
        assert int(client.get_model_version_by_alias(f"emola-{task}", "champion").version) == 1

    server = local.start(tmp_path / "serve", [
        "serve.checkpoint={emotion: models:/emola-emotion@champion, au: models:/emola-au@champion}",
        f"serve.landmark_cache={small_pipeline['landmarks']}", "serve.min_replicas=1", "serve.max_replicas=1",
        "serve.num_cpus=0.5", "evaluate.generation.max_new_tokens=12"])
    try:
        from emola.data.manifest import read_manifest

        row = next(r for r in read_manifest(small_pipeline["manifests"] / "test.jsonl") if r.task == "emotion")
        answer = httpx.post(server.url + "/v1/analyze", files={"file": ("f.jpg", row.image_path().read_bytes(),
                                                                       "image/jpeg")}, data={"task": "both"}, timeout=60)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert {results["emotion"]["model_version"]["registry_name"], results["au"]["model_version"]["registry_name"]} \
            == {"emola-emotion", "emola-au"}
    finally:
        server.stop()
