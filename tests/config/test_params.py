"""params.yaml: every profile loads; unknown keys and wrong types are named; layering works."""

from __future__ import annotations

import textwrap

import pytest

from emola.config import ParamsError, load_config, parse_overrides
from emola.config.loader import profile_names, read_yaml, resolve


@pytest.fixture
def params(repo_root):
    return repo_root / "params.yaml"


def test_every_profile_in_params_yaml_loads(params):
    names = profile_names(params)
    assert set(names) == {"tiny", "emola-7b"}
    for name in names:
        cfg = load_config(params, {"profile": name})
        assert cfg.profile == name


def test_tiny_is_the_default_and_runs_on_cpu(params):
    cfg = load_config(params)
    assert cfg.profile == "tiny"
    assert cfg.model.base is None and cfg.model.tiny is not None
    assert cfg.train.use_gpu is False and cfg.train.precision == "fp32"
    assert cfg.data.source == "synth"


def test_emola_7b_holds_the_published_settings(params):
    cfg = load_config(params, {"profile": "emola-7b"})
    m, t = cfg.model, cfg.train
    assert m.base == "llava-hf/llava-1.5-7b-hf" and m.image_size == 336 and m.vision_feature_layer == -2
    assert (m.lora.r, m.lora.alpha, m.lora.dropout) == (128, 256, 0.05)
    assert set(m.lora.targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert m.prior_dim == 212 and m.template == "vicuna_v1"
    assert (t.lr, t.projector_lr, t.precision) == (1e-4, 2e-5, "bf16")
    assert (t.epochs, t.micro_batch * t.num_workers, t.warmup_ratio, t.weight_decay, t.seed) == (1, 64, 0.03, 0.0, 1)
    assert t.max_length == 2048 and t.separate_models
    # Measured on one H200 (benchmarks/results/gpu/before-gate-2026-11-27.json): not the published ZeRO-3 and full recomputation, which
    # change speed and memory, not the optimization.
    assert (t.zero_stage, t.checkpointing, t.compile) == (2, "auto", True)
    assert cfg.evaluate.generation.temperature == 0.01 and cfg.evaluate.generation.top_p == 0.5
    assert cfg.landmarks.backend == "insightface-2d106" and cfg.landmarks.insightface.mode == "paper"


def _write(tmp_path, params, edit):
    raw = read_yaml(params)
    edit(raw)
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["data"]["synth"].update(trian=5), "data.synth.trian: unknown key"),
        (lambda r: r["profiles"]["tiny"]["train"].update(lrr=0.1), "train.lrr: unknown key"),
        (lambda r: r["data"]["synth"].update(train="many"), "data.synth.train: Input should be a valid integer"),
        (lambda r: r["profiles"]["tiny"]["train"].update(lr="fast"), "train.lr: Input should be a valid number"),
        (lambda r: r["profiles"]["tiny"]["train"].update(use_gpu="yes"), "train.use_gpu: Input should be a valid boolean"),
        (lambda r: r["profiles"]["tiny"]["train"].pop("lr"), "train.lr: missing"),
        (lambda r: r.update(extra_section={}), "unknown top-level key(s): extra_section"),
        (lambda r: r.update(profile="huge"), "unknown profile 'huge' (known: emola-7b, tiny)"),
        (lambda r: r["inference"].update(kv_cache_dtype="float8_e4m3fn"),
         "kv_cache_dtype float8_e4m3fn needs inference.decode_attention: varlen"),
        (lambda r: r["inference"].update(kv_cache_dtype="int4"), "inference.kv_cache_dtype: Input should be"),
    ],
)
def test_bad_params_are_named(tmp_path, params, edit, message):
    with pytest.raises(ParamsError) as err:
        load_config(_write(tmp_path, params, edit))
    assert message in str(err.value)


def test_all_errors_are_reported_at_once(tmp_path, params):
    def edit(r):
        r["data"]["synth"]["trian"] = 5
        r["profiles"]["tiny"]["train"]["lr"] = "fast"

    with pytest.raises(ParamsError) as err:
        load_config(_write(tmp_path, params, edit))
    assert "data.synth.trian" in str(err.value) and "train.lr" in str(err.value)


def test_sections_override_the_profile_and_overrides_win(params):
    raw = read_yaml(params)
    raw["train"] = {**raw["train"], "lr": 0.5}
    assert resolve(raw).train.lr == 0.5
    assert resolve(raw, {"profile": "emola-7b"}).train.lr == 0.5  # a section key wins for any profile
    assert resolve(raw, {"train.lr": 0.25}).train.lr == 0.25
    assert resolve(raw, {"profile": "emola-7b"}).train.projector_lr == 2e-5  # the rest stays the profile's


def test_overrides_parse_like_yaml_1_2():
    assert parse_overrides(["train.lr=3e-4", "train.max_steps=null", "train.tasks=[au]", "profile=emola-7b"]) == {
        "train.lr": 3e-4, "train.max_steps": None, "train.tasks": ["au"], "profile": "emola-7b"}
    with pytest.raises(ParamsError, match="expected KEY=VALUE"):
        parse_overrides(["train.lr"])


def test_override_into_unknown_section_is_named(params):
    with pytest.raises(ParamsError, match="unknown section 'trian'"):
        load_config(params, ["trian.lr=1"])


def test_exponent_floats_in_yaml_are_floats(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        a: 1e-4
        b: 2.0e-5
        c: 3
        """))
    assert read_yaml(path) == {"a": 1e-4, "b": 2e-5, "c": 3}


def test_import_source_requires_a_root(params):
    with pytest.raises(ParamsError, match="data.faba_instruct.root must name"):
        load_config(params, {"data.source": "faba-instruct"})


def test_profiles_hold_only_what_differs(repo_root):
    """A value every profile shares lives once, in the top-level section."""
    import yaml

    raw = yaml.safe_load((repo_root / "params.yaml").read_text())

    def leaves(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                out.update(leaves(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    profiles = [leaves(p) for p in raw["profiles"].values()]
    shared = [k for k in profiles[0] if all(k in p and p[k] == profiles[0][k] for p in profiles[1:])]
    assert len(profiles) >= 2 and shared == []
