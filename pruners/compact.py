"""Physical removal of channels by surgery on any nn.Module, and the masked model it must equal.

``compact_model`` works on a copy of the module tree: every tensor dimension the dependency graph
recorded (pruners/graph) loses the removed channels' indices (the rows of the layers that write
them, their normalisation entries, the columns of every layer that reads them, a flattened
channel's H x W block of columns, a layer scale's entries), and each module's attributes follow
its new tensors (``follow_tensors``: Conv in/out_channels and groups, Linear in/out_features,
BatchNorm num_features, GroupNorm num_channels and num_groups, LayerNorm normalized_shape). A
module of another class whose integer attribute still holds a width that changed is refused by
name: it might be read in forward(), and a stale width would compute something else.

The masked model is the same function (``zero_channels``, ``channel_masks``,
``mask_normalizations``): a removed channel is zero in every tensor that writes it, BatchNorm's
scale and shift included, and a LayerNorm whose statistics span channels normalises over the
kept ones only (a forward hook), so masked and compact models agree for every group and soft
pruning trains what will be deployed. ``structure`` records what compaction changed (per module,
tensor shapes and attributes) so that a checkpoint rebuilds the compact model from the unpruned
one (``apply_structure``) without pickling a module.
"""
from typing import Dict, Iterable, List, Optional, Sequence, Set

import torch
import torch.nn as nn

from pruners.graph import DependencyGraph, Group, build_graph
from utils.errors import UnsupportedOperation, UserError
from utils.masks import (MaskedNormalization, detached_copy, make_permanent,  # noqa: F401
                         normalization_masks, set_normalization_mask)
from utils.structure import (apply_structure, followed_attributes, set_tensor,  # noqa: F401
                             shapes as _shapes, structure)
from utils.transformers import derived_widths, follow_widths

# BatchNorm's running statistics describe the channel, they do not compute it: a zeroed channel
# keeps them (its scale and shift are zero, so its output is zero whatever they are).
_STATISTICS = ("running_mean", "running_var")


def pruned_sets(graph: DependencyGraph, pruned: Dict[str, Sequence[int]]) -> Set[int]:
    """Channel sets named by group name -> positions within the group. Positions must cover
    whole units (a grouped convolution's group, a GroupNorm group)."""
    sets: Set[int] = set()
    for name, positions in pruned.items():
        try:
            group = graph.group(name)
        except KeyError:
            raise ValueError(f"no channel group named {name!r}; the groups are "
                             f"{', '.join(g.name for g in graph.groups)}") from None
        positions = sorted(set(int(p) for p in positions))
        if not positions:
            continue
        if group.fixed:
            raise ValueError(f"{name} holds {group.reason}; its channels cannot be removed")
        if positions[0] < 0 or positions[-1] >= len(group):
            raise ValueError(f"{name} has {len(group)} channels; cannot remove {positions}")
        if len(positions) >= len(group):
            raise ValueError(f"removing all {len(group)} channels of {name} would disconnect the model")
        chosen = set(positions)
        for unit in group.units:
            if chosen & set(unit) and not set(unit) <= chosen:
                raise ValueError(f"{name}'s channels leave in units of {len(unit)} (a grouped "
                                 f"convolution's or GroupNorm's groups); {positions} splits {unit}")
        sets.update(group.sets[p] for p in positions)
    return sets


# ---- the masked model --------------------------------------------------------------------------

def tensor_at(model: nn.Module, key: str) -> torch.Tensor:
    """The tensor a state_dict key names; under a torch.nn.utils.prune mask, the original that
    training updates."""
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if hasattr(module, name + "_orig"):
        return getattr(module, name + "_orig")
    return getattr(module, name)


def writer_tensors(model: nn.Module, graph: DependencyGraph, sets: Set[int]):
    """(key, tensor, dim, positions) of every computing tensor that writes one of ``sets``."""
    for use in graph.uses:
        if not use.writes or use.key.rsplit(".", 1)[-1] in _STATISTICS:
            continue
        positions = [p for p, s in enumerate(use.sets) if s in sets]
        if positions:
            yield use.key, tensor_at(model, use.key), use.dim, positions


@torch.no_grad()
def zero_channels(model: nn.Module, graph: DependencyGraph, sets: Set[int]) -> None:
    """Zero every computing tensor entry of ``sets``: conv/linear rows and biases, normalisation
    scales and shifts, layer scales; and normalise over the kept channels where statistics span
    channels."""
    for _, tensor, dim, positions in writer_tensors(model, graph, sets):
        tensor.index_fill_(dim, torch.tensor(positions, device=tensor.device), 0.0)
    mask_normalizations(model, graph, sets)


def channel_masks(model: nn.Module, graph: DependencyGraph, sets: Set[int]) -> Dict[str, torch.Tensor]:
    """0/1 keep-masks (by state_dict key) that hold ``sets`` at zero, for torch.nn.utils.prune."""
    masks = {}
    for key, tensor, dim, positions in writer_tensors(model, graph, sets):
        mask = masks.get(key, torch.ones_like(tensor, dtype=torch.bool))
        mask.index_fill_(dim, torch.tensor(positions, device=tensor.device), False)
        masks[key] = mask
    return masks


def mask_normalizations(model: nn.Module, graph: DependencyGraph, sets: Set[int]) -> None:
    """Every normalisation whose statistics span a channel of ``sets`` normalises over the kept
    channels only (sets accumulate: a channel once masked stays out)."""
    for norm in graph.normalizations:
        module = model.get_submodule(norm.module)
        current = normalization_masks(module).get("")
        keep = current["keep"] if current else [True] * len(norm.sets)
        keep = [k and s not in sets for k, s in zip(keep, norm.sets)]
        set_normalization_mask(module, norm.dim, keep)


def clear_normalization_masks(model: nn.Module) -> None:
    for module in model.modules():
        set_normalization_mask(module, 0, None)


# ---- criteria's view of a group ------------------------------------------------------------------

def group_rows(model: nn.Module, graph: DependencyGraph, group: Group) -> torch.Tensor:
    """One row per channel set of ``group``: the filters of every conv or linear layer that
    writes it, concatenated (weights only, as FPGM compares filters). Every set of a group has
    the same writers, so the rows have one length; with one writer they are its filters.
    (``endswith("weight")``: nn.MultiheadAttention's packed projection is ``in_proj_weight``.)"""
    parts = []
    for use in graph.uses:
        if not (use.writes and use.key.endswith("weight") and use.layer in group.writers
                and use.dim == 0):
            continue
        where = {s: p for p, s in enumerate(use.sets)}
        if not all(s in where for s in group.sets):
            continue
        tensor = tensor_at(model, use.key).detach()
        rows = tensor.index_select(0, torch.tensor([where[s] for s in group.sets], device=tensor.device))
        parts.append(rows.flatten(1).to(parts[0].device if parts else rows.device))
    return torch.cat(parts, dim=1)


# ---- surgery ---------------------------------------------------------------------------------------

def follow_tensors(name: str, module: nn.Module, before: Dict[str, List[int]],
                   normalized: Optional[int] = None) -> None:
    """Set ``module``'s width attributes from its new tensors (``before``: the old shapes;
    ``normalized``: the kept channels of a normalisation that has no affine tensors). Anything
    else holding an old width is refused."""
    after = _shapes(module)
    if isinstance(module, nn.modules.conv._ConvNd):
        old_out, new_out = before["weight"][0], after["weight"][0]
        groups = module.groups
        if groups > 1:
            per_group_out = old_out // groups
            if new_out % per_group_out:
                raise UnsupportedOperation(f"{name}: removing {old_out - new_out} of {old_out} "
                                           f"channels splits a group of {per_group_out}")
            groups = new_out // per_group_out
        module.out_channels, module.groups = new_out, groups
        module.in_channels = after["weight"][1] * groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = after["weight"]
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = (after.get("running_mean") or after["weight"])[0]
    elif isinstance(module, nn.GroupNorm):
        kept = after["weight"][0] if "weight" in after else normalized
        per_group = module.num_channels // module.num_groups
        if kept % per_group:
            raise UnsupportedOperation(f"{name}: {kept} channels do not fill groups of {per_group}")
        module.num_channels, module.num_groups = kept, kept // per_group
    elif isinstance(module, nn.LayerNorm):
        kept = after["weight"][0] if "weight" in after else normalized
        module.normalized_shape = (kept,)
    elif derived_widths(module) is not None:
        pass  # a transformer's module: its widths follow in compact_model (follow_widths)
    else:
        changed = {before[t][d] for t in after for d in range(len(after[t]))
                   if after[t][d] != before[t][d]}
        stale = [attr for attr, value in vars(module).items()
                 if not attr.startswith("_") and type(value) is int and value in changed]
        if stale:
            raise UnsupportedOperation(
                f"{name} ({type(module).__name__}) holds {', '.join(stale)} = "
                f"{', '.join(str(getattr(module, a)) for a in stale)}, a width that compaction "
                "changes; the toolkit cannot tell whether forward() reads it, so it refuses to "
                "leave it stale (add the class to pruners.compact.FOLLOWED_ATTRIBUTES with how it "
                "follows)")


@torch.no_grad()
def compact_model(model: nn.Module, pruned: Dict[str, Sequence[int]],
                  graph: Optional[DependencyGraph] = None, example_inputs=None) -> nn.Module:
    """A smaller copy of ``model`` without the channels ``pruned`` names (group name ->
    positions within the group), holding the kept weights; ``model`` is left as it is. For the
    two to compute the same function those channels must already be zero in ``model``
    (``zero_channels``). The copy has no pruning masks and no masked normalisations: its
    removed channels are gone."""
    graph = graph or build_graph(model, example_inputs if example_inputs is not None
                                 else model.input_shape)
    gone = pruned_sets(graph, pruned)
    small = make_permanent(detached_copy(model))
    clear_normalization_masks(small)
    modules = dict(small.named_modules())
    before = {name: _shapes(module) for name, module in modules.items()}
    for use in graph.uses:
        module_name, _, tensor_name = use.key.rpartition(".")
        module = modules[module_name]
        tensor = getattr(module, tensor_name)
        positions = [p for p, s in enumerate(use.sets) if s not in gone]
        if len(positions) == tensor.shape[use.dim]:
            continue
        index = torch.tensor(positions, dtype=torch.long, device=tensor.device)
        set_tensor(module, tensor_name, tensor.index_select(use.dim, index).clone())
    normalized = {n.module: sum(s not in gone for s in n.sets) for n in graph.normalizations}
    for name, module in modules.items():
        if _shapes(module) != before[name] or (
                name in normalized and normalized[name] != len(
                    next(n.sets for n in graph.normalizations if n.module == name))):
            follow_tensors(name or type(model).__name__, module, before[name], normalized.get(name))
    # Attention and the transformers' containers hold widths their children's tensors set (a
    # pruned head lives in ``qkv``, the stream in every block): they follow when anything
    # under them changed, and pruned attention takes its compact form (utils/transformers.py).
    changed = [name for name, module in modules.items() if _shapes(module) != before[name]]
    for name, module in modules.items():
        if derived_widths(module) is not None and any(
                name == "" or c == name or c.startswith(name + ".") for c in changed):
            follow_widths(module)
    for size in graph.sizes:
        setattr(modules[size.module], size.attribute, sum(s not in gone for s in size.sets))
    if hasattr(small, "width_groups") and hasattr(small, "widths"):
        small.widths = tuple(sum(1 for s in graph.group_at(layer, channel).sets if s not in gone)
                             for layer, channel in small.width_groups())
    small.train(model.training)
    return small


def max_relative_difference(masked: nn.Module, compact: nn.Module, inputs: Iterable) -> float:
    """The largest |masked - compact| over the outputs, relative to the largest |masked|: the
    evidence, on every removal, that the compact model computes what the masked one does."""
    from utils.modes import eval_mode
    with torch.no_grad(), eval_mode(masked, compact):
        a, b = masked(*inputs), compact(*inputs)
    pairs = list(zip(_tensors(a), _tensors(b)))
    if not pairs:
        return 0.0
    scale = max(float(x.abs().max()) for x, _ in pairs) or 1.0
    return max(float((x - y).abs().max()) for x, y in pairs) / scale


def _tensors(output) -> List[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    return []

