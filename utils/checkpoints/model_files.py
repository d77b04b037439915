"""Saving and loading any model, masked or compact, without pickling a module.

    save_model(small, "mobilenet_pruned.pt", builder="torchvision.models.mobilenet_v2",
               builder_kwargs={"num_classes": 10}, accuracy=0.91)
    model = load_model("mobilenet_pruned.pt")   # built, shrunk and filled from the file alone

A file holds one dict, read with torch.load(weights_only=True): how to build the unpruned model
(``builder``: a registered model's config, a torchvision builder ``torchvision.models.<name>``,
or an importable ``package.module:function``, with JSON-able keyword arguments), the structure
compaction left (utils/structure.py: per module, tensor shapes and width attributes), the
state_dict with its pruning masks (bitmask + values, sparse_format.py), the masked
normalisations, and the caller's metadata. A model no builder can make is saved without one (every
module's shapes are recorded) and loaded by passing an unpruned instance:
``load_model(path, model=MyNet())``.
"""
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn

from utils.checkpoints.builders import build, builder_spec
from utils.checkpoints.sparse_format import DamagedTensor, decode_state_dict, encode_state_dict
from utils.checkpoints.store import build_model, load_checkpoint, plain, read_file
from utils.errors import UserError
from utils.files import atomic_write
from utils.masks import apply_masks, normalization_masks, plain_state_dict, set_normalization_mask
from utils.structure import apply_structure, structure

FORMAT = "model-1"

def save_model(model: nn.Module, path, builder=None, builder_kwargs: Optional[dict] = None,
               **metadata) -> Path:
    """Write ``model`` (unpruned, masked or compact) to ``path`` atomically; see the module
    docstring. The builder is called once here, to record what differs from the model it
    builds."""
    spec = builder_spec(model, builder, builder_kwargs)
    changes = structure(build(spec) if spec is not None else None, model)
    state, masks = plain_state_dict(model)
    checkpoint = {
        "format": FORMAT, "builder": plain(spec), "structure": plain(changes),
        "state_dict": encode_state_dict(state, masks, sparse=False),
        "normalization_masks": plain(normalization_masks(model)),
        "metadata": plain(metadata), "torch_version": str(torch.__version__),
    }
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(checkpoint, f)
    return path


def load_model(path, model: Optional[nn.Module] = None) -> nn.Module:
    """The model a file written by ``save_model`` holds: built by its builder (or ``model``,
    an unpruned instance, when given), shrunk to the recorded structure, weights, masks and
    masked normalisations in place. A file that does not fit is one UserError."""
    path = Path(path)
    checkpoint = read_file(path)
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not a model file of this toolkit (not a dict)")
    if checkpoint.get("format") != FORMAT and "config" in checkpoint and model is None:
        # A checkpoint of baseline.py or pruning.py: one loader for both kinds of file.
        loaded = load_checkpoint(str(path))
        scripted = build_model(loaded)
        scripted.saved_metadata = {"metrics": loaded.get("metrics", {}), "dataset": loaded.get("dataset")}
        return scripted
    if checkpoint.get("format") != FORMAT:
        raise UserError(f"{path} was not written by save_model (no builder and structure in it)"
                        + ("; a checkpoint of the scripts loads without model=" if "config" in checkpoint else ""))
    if model is None and checkpoint.get("builder") is None:
        raise UserError(f"{path} was saved without a builder: pass an unpruned instance, "
                        "load_model(path, model=YourNet(...))")
    model = model if model is not None else build(checkpoint["builder"])
    apply_structure(model, checkpoint.get("structure", {}), source=str(path))
    try:
        state, masks = decode_state_dict(checkpoint["state_dict"])
    except DamagedTensor as exc:
        raise UserError(f"{path} is damaged: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"{path}: its tensors do not fit the model built from it: {detail}") from None
    if masks:
        apply_masks(model, masks)
    for name, mask in checkpoint.get("normalization_masks", {}).items():
        set_normalization_mask(model.get_submodule(name), mask["dim"], mask["keep"])
    model.saved_metadata = dict(checkpoint.get("metadata", {}))
    return model


def metadata_of(path) -> Dict:
    return dict(read_file(Path(path)).get("metadata", {}))
