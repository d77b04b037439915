"""Output shapes of the layers whose computed values the graph's walk never reads.

The walk (operations.py) runs the traced model once to label every tensor with channel ids. The
labels follow from each operation and the *shapes* of its arguments, never from their values:
torch.fx has already fixed the control flow, and every handler reads shapes. Convolutions and
linear layers are nearly all of a forward pass's arithmetic, so the walk gives them (and BatchNorm and
activations, which a small network spends as long on at batch 1) a zero tensor of the shape they
would return instead of computing it: building ResNet-50's graph then costs
0.1 s less, the price of one forward pass at batch 1 (benchmarks/graph_speed.py). The example
inputs still run through the real layers where it matters: ``ChannelPruner.compact`` checks the
compact model against the masked one on them.

Why not torch's meta device or FakeTensorMode, which compute shapes for every operation: measured
here, a MobileNetV2 forward pass costs 0.017 s on the CPU at batch 1, 0.07 s on the meta device
and 0.2 s under FakeTensorMode, whose convolution shape rules run in Python. The formula below is
torch's own (the output size documented for nn.Conv2d); anything it does not cover runs for real.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

# Exactly torch's forward: a subclass that overrides forward() may return anything.
_CONV_FORWARDS = {nn.Conv1d.forward: 1, nn.Conv2d.forward: 2, nn.Conv3d.forward: 3}
# Layers whose output has their input's shape: BatchNorm (its input ranks checked), and
# activations applied entry by entry.
_BATCHNORM_RANKS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}
_ELEMENTWISE_FORWARDS = {cls.forward for cls in (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus)}


def shape_only_output(module: nn.Module, args: Sequence, kwargs: dict) -> Optional[torch.Tensor]:
    """A zero tensor of the shape ``module(*args, **kwargs)`` returns, for a torch Conv1d/2d/3d,
    Linear, BatchNorm or elementwise activation called the plain way on a tensor it accepts;
    None where the layer must run (any other module, hooks, keyword arguments, a shape or dtype
    the layer would refuse). Skipping a BatchNorm also spares a training-mode one's running
    statistics the walk's update."""
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    x, forward = args[0], type(module).forward
    if forward in _ELEMENTWISE_FORWARDS:
        if getattr(module, "inplace", False):
            return x  # what the layer returns, without touching fresh memory
        shape = tuple(x.shape)
    elif type(module) in _BATCHNORM_RANKS:  # the classes themselves: they share one forward
        fits = x.dim() in _BATCHNORM_RANKS[type(module)] and x.shape[1] == module.num_features
        shape = tuple(x.shape) if fits else None
    elif forward is nn.Linear.forward and _same_kind(x, module.weight):
        shape = _linear_shape(module, x.shape)
    elif forward in _CONV_FORWARDS and _same_kind(x, module.weight):
        shape = _conv_shape(module, x.shape, _CONV_FORWARDS[forward])
    else:
        return None
    return None if shape is None else x.new_zeros(shape)


def _same_kind(x: torch.Tensor, weight) -> bool:
    return isinstance(weight, torch.Tensor) and x.dtype == weight.dtype and x.device == weight.device


def _linear_shape(linear: nn.Linear, shape: torch.Size) -> Optional[Tuple[int, ...]]:
    if len(shape) < 1 or shape[-1] != linear.in_features:
        return None
    return tuple(shape[:-1]) + (linear.out_features,)


def _conv_shape(conv: nn.modules.conv._ConvNd, shape: torch.Size, spatial: int
                ) -> Optional[Tuple[int, ...]]:
    """(batch,) C_out and per spatial dimension floor((size + 2 padding - dilation (kernel - 1)
    - 1) / stride) + 1; a padding_mode other than zeros pads by the same amounts first, and
    padding="same" keeps the size (torch allows it with stride 1 only)."""
    if len(shape) not in (spatial + 1, spatial + 2) or shape[-spatial - 1] != conv.in_channels:
        return None
    if conv.padding == "same":
        sizes = list(shape[-spatial:])
    else:
        padding = (0,) * spatial if conv.padding == "valid" else conv.padding
        sizes = [(size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
                 for size, pad, dilation, kernel, stride in zip(
                     shape[-spatial:], padding, conv.dilation, conv.kernel_size, conv.stride)]
    if min(sizes) <= 0:
        return None  # the layer itself raises its own error
    return tuple(shape[:-spatial - 1]) + (conv.out_channels,) + tuple(sizes)
