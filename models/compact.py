"""Physical removal of channels: a smaller dense model of the same class holding the kept weights.

Generic over every registered model through the channel-dependency graph (models/graph.py):
removing a channel set removes its index from every tensor dimension the graph recorded for it
(the rows of the layers that write it, its BatchNorm entries, the input columns of every layer
that reads it, or its H x W block of columns after a flatten). The new widths are the kept
counts of the groups the model's ``width_groups`` name, and the model is rebuilt from them, so a
checkpoint of the small model needs only its config.

The same graph zeroes or masks channels for soft and fixed pruning (``zero_channels``,
``channel_masks``): a zeroed channel is zero in every writer, BatchNorm's scale and shift
included (a zeroed conv filter followed by BatchNorm would still output BatchNorm's shift), so the
masked model and the compact one compute the same function.
"""
from typing import Dict, Optional, Sequence, Set

import torch
import torch.nn as nn

import models
from models.graph import DependencyGraph, Group, build_graph

# BatchNorm's running statistics describe the channel, they do not compute it: a zeroed channel
# keeps them (its scale and shift are zero, so its output is zero whatever they are).
_STATISTICS = ("running_mean", "running_var")


def graph_of(model: nn.Module) -> DependencyGraph:
    return build_graph(model, model.input_shape)


def pruned_sets(graph: DependencyGraph, pruned: Dict[str, Sequence[int]]) -> Set[int]:
    """Channel sets named by group name -> positions within the group."""
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
        sets.update(group.sets[p] for p in positions)
    return sets


@torch.no_grad()
def compact_model(model: nn.Module, pruned: Dict[str, Sequence[int]],
                  graph: Optional[DependencyGraph] = None,
                  device: Optional[torch.device] = None) -> nn.Module:
    """The same class built with the surviving widths, holding the kept weights.

    ``pruned`` maps a group name (``graph.groups``; for a plain chain, the layer's name) to the
    positions of the channels to remove within that group. For the two models to compute the same
    function those channels must already be zero in ``model`` (``zero_channels``)."""
    graph = graph or graph_of(model)
    gone = pruned_sets(graph, pruned)
    widths = [sum(1 for s in graph.group_at(layer, channel).sets if s not in gone)
              for layer, channel in model.width_groups()]
    device = device if device is not None else next(model.parameters()).device
    small = models.create_model(model.registry_name, model.input_shape, model.num_classes,
                                widths=widths, **getattr(model, "options", {})).to(device)
    state = {key: value.detach() for key, value in model.state_dict().items()}
    for use in graph.uses:
        tensor = state[use.key]
        positions = [p for p, s in enumerate(graph.sets_of(use)) if s not in gone]
        index = (torch.tensor(positions, dtype=torch.long, device=tensor.device)[:, None] * use.block
                 + torch.arange(use.block, device=tensor.device)).flatten()
        state[use.key] = tensor.index_select(use.dim, index)
    expected = small.state_dict()
    for key, value in state.items():
        if key not in expected or expected[key].shape != value.shape:
            raise ValueError(
                f"compacting {type(model).__name__}: {key} becomes {tuple(value.shape)} but the model "
                f"built at widths {widths} has {tuple(expected[key].shape) if key in expected else 'no such tensor'}; "
                "its width_groups do not describe its channel groups")
    small.load_state_dict(state)
    small.train(model.training)
    return small


def writer_tensors(model: nn.Module, graph: DependencyGraph, sets: Set[int]):
    """(key, tensor, dim, positions) of every computing tensor that writes one of ``sets``."""
    for use in graph.uses:
        if not use.writes or use.key.rsplit(".", 1)[-1] in _STATISTICS:
            continue
        positions = [p for p, s in enumerate(graph.sets_of(use)) if s in sets]
        if positions:
            yield use.key, _tensor(model, use.key), use.dim, positions


def _tensor(model: nn.Module, key: str) -> torch.Tensor:
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if hasattr(module, name + "_orig"):  # under a torch.nn.utils.prune mask: train the original
        return getattr(module, name + "_orig")
    return getattr(module, name)


@torch.no_grad()
def zero_channels(model: nn.Module, graph: DependencyGraph, sets: Set[int]) -> None:
    """Zero every computing tensor entry of ``sets``: conv/linear rows and biases, BatchNorm's
    scale and shift."""
    for _, tensor, dim, positions in writer_tensors(model, graph, sets):
        tensor.index_fill_(dim, torch.tensor(positions, device=tensor.device), 0.0)


def channel_masks(model: nn.Module, graph: DependencyGraph, sets: Set[int]) -> Dict[str, torch.Tensor]:
    """0/1 keep-masks (by state_dict key) that hold ``sets`` at zero, for torch.nn.utils.prune."""
    masks = {}
    for key, tensor, dim, positions in writer_tensors(model, graph, sets):
        mask = masks.get(key, torch.ones_like(tensor, dtype=torch.bool))
        mask.index_fill_(dim, torch.tensor(positions, device=tensor.device), False)
        masks[key] = mask
    return masks


def group_vectors(model: nn.Module, graph: DependencyGraph, group: Group) -> torch.Tensor:
    """One row per channel set of ``group``: the filters of every conv or linear layer that
    writes it, concatenated (weights only, as FPGM compares filters). Every set of a group has
    the same writers, so the rows have one length; with one writer they are its filters."""
    parts = []
    for use in graph.uses:
        if not (use.writes and use.key.endswith(".weight") and use.layer in group.writers
                and use.dim == 0):
            continue
        where = {s: p for p, s in enumerate(graph.sets_of(use))}
        if not all(s in where for s in group.sets):
            continue
        rows = _tensor(model, use.key).detach().index_select(
            0, torch.tensor([where[s] for s in group.sets], device=_tensor(model, use.key).device))
        parts.append(rows.flatten(1))
    return torch.cat(parts, dim=1)
