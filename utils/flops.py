"""Per-layer weights and FLOPs. FLOP = 2 x multiply-accumulate for one input image, the
reference tables' convention, equal to what torch.utils.flop_counter.FlopCounterMode counts
(biases, activations and pooling are not counted, as there)."""
from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from models.base import weight_layers

FLOP_CONVENTION = ("FLOP = 2 x multiply-accumulate for one input image (bias, activation and "
                   "pooling not counted), as torch.utils.flop_counter.FlopCounterMode counts")


@dataclass
class LayerStats:
    name: str
    weights: int          # weights and biases, as the reference counts
    nonzero: int          # nonzero weights and biases
    macs: int             # multiply-accumulates for one image, dense
    nonzero_macs: int     # multiply-accumulates with nonzero weights only
    output_shape: tuple   # of one image

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def nonzero_flops(self) -> int:
        return 2 * self.nonzero_macs


def _uses_per_weight(module: nn.Module, output: torch.Tensor) -> int:
    """How many times each weight is used for one image: once per output position."""
    if isinstance(module, nn.Conv2d):
        return output.shape[-1] * output.shape[-2]
    return 1


@torch.no_grad()
def layer_stats(model: nn.Module, input_shape) -> List[LayerStats]:
    """Stats of every conv and linear layer for one image of ``input_shape``, in forward order."""
    layers = weight_layers(model)
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: outputs.__setitem__(name, out))
             for name, m in layers]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    stats = []
    for name, module in layers:
        out = outputs[name]
        uses = _uses_per_weight(module, out)
        weight = module.weight
        params = [p for p in (module.weight, module.bias) if p is not None]
        stats.append(LayerStats(
            name=name,
            weights=sum(p.numel() for p in params),
            nonzero=sum(int(torch.count_nonzero(p)) for p in params),
            macs=weight.numel() * uses,
            nonzero_macs=int(torch.count_nonzero(weight)) * uses,
            output_shape=tuple(out.shape[1:]),
        ))
    return stats


def count_flops(model: nn.Module, input_shape) -> int:
    """Dense FLOPs for one image, by torch's own FlopCounterMode."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops()
