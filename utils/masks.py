"""Pruning masks, one home for them: torch.nn.utils.prune holds a pruned tensor as ``<t>_orig``
times the 0/1 buffer ``<t>_mask`` through a forward pre-hook, so a pruned entry is zero in every
forward pass whatever an optimizer does to ``<t>_orig``. Here: reading a model's masks, putting
masks from a checkpoint back on a model (so further training keeps pruned weights at zero), the
plain state_dict a checkpoint stores, and making masks permanent for inference.

Pruned entries are stored and left as +0.0: ``orig * mask`` gives -0.0 where ``orig`` was
negative, which a sign-blind comparison cannot tell from +0.0 but a file round trip would change.
"""
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from utils.errors import UserError
from utils.module_copy import deepcopy_modules

_ORIG, _MASK = "_orig", "_mask"


def masked_tensors(model: nn.Module) -> Iterator[Tuple[str, nn.Module, str]]:
    """(state_dict key, module, tensor name) of every tensor under a torch.nn.utils.prune mask."""
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module._buffers.items():  # named_buffers(recurse=False)
            if buffer is not None and buffer_name.endswith(_MASK) and hasattr(
                    module, buffer_name[:-len(_MASK)] + _ORIG):
                tensor = buffer_name[:-len(_MASK)]
                yield (f"{module_name}.{tensor}" if module_name else tensor), module, tensor


def mask_of(module: nn.Module, tensor: str = "weight") -> Optional[torch.Tensor]:
    """The 0/1 mask torch.nn.utils.prune holds on ``module.<tensor>``, or None when unmasked."""
    if hasattr(module, tensor + _ORIG):
        return getattr(module, tensor + _MASK, None)
    return None


def trained_tensor(module: nn.Module, tensor: str = "weight") -> torch.Tensor:
    """The parameter an optimizer updates for ``module.<tensor>``: ``<tensor>_orig`` behind a
    mask, else the tensor itself."""
    return getattr(module, tensor + _ORIG) if hasattr(module, tensor + _ORIG) else getattr(module, tensor)


def masked_value(model: nn.Module, parameter_name: str, parameter: torch.Tensor) -> torch.Tensor:
    """What the model computes with for one of its named_parameters: ``<t>_orig`` times its mask
    for a masked tensor's original, the parameter itself otherwise."""
    if not parameter_name.endswith(_ORIG):
        return parameter
    module_name, _, tensor = parameter_name[:-len(_ORIG)].rpartition(".")
    mask = mask_of(model.get_submodule(module_name) if module_name else model, tensor)
    return parameter if mask is None else parameter * mask


def current_masks(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Boolean keep-masks by state_dict key (``fc1.weight``) of every masked tensor."""
    return {key: getattr(module, tensor + _MASK).detach().bool().cpu()
            for key, module, tensor in masked_tensors(model)}


def plain_state_dict(model: nn.Module) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(state_dict with every masked tensor folded back under its own name, pruned entries +0.0;
    the masks). The state loads into a fresh model of the same architecture."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    masks = {}
    for key, _, _ in masked_tensors(model):
        keep = state.pop(key + _MASK).bool()
        orig = state.pop(key + _ORIG)
        state[key] = torch.where(keep, orig, torch.zeros_like(orig))
        masks[key] = keep
    return state, masks


def apply_masks(model: nn.Module, masks: Dict[str, torch.Tensor]) -> nn.Module:
    """Put ``masks`` (by state_dict key) on ``model`` through torch.nn.utils.prune; a tensor that
    is masked already gets the product (masks only grow)."""
    for key, mask in masks.items():
        module_name, _, tensor = key.rpartition(".")
        try:
            module = model.get_submodule(module_name) if module_name else model
            target = getattr(module, tensor)
        except AttributeError:
            raise UserError(f"a mask names {key}, which {type(model).__name__} does not have")
        if target is None or tuple(target.shape) != tuple(mask.shape):
            raise UserError(f"the mask of {key} has shape {tuple(mask.shape)}, the tensor "
                            f"{None if target is None else tuple(target.shape)}")
        prune.custom_from_mask(module, tensor, mask.to(device=target.device, dtype=target.dtype))
    return model


def detached_copy(model: nn.Module, replace: Optional[Dict[int, torch.Tensor]] = None) -> nn.Module:
    """copy.deepcopy of a model whose masked weights may still hold the autograd graph of the
    last training step (torch.nn.utils.prune caches ``weight = weight_orig * mask`` on the
    module; deepcopy refuses non-leaf tensors): the cache is recomputed without it first.
    ``replace``: id(tensor) -> what the copy holds in its place (deepcopy's memo)."""
    with torch.no_grad():
        for _, module, tensor in masked_tensors(model):
            setattr(module, tensor, getattr(module, tensor + _ORIG) * getattr(module, tensor + _MASK))
    return deepcopy_modules(model, dict(replace or {}))


@torch.no_grad()
def make_permanent(model: nn.Module) -> nn.Module:
    """Remove every mask, leaving plain parameters with pruned entries at +0.0 (for inference,
    export and sparse kernels: no pre-hook multiplies on every forward pass)."""
    for _, module, tensor in list(masked_tensors(model)):
        keep = getattr(module, tensor + _MASK).bool()
        prune.remove(module, tensor)
        getattr(module, tensor).masked_fill_(~keep, 0.0)
    return model


# ---- normalisation over kept channels -------------------------------------------------------

class MaskedNormalization:
    """Forward hook of a LayerNorm-like module: normalises dimension ``dim`` of its input over
    the kept channels only, as the compact model's smaller LayerNorm will; removed channels
    output zero. torch's layer_norm has no mask argument, hence the recomputation."""

    def __init__(self, dim: int, keep: torch.Tensor):
        self.dim = dim
        self.keep = keep.bool()

    def __call__(self, module: nn.Module, inputs, output):
        x = inputs[0].movedim(self.dim, -1)
        keep = self.keep.to(device=x.device, dtype=x.dtype)
        count = keep.sum()
        mean = (x * keep).sum(-1, keepdim=True) / count
        var = (((x - mean) * keep) ** 2).sum(-1, keepdim=True) / count
        y = (x - mean) * torch.rsqrt(var + module.eps)
        if getattr(module, "weight", None) is not None:
            y = y * module.weight
        if getattr(module, "bias", None) is not None:
            y = y + module.bias
        return (y * keep).movedim(-1, self.dim)


def normalization_masks(model: nn.Module) -> Dict[str, dict]:
    """Module name -> {"dim", "keep" list} of every masked normalisation (what a checkpoint records)."""
    found = {}
    for name, module in model.named_modules():
        for hook in module._forward_hooks.values():
            if isinstance(hook, MaskedNormalization):
                found[name] = {"dim": hook.dim, "keep": hook.keep.tolist()}
    return found


def set_normalization_mask(module: nn.Module, dim: int, keep: Optional[Sequence[bool]]) -> None:
    """Replace ``module``'s masked normalisation (None: remove it)."""
    for key, hook in list(module._forward_hooks.items()):
        if isinstance(hook, MaskedNormalization):
            del module._forward_hooks[key]
    if keep is not None and not all(keep):
        module.register_forward_hook(MaskedNormalization(dim, torch.tensor(list(keep))))
