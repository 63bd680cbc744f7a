"""Self-describing EmoLA checkpoints: one folder, safetensors and JSON only.

Layout::

    emola_config.json          what the checkpoint is (EmolaModelConfig)
    adapter/                   peft LoRA adapter (adapter_model.safetensors, adapter_config.json);
                               absent in a merged export
    projectors.safetensors     vision projector (vision_projector.*) and prior projector (prior_projector.*)
    readout.safetensors        the readout head (AU and emotion probabilities), when it was trained
    base/                      the HF LLaVA base (config.json, model.safetensors) when it cannot be
                               referenced: a random-init ``tiny`` base, or a merged export
    tokenizer/, processor/     tokenizer, image processor and prompt settings

Loading reads ``emola_config.json`` and the files above; it never depends on the folder's
name. Saving writes into a temporary sibling folder and renames it into place.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from peft import PeftModel
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration

from emola.fileio import replace_dir
from emola.model.configuration import EmolaModelConfig
from emola.model.lora import trainable_projectors
from emola.model.modeling import EmolaForConditionalGeneration
from emola.model.prior_projector import PriorProjector
from emola.model.processing import EmolaProcessor
from emola.model.readout import ReadoutHead

PROJECTORS_FILE = "projectors.safetensors"
READOUT_FILE = "readout.safetensors"


def _projector_state(model: EmolaForConditionalGeneration) -> dict[str, torch.Tensor]:
    state = {f"vision_projector.{k}": v for k, v in model.base_llava.model.multi_modal_projector.state_dict().items()}
    if model.prior_projector is not None:
        state.update({f"prior_projector.{k}": v for k, v in model.prior_projector.state_dict().items()})
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _unloaded_llava(model: EmolaForConditionalGeneration, merge: bool) -> LlavaForConditionalGeneration:
    """A copy of the LLaVA base: LoRA merged into the weights, or removed.

    Removing keeps the *original* weights of fully trained modules (``modules_to_save``):
    peft's ``unload`` would put the trained copies in their place, and the adapter holds
    those already.
    """
    llava = copy.deepcopy(model.llava)
    if not isinstance(llava, PeftModel):
        return llava
    if merge:
        return llava.merge_and_unload()
    prefix = "base_model.model."
    originals = {name.removeprefix(prefix): module.original_module
                 for name, module in llava.named_modules() if isinstance(module, ModulesToSaveWrapper)}
    base = llava.unload()
    for name, original in originals.items():
        base.set_submodule(name, original)
    return base


def save_checkpoint(model: EmolaForConditionalGeneration, processor: EmolaProcessor, config: EmolaModelConfig,
                    directory: Path | str, *, merge: bool = False, extra_files: dict[str, dict] | None = None) -> Path:
    """Write a checkpoint (or, with ``merge=True``, a merged full model) to ``directory``.

    ``extra_files``: JSON records written beside it in the same atomic step (e.g. an
    import's ``provenance.json``).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.partial-"))
    try:
        readout = model.readout
        config = config.model_copy(update={"merged": merge, "readout": None if readout is None else readout.spec()})
        config.save(staging)
        processor.save(staging)
        save_file(_projector_state(model), staging / PROJECTORS_FILE)
        if readout is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in readout.state_dict().items()},
                      staging / READOUT_FILE)
        if not merge and isinstance(model.llava, PeftModel):
            model.llava.save_pretrained(staging / "adapter", safe_serialization=True)
        if merge or config.base is None:
            _unloaded_llava(model, merge).save_pretrained(staging / "base", safe_serialization=True)
        for name, record in (extra_files or {}).items():
            (staging / name).write_text(json.dumps(record, indent=2) + "\n")
        replace_dir(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def load_checkpoint(directory: Path | str, *, dtype: torch.dtype | None = None, trainable: bool = False,
                    ) -> tuple[EmolaForConditionalGeneration, EmolaProcessor, EmolaModelConfig]:
    """Load a checkpoint saved by :func:`save_checkpoint` (in eval mode unless ``trainable``)."""
    directory = Path(directory)
    config = EmolaModelConfig.load(directory)
    processor = EmolaProcessor.load(directory)
    source = directory / "base" if (directory / "base").is_dir() else config.base
    if source is None:
        raise FileNotFoundError(f"{directory}: the base model is neither embedded (base/) nor referenced")
    llava = LlavaForConditionalGeneration.from_pretrained(source, **({"dtype": dtype} if dtype else {}))
    if llava.get_input_embeddings().num_embeddings < len(processor.tokenizer):
        llava.resize_token_embeddings(len(processor.tokenizer))
    hidden = llava.config.text_config.hidden_size
    projector = (PriorProjector(config.prior_dim, hidden, align=config.prior_align).to(llava.dtype)
                 if config.prior == "landmarks" else None)
    model = EmolaForConditionalGeneration(llava, projector, processor.image_token_id, processor.prior_token_id)

    state = load_file(directory / PROJECTORS_FILE)
    vision = {k.removeprefix("vision_projector."): v for k, v in state.items() if k.startswith("vision_projector.")}
    model.base_llava.model.multi_modal_projector.load_state_dict(vision, strict=True)
    if projector is not None:
        projector.load_state_dict({k.removeprefix("prior_projector."): v for k, v in state.items()
                                   if k.startswith("prior_projector.")}, strict=True)
    if config.readout is not None:
        spec = config.readout
        model.readout = ReadoutHead(spec["hidden"], spec["aus"], spec["emotions"]).to(llava.dtype)
        model.readout.load_state_dict(load_file(directory / READOUT_FILE), strict=True)
    if (directory / "adapter").is_dir():
        with warnings.catch_warnings():   # peft probes transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            model.llava = PeftModel.from_pretrained(llava, directory / "adapter", is_trainable=trainable)
        if trainable:
            for module in trainable_projectors(model):
                module.requires_grad_(True)
    model.train(trainable)
    return model, processor, config
