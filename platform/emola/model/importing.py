"""Import the EmoLA authors' released LoRA checkpoints into platform checkpoints.

The release is the original LLaVA training layout, one folder per task:

    config.json                     LLaVA's own config (mm_projector_type, mm_vision_select_layer,
                                    image_aspect_ratio, landmark_feature_hidden_size, ...)
    adapter_config.json             peft LoRA settings (r, lora_alpha, target_modules, ...)
    adapter_model.bin               LoRA tensors: base_model.model.model.layers.N.<block>.<proj>.lora_{A,B}.weight
    non_lora_trainables.bin         the other trained tensors: model.mm_projector.{0,2}.* (and maybe the prior projector)
    landmark_feature_projector.bin  the prior projector: ...landmark_feature_projector.{0,2}.{weight,bias}

The ``.bin`` files are PyTorch pickles: they are read with ``torch.load(weights_only=True)``
and must hold a mapping of names to tensors; anything else is refused, naming the file,
without running it. Names are matched by their tail (the published loader strips
``base_model.`` and a leading ``model.`` and matches by substring), so any prefix is
accepted. Every source tensor is used exactly once, or the import fails naming the
leftovers; missing tensors and shape mismatches fail naming them.

The result is the platform's own checkpoint (:mod:`emola.model.checkpoint`) over the
HF-format base (``llava-hf/llava-1.5-7b-hf``, the same weights as ``liuhaotian/llava-v1.5-7b``
in transformers' naming), with a ``provenance.json`` naming the source files and their SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

RELEASE_FILES = ("config.json", "adapter_config.json", "adapter_model.bin", "non_lora_trainables.bin")
PRIOR_FILE = "landmark_feature_projector.bin"
PROVENANCE_FILE = "provenance.json"

_LORA = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
                   r"\.lora_([AB])(?:\.default)?\.weight$")
_VISION = re.compile(r"(?:^|\.)mm_projector\.([02])\.(weight|bias)$")
_PRIOR = re.compile(r"(?:^|\.)landmark_feature_projector\.([02])\.(weight|bias)$")
_LINEAR = {"0": "linear_1", "2": "linear_2"}


class ReleaseImportError(ValueError):
    """The folder is not an importable EmoLA release; the message names the file or tensors at fault."""


def load_tensor_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` of the release: only a mapping of names to tensors is accepted (``weights_only``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler refuses anything but tensors and plain containers
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReleaseImportError(f"{path}: refused: not a pickle of tensors only ({first[:300]})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ReleaseImportError(f"{path}: refused: expected a mapping of tensor names to tensors, "
                                 f"got {type(obj).__name__}")
    return obj


@dataclass(frozen=True)
class Release:
    """What a release folder holds: its settings and its tensors, by file."""

    folder: Path
    llava: dict                      # config.json
    adapter: dict                    # adapter_config.json
    tensors: dict[str, dict[str, torch.Tensor]]

    @property
    def prior_dim(self) -> int:
        return int(self.llava.get("landmark_feature_hidden_size", 212))


def read_release(folder: Path | str) -> Release:
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseImportError(f"{folder}: not a folder")
    missing = [name for name in RELEASE_FILES if not (folder / name).is_file()]
    if missing:
        raise ReleaseImportError(f"{folder}: not an EmoLA LoRA release: missing {', '.join(missing)} "
                                 f"(expected {', '.join(RELEASE_FILES)} and optionally {PRIOR_FILE})")
    llava = json.loads((folder / "config.json").read_text())
    adapter = json.loads((folder / "adapter_config.json").read_text())
    if adapter.get("peft_type", "LORA") != "LORA":
        raise ReleaseImportError(f"{folder / 'adapter_config.json'}: peft_type {adapter.get('peft_type')!r}, not LORA")
    for key, supported in (("use_rslora", False), ("use_dora", False), ("bias", "none"), ("fan_in_fan_out", False)):
        if adapter.get(key, supported) != supported:
            raise ReleaseImportError(f"{folder / 'adapter_config.json'}: {key}={adapter[key]!r} is not supported "
                                     f"(expected {supported!r})")
    for key, expected in (("mm_projector_type", "mlp2x_gelu"), ("image_aspect_ratio", "pad")):
        if llava.get(key, expected) != expected:
            raise ReleaseImportError(f"{folder / 'config.json'}: {key}={llava[key]!r}; the platform runs {expected!r}")
    files = [name for name in ("adapter_model.bin", "non_lora_trainables.bin", PRIOR_FILE) if (folder / name).is_file()]
    return Release(folder, llava, adapter, {name: load_tensor_pickle(folder / name) for name in files})


def _target(key: str) -> str | None:
    """The platform parameter a release tensor name maps to, or None."""
    if m := _LORA.search(key):
        layer, block, proj, ab = m.groups()
        return f"lora.{layer}.{block}.{proj}.{ab}"
    if m := _VISION.search(key):
        return f"vision.{_LINEAR[m.group(1)]}.{m.group(2)}"
    if m := _PRIOR.search(key):
        return f"prior.{_LINEAR[m.group(1)]}.{m.group(2)}"
    return None


def map_release(release: Release) -> dict[str, tuple[torch.Tensor, str]]:
    """``{target: (tensor, "file:name")}``; a tensor held twice (the prior projector in two files) must be equal."""
    mapped: dict[str, tuple[torch.Tensor, str]] = {}
    unknown = []
    for file, tensors in release.tensors.items():
        for key, tensor in tensors.items():
            target = _target(key)
            if target is None:
                unknown.append(f"{file}:{key}")
                continue
            if target in mapped:
                other, where = mapped[target]
                if other.shape != tensor.shape or not torch.equal(other, tensor):
                    raise ReleaseImportError(f"{release.folder}: {where} and {file}:{key} both give {target} "
                                             "but differ")
                continue
            mapped[target] = (tensor, f"{file}:{key}")
    if unknown:
        raise ReleaseImportError(f"{release.folder}: {len(unknown)} tensor(s) map to no part of EmoLA: "
                                 f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
    return mapped


def _parameters(model, layers: int, targets: list[str]) -> dict[str, torch.nn.Parameter]:
    """Every platform parameter a release must provide, by target name."""
    params = {}
    decoder = model.base_llava.model.language_model.layers
    for i in range(layers):
        for proj in targets:
            block = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            module = getattr(getattr(decoder[i], block), proj)
            params[f"lora.{i}.{block}.{proj}.A"] = module.lora_A["default"].weight
            params[f"lora.{i}.{block}.{proj}.B"] = module.lora_B["default"].weight
    for prefix, module in (("vision", model.base_llava.model.multi_modal_projector), ("prior", model.prior_projector)):
        for linear in ("linear_1", "linear_2"):
            for name in ("weight", "bias"):
                params[f"{prefix}.{linear}.{name}"] = getattr(getattr(module, linear), name)
    return params


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_release(folder: Path | str, *, base: str, out: Path | str, task: str, landmark_backend: str,
                   dtype: str = "float16") -> Path:
    """Import one released checkpoint (``task``: emotion or au) over the HF LLaVA ``base``; returns ``out``."""
    from transformers import LlavaConfig

    from emola.config.schema import LoraConfig, ModelConfig
    from emola.model.builder import build_emola
    from emola.model.checkpoint import save_checkpoint
    from emola.model.lora import apply_lora

    if task not in ("emotion", "au"):
        raise ReleaseImportError(f"task {task!r}: emotion or au")
    release = read_release(folder)
    mapped = map_release(release)
    base_config = LlavaConfig.from_pretrained(base)
    select = int(release.llava.get("mm_vision_select_layer", base_config.vision_feature_layer))
    if select != base_config.vision_feature_layer:
        raise ReleaseImportError(f"{release.folder / 'config.json'}: mm_vision_select_layer {select} but the base "
                                 f"{base} uses vision_feature_layer {base_config.vision_feature_layer}")
    targets = release.adapter.get("target_modules") or []
    if isinstance(targets, str) or not targets:
        raise ReleaseImportError(f"{release.folder / 'adapter_config.json'}: target_modules must list the adapted "
                                 f"projections, got {targets!r}")
    lora = LoraConfig(r=int(release.adapter["r"]), alpha=int(release.adapter["lora_alpha"]),
                      dropout=float(release.adapter.get("lora_dropout", 0.0)), targets=list(targets),
                      modules_to_save=[])
    model_cfg = ModelConfig(base=base, tiny=None, image_size=base_config.vision_config.image_size,
                            vision_feature_layer=select, vision="clip", prior="landmarks", prior_dim=release.prior_dim,
                            prior_align=False, prior_standardize=False, template="vicuna_v1", dtype=dtype, lora=lora)
    model, processor, config = build_emola(model_cfg, profile="emola-7b", landmark_backend=landmark_backend,
                                           tasks=[task])
    apply_lora(model, lora)
    params = _parameters(model, base_config.text_config.num_hidden_layers, list(targets))
    missing = sorted(set(params) - set(mapped), key=_natural)
    if missing:
        raise ReleaseImportError(f"{release.folder}: {len(missing)} tensor(s) missing: "
                                 f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    extra = sorted(set(mapped) - set(params), key=_natural)
    if extra:
        raise ReleaseImportError(f"{release.folder}: tensor(s) for parts the base does not have: "
                                 f"{', '.join(mapped[t][1] for t in extra[:10])}")
    with torch.no_grad():
        for target, param in params.items():
            tensor, where = mapped[target]
            if tuple(tensor.shape) != tuple(param.shape):
                raise ReleaseImportError(f"{where}: shape {tuple(tensor.shape)} where the model's {target} has "
                                         f"{tuple(param.shape)}")
            param.copy_(tensor.to(param.dtype))
    provenance = {"source": str(release.folder.resolve()), "task": task, "base": base,
                  "files": {name: sha256(release.folder / name) for name in sorted(
                      [*RELEASE_FILES, *([PRIOR_FILE] if (release.folder / PRIOR_FILE).is_file() else [])])},
                  "tensors": len(mapped), "adapter": {k: release.adapter.get(k) for k in
                                                      ("r", "lora_alpha", "lora_dropout", "target_modules")},
                  "llava_config": {k: release.llava.get(k) for k in
                                   ("mm_projector_type", "mm_vision_select_layer", "image_aspect_ratio",
                                    "landmark_feature_hidden_size")}}
    return save_checkpoint(model, processor, config, Path(out), extra_files={PROVENANCE_FILE: provenance})


def _natural(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
