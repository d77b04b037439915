"""A pruned model's structure as data: per module, the shapes of its tensors and the width
attributes that follow them (Conv in/out_channels and groups, Linear in/out_features, ...).
``structure`` records what compaction changed; ``apply_structure`` makes a freshly built,
unpruned model that structure, so a checkpoint rebuilds a compact model from its builder and a
state_dict, without pickling a module."""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from utils.errors import UserError
from utils.transformers import compact_form, derived_widths, is_compact_form_of


def set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace a module's own parameter or buffer (a parameter stays a parameter)."""
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[name] = value


def shapes(module: nn.Module) -> Dict[str, List[int]]:
    """Shapes of a module's own tensors by name; under a torch.nn.utils.prune mask, the tensor's
    own name (``weight``, not ``weight_orig``; the mask buffer is not a tensor of the model)."""
    # named_parameters(recurse=False) and named_buffers(recurse=False), read from the dicts
    # directly: compaction asks for the shapes of every module three times.
    tensors = {}
    for table in (module._parameters, module._buffers):
        seen = set()
        for name, t in table.items():
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                tensors[name] = t
    found = {}
    for name, t in tensors.items():
        if t is None or (name.endswith("_mask") and name[:-5] + "_orig" in tensors):
            continue
        found[name[:-5] if name.endswith("_orig") and name[:-5] + "_mask" in tensors else name] = list(t.shape)
    return found


# Attributes compaction sets, by class: what a checkpoint records and a loader restores.
FOLLOWED_ATTRIBUTES = {
    nn.modules.conv._ConvNd: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._BatchNorm: ("num_features",),
    nn.GroupNorm: ("num_channels", "num_groups"),
    nn.LayerNorm: ("normalized_shape",),
}


def followed_attributes(module: nn.Module) -> Sequence[str]:
    """The width attributes compaction sets on ``module``: torch's layers by class, the
    transformers' modules by utils.transformers.DERIVED_WIDTHS, any other module by its class
    attribute ``width_attributes`` (a zero-padding shortcut's ``extra_channels``)."""
    for cls, names in FOLLOWED_ATTRIBUTES.items():
        if isinstance(module, cls):
            return names
    derived = derived_widths(module)
    if derived is not None:
        return tuple(derived)
    return tuple(getattr(type(module), "width_attributes", ()))


def structure(original: Optional[nn.Module], compact: nn.Module) -> Dict[str, dict]:
    """What compaction changed, per module: its class, its tensors' shapes and followed
    attributes. JSON-able; ``apply_structure`` makes an unpruned model the compact one. With no
    ``original`` (no builder can make the model), every module with tensors or followed
    attributes is recorded."""
    before = dict(original.named_modules()) if original is not None else None
    changed = {}
    for name, module in compact.named_modules():
        new_shapes = shapes(module)
        if before is None:
            attributes = {a: _plain(getattr(module, a)) for a in followed_attributes(module)}
            if new_shapes or attributes:
                changed[name] = {"type": type(module).__name__, "shapes": new_shapes,
                                 "attributes": attributes}
            continue
        old = before.get(name)
        if old is None:
            continue
        attributes = {a: _plain(getattr(module, a)) for a in followed_attributes(module)}
        # (an attribute only the compact form has, such as Swin's recorded head width, is None)
        old_attributes = {a: _plain(getattr(old, a, None)) for a in followed_attributes(old)}
        if new_shapes != shapes(old) or attributes != old_attributes or type(module) is not type(old):
            # The shapes before too: a loader checks that it shrinks the model this was pruned
            # from, not one that merely takes the new shapes.
            changed[name] = {"type": type(module).__name__, "shapes": new_shapes,
                             "attributes": attributes, "original_shapes": shapes(old)}
    return changed


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@torch.no_grad()
def apply_structure(model: nn.Module, changes: Dict[str, dict], source: str = "the checkpoint") -> nn.Module:
    """Shrink ``model`` (unpruned, freshly built) in place to the structure ``changes`` records:
    new empty tensors of the recorded shapes (a state_dict fills them) and the recorded
    attributes; a module recorded in its compact form (utils/transformers.py: pruned attention)
    takes that class. A structure that does not fit the model is one UserError."""
    modules = dict(model.named_modules())
    for name, change in changes.items():
        module = modules.get(name)
        if module is not None and is_compact_form_of(change.get("type"), module):
            module.__class__ = compact_form(module)
        if module is None or type(module).__name__ != change.get("type"):
            found = "nothing" if module is None else type(module).__name__
            raise UserError(f"{source} records a pruned {change.get('type')} at {name or 'the root'}, "
                            f"but the model built from it has {found} there: the file does not "
                            "belong to this model")
        current = shapes(module)
        original = change.get("original_shapes")
        if original is not None and current != original:
            raise UserError(f"{source}: {name} was pruned from shapes {original}, but the model "
                            f"built for it has {current}: the file does not belong to this model")
        for tensor, shape in change.get("shapes", {}).items():
            if tensor not in current or len(current[tensor]) != len(shape):
                raise UserError(f"{source}: {name}.{tensor} has shape {shape}, which the model "
                                f"built from it cannot take ({current.get(tensor)})")
            if current[tensor] != shape:
                old = getattr(module, tensor)
                set_tensor(module, tensor, torch.zeros(shape, dtype=old.dtype, device=old.device))
        for attribute, value in change.get("attributes", {}).items():
            if attribute not in followed_attributes(module):
                raise UserError(f"{source}: {name} records attribute {attribute}, which the "
                                f"toolkit does not set on a {type(module).__name__}")
            setattr(module, attribute, tuple(value) if isinstance(value, list) else value)
    return model
