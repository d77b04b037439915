"""Physical removal of filters: a smaller dense model of the same class holding the kept weights.

Generic over every registered model through ``weight_layers``: layer i feeds layer i+1, so the
filters kept in layer i decide both layer i's outputs and layer i+1's inputs. Where a conv stack
is flattened into a linear layer, each channel owns a contiguous block of H x W inputs (flatten
is channel-major), so a removed channel removes its whole block.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

import models
from models.base import weight_layers


def _input_columns(layer: nn.Module, previous: nn.Module, kept: torch.Tensor) -> torch.Tensor:
    """Indices along ``layer``'s input dimension that survive when ``previous`` keeps ``kept``."""
    channels = previous.weight.shape[0]
    fan_in = layer.weight.shape[1]
    if fan_in % channels:
        raise ValueError(f"{type(layer).__name__} has {fan_in} inputs, not a multiple of the "
                         f"{channels} outputs of the layer before it; the layers are not a chain")
    block = fan_in // channels  # 1 for conv->conv and linear->linear, H x W after a flatten
    return (kept[:, None] * block + torch.arange(block, device=kept.device)).flatten()


def kept_indices(model: nn.Module, pruned: Dict[str, Sequence[int]]) -> Dict[str, torch.Tensor]:
    """Sorted kept output indices of every weight layer, given the pruned ones per layer name."""
    kept = {}
    for name, layer in weight_layers(model):
        out = layer.weight.shape[0]
        gone = torch.as_tensor(list(pruned.get(name, ())), dtype=torch.long)
        alive = torch.ones(out, dtype=torch.bool)
        alive[gone] = False
        kept[name] = alive.nonzero().flatten()
    return kept


@torch.no_grad()
def compact_model(model: nn.Module, pruned: Dict[str, Sequence[int]],
                  device: Optional[torch.device] = None) -> nn.Module:
    """The same class built with the surviving widths, holding the kept weights.

    ``pruned`` maps a layer name to the output filters (conv channels, linear neurons) to remove;
    those filters must already be zero (weights and biases) in ``model`` for the two models to
    compute the same function. The classifier's outputs cannot be removed.
    """
    layers = weight_layers(model)
    if len(layers) != len(model.widths) + 1:
        raise ValueError(f"{type(model).__name__} has {len(layers)} weight layers but "
                         f"{len(model.widths)} widths; compaction needs one width per hidden layer")
    classifier = layers[-1][0]
    if len(pruned.get(classifier, ())):
        raise ValueError(f"{classifier} is the classifier; its outputs are the classes")
    unknown = set(pruned) - {name for name, _ in layers}
    if unknown:
        raise ValueError(f"no weight layers named {', '.join(sorted(unknown))}")

    kept = kept_indices(model, pruned)
    widths = [len(kept[name]) for name, _ in layers[:-1]]
    device = device if device is not None else next(model.parameters()).device
    small = models.create_model(model.registry_name, model.input_shape, model.num_classes,
                                widths=widths).to(device)

    state = {}
    previous = None
    for name, layer in layers:
        rows = kept[name].to(layer.weight.device)
        weight = layer.weight.index_select(0, rows)
        if previous is not None:
            prev_layer, prev_kept = previous
            cols = _input_columns(layer, prev_layer, prev_kept.to(layer.weight.device))
            weight = weight.index_select(1, cols)
        state[f"{name}.weight"] = weight
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias.index_select(0, rows)
        previous = (layer, kept[name])

    # Anything that is not a weight layer's tensor (none today) must keep its shape to be copied.
    small_state = small.state_dict()
    for key, value in model.state_dict().items():
        if key in state:
            continue
        if key not in small_state or small_state[key].shape != value.shape:
            raise ValueError(f"cannot carry {key} into the compact model: its shape depends on "
                             "the pruned widths and compaction does not know how to slice it")
        state[key] = value
    small.load_state_dict(state)
    small.train(model.training)
    return small
