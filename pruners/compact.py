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
import itertools
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn

from pruners.graph import DependencyGraph, Group, build_graph
from utils.errors import UnsupportedOperation, UserError
from utils.gc_pause import gc_paused
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
        for unit in group.units if len(group.units) != len(group) else ():  # coupled channels
            if len(unit) > 1 and chosen & set(unit) and not set(unit) <= chosen:
                raise ValueError(f"{name}'s channels leave in units of {len(unit)} (a grouped "
                                 f"convolution's or GroupNorm's groups); {positions} splits {unit}")
        if group.blocks:  # every head keeps one width
            per_block = {sum(1 for u in block for p in group.units[u] if p in chosen)
                         for block in group.blocks}
            if len(per_block) > 1:
                raise ValueError(f"{name}'s heads must each lose as many channels (they share one "
                                 f"width); {positions} takes {sorted(per_block)} from different heads")
        sets.update(group.sets[p] for p in positions)
    return sets


# ---- the masked model --------------------------------------------------------------------------

def tensor_at(model: nn.Module, key: str, modules: Optional[Dict[str, nn.Module]] = None
              ) -> torch.Tensor:
    """The tensor a state_dict key names; under a torch.nn.utils.prune mask, the original that
    training updates. ``modules``: ``dict(model.named_modules())``, for many lookups."""
    module_name, _, name = key.rpartition(".")
    module = (modules[module_name] if modules is not None
              else model.get_submodule(module_name) if module_name else model)
    if hasattr(module, name + "_orig"):
        return getattr(module, name + "_orig")
    return getattr(module, name)


def writer_tensors(model: nn.Module, graph: DependencyGraph, sets: Set[int]):
    """(key, tensor, dim, positions) of every computing tensor that writes one of ``sets``
    (positions: a LongTensor on the tensor's device)."""
    chosen = graph.set_mask(sets)
    modules = dict(model.named_modules())
    for use in graph.uses:
        if not use.writes or use.key.rsplit(".", 1)[-1] in _STATISTICS:
            continue
        positions = graph.positions(use, chosen)
        if len(positions):
            tensor = tensor_at(model, use.key, modules)
            yield use.key, tensor, use.dim, positions.to(tensor.device)


@torch.no_grad()
def zero_channels(model: nn.Module, graph: DependencyGraph, sets: Set[int]) -> None:
    """Zero every computing tensor entry of ``sets``: conv/linear rows and biases, normalisation
    scales and shifts, layer scales; and normalise over the kept channels where statistics span
    channels."""
    for _, tensor, dim, positions in writer_tensors(model, graph, sets):
        tensor.index_fill_(dim, positions, 0.0)
    mask_normalizations(model, graph, sets)


def channel_masks(model: nn.Module, graph: DependencyGraph, sets: Set[int]) -> Dict[str, torch.Tensor]:
    """0/1 keep-masks (by state_dict key) that hold ``sets`` at zero, for torch.nn.utils.prune."""
    masks = {}
    for key, tensor, dim, positions in writer_tensors(model, graph, sets):
        mask = masks.get(key, torch.ones_like(tensor, dtype=torch.bool))
        mask.index_fill_(dim, positions, False)
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
    writes it, concatenated (weights only, as FPGM compares filters); with one writer they are
    its filters. A writer of only some of the sets (a group merged because its units span a
    chunk's halves) contributes zeros for the others, so every row has one length.
    (``endswith("weight")``: nn.MultiheadAttention's packed projection is ``in_proj_weight``.)"""
    parts, fresh = [], True
    for use in graph.uses_of(group.writers):
        if not (use.writes and use.key.endswith("weight") and use.dim == 0):
            continue
        tensor = tensor_at(model, use.key).detach()
        if use.sets == group.sets:  # the writer's rows in the group's order: no gather needed
            rows, fresh = tensor.flatten(1), False
        else:
            where = {s: p for p, s in enumerate(use.sets)}
            present = [p for p, s in enumerate(group.sets) if s in where]
            if not present:
                continue
            taken = tensor.index_select(0, torch.tensor([where[group.sets[p]] for p in present],
                                                        device=tensor.device)).flatten(1)
            if len(present) == len(group.sets):
                rows = taken
            else:
                rows = taken.new_zeros(len(group.sets), taken.shape[1])
                rows[torch.tensor(present, device=rows.device)] = taken
        parts.append(rows.to(parts[0].device if parts else rows.device))
    if len(parts) == 1:
        # A new tensor either way (a criterion may work on it in place), copied only once.
        return parts[0] if fresh else parts[0].clone()
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


@gc_paused()
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
    kept = graph.set_mask(gone).logical_not()
    cuts: Dict[str, List[Tuple[int, torch.Tensor]]] = {}  # key -> (dim, kept positions) per cut
    for use in graph.uses:
        positions = graph.positions(use, kept)
        if len(positions) != len(use.sets):
            cuts.setdefault(use.key, []).append((use.dim, positions))
    originals = dict(model.named_modules())
    before = {name: _shapes(module) for name, module in originals.items()}
    smaller = _smaller_tensors(model, cuts)
    small = make_permanent(detached_copy(model, replace=smaller))
    clear_normalization_masks(small)
    modules = dict(small.named_modules())
    already_cut = {id(t) for t in smaller.values()}
    for key, dims in cuts.items():
        module_name, _, tensor_name = key.rpartition(".")
        module = modules[module_name]
        tensor = getattr(module, tensor_name)
        if id(tensor) in already_cut:
            continue  # the copy was made with it
        cut = _cut(tensor, dims)
        if cut is not tensor:
            set_tensor(module, tensor_name, cut)
    normalized = {n.module: sum(s not in gone for s in n.sets) for n in graph.normalizations}
    changed = {name for name, module in modules.items() if _shapes(module) != before[name]}
    for name, module in modules.items():
        if name in changed or (
                name in normalized and normalized[name] != len(
                    next(n.sets for n in graph.normalizations if n.module == name))):
            follow_tensors(name or type(model).__name__, module, before[name], normalized.get(name))
    # Attention and the transformers' containers hold widths their children's tensors set (a
    # pruned head lives in ``qkv``, the stream in every block): they follow when anything
    # under them changed, and pruned attention takes its compact form (utils/transformers.py).
    for size in graph.sizes:  # first: a head count set here is a width the next loop records
        setattr(modules[size.module], size.attribute, sum(s not in gone for s in size.sets))
    for name, module in modules.items():
        if derived_widths(module) is not None and any(
                name == "" or c == name or c.startswith(name + ".") for c in changed):
            follow_widths(module, originals[name])
    if hasattr(small, "width_groups") and hasattr(small, "widths"):
        small.widths = tuple(sum(1 for s in graph.group_at(layer, channel).sets if s not in gone)
                             for layer, channel in small.width_groups())
    return small  # in the modes ``model``'s modules are in: the copy has their flags


def _cut(tensor: torch.Tensor, dims: List[Tuple[int, torch.Tensor]]) -> torch.Tensor:
    """``tensor`` keeping only ``positions`` along each ``dim`` (itself when nothing goes)."""
    for dim, positions in dims:
        if len(positions) != tensor.shape[dim]:
            tensor = tensor.index_select(dim, positions.to(tensor.device))
    return tensor


def _smaller_tensors(model: nn.Module, cuts: Dict[str, List[Tuple[int, torch.Tensor]]]
                     ) -> Dict[int, torch.Tensor]:
    """id(tensor) -> what the compact copy holds in its place, for every parameter or buffer of
    ``model`` that loses indices and belongs to one module alone: the copy is made with these,
    so it never copies a full tensor only to cut it (most of a VGG's 0.5 GB). Tensors under a
    pruning mask, and shared ones, are cut in the copy instead."""
    every = list(model.named_modules(remove_duplicate=False))  # a shared module under each name
    owners = Counter(id(t) for _, module in every
                     for t in itertools.chain(module._parameters.values(), module._buffers.values())
                     if t is not None)
    modules = dict(every)
    smaller = {}
    for key, dims in cuts.items():
        module_name, _, name = key.rpartition(".")
        module = modules[module_name]
        tensor = module._parameters.get(name, module._buffers.get(name))
        if tensor is None or owners[id(tensor)] != 1:
            continue
        whole = tensor.detach()
        cut = _cut(whole, dims)
        if cut is whole:
            continue
        smaller[id(tensor)] = (nn.Parameter(cut, requires_grad=tensor.requires_grad)
                               if name in module._parameters else cut)
    return smaller


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

