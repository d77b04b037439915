"""A model's inference form: every BatchNorm that follows a conv or linear layer folded into it,
and conv weights in channels_last.

In eval mode BatchNorm is an affine map per channel, so it can be folded into the weights and
bias of the layer before it; the folded model computes the same function (within float rounding)
without a pass over the activations per BatchNorm. Deployment runtimes do this anyway
(onnxruntime folds it when it loads an exported model), and it matters for what structured
pruning buys: a convolution's cost falls with the product of its input and output widths, an
elementwise pass over activations only with the width, so the memory-bound BatchNorm passes
dilute the speed-up of a compact model measured in eager PyTorch.

channels_last (NHWC) is the layout oneDNN's CPU convolutions work in; a contiguous (NCHW) model
pays a reorder of every conv's input and output, also proportional to the width alone. Timed here
alone (1 thread, batch 64: ``benchmarks/fpgm_speed.py --conv_rates``), a 16-channel 3x3 conv at
32x32 ran at 19 GFLOP/s contiguous and 74 channels_last; the same script times whole models both
ways.

The folding itself is torch.fx's ``fuse`` (Conv1d/2d/3d with BatchNorm1d/2d/3d, Linear with
BatchNorm1d, skipped where the layer's output has other readers); this module only traces with
the dependency graph's tracer, so the models' input adapters stay leaves, and refuses models it
cannot trace with one clear line.
"""
import torch
import torch.nn as nn
from torch.fx.experimental.optimization import fuse
from torch.nn.utils import parametrize

from utils.tracing import traced
from utils.masks import masked_tensors
from utils.modes import eval_mode


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with each BatchNorm folded into the conv or linear layer
    whose only reader it is; the original model is left as it was. A model under pruning masks
    is refused: fold ``utils.export.deployable(model)``, whose masks are permanent."""
    if any(True for _ in masked_tensors(model)) or any(
            parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("fold_batchnorm takes a model without pruning masks or parametrizations; "
                         "utils.export.deployable(model) makes them permanent")
    with eval_mode(model):  # the folded copy uses the running statistics, as eval mode does
        graph_module = traced(model)
        folded = fuse(graph_module, inplace=False, no_trace=True)
    return folded.eval()


def for_deployment(model: nn.Module) -> nn.Module:
    """``fold_batchnorm(model)`` with channels_last conv weights (models with 4-D conv weights
    only): conv outputs then come out channels_last whatever the input's layout, so callers
    pass ordinary NCHW batches."""
    folded = fold_batchnorm(model)
    if any(isinstance(m, nn.Conv2d) for m in folded.modules()):
        folded = folded.to(memory_format=torch.channels_last)
    return folded


def differs_for_deployment(model: nn.Module) -> bool:
    """Whether ``for_deployment(model)`` is other than the model: it has BatchNorm or convs."""
    return batchnorm_count(model) > 0 or any(isinstance(m, nn.Conv2d) for m in model.modules())


def batchnorm_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
