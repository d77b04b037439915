"""Building the channel-dependency graph of a model: trace, run once, label (see core.py)."""
from typing import Tuple

import torch
import torch.nn as nn

from pruners.graph.core import DependencyGraph, check_attention_units
from pruners.graph.operations import Walk
from utils.gc_pause import gc_paused
from utils.modes import eval_mode, training_mode
from utils.tracing import traced_graph


def as_inputs(model: nn.Module, example_inputs) -> Tuple[torch.Tensor, ...]:
    """Example inputs as a tuple of tensors on the model's device; a shape (a sequence of ints,
    per sample: (C, H, W)) means a batch of 2 standard-normal images from a fixed seed, not
    zeros: compaction is checked on these inputs, and a zero input would hide a wrong removal
    behind the biases alone."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs.to(device),)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(v, int) for v in example_inputs):
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(2, *example_inputs, generator=generator).to(device),)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(v, torch.Tensor)
                                                         for v in example_inputs):
        return tuple(v.to(device) for v in example_inputs)
    raise TypeError("example_inputs must be a tensor, a tuple of tensors, or an input shape "
                    f"(C, H, W); got {type(example_inputs).__name__}")


@gc_paused()
def build_graph(model: nn.Module, example_inputs, attention: str = "heads") -> DependencyGraph:
    """Trace ``model`` and group its channels, running it once on ``example_inputs`` (a batch,
    a tuple of them, or an input shape for a zero batch of one). The model is traced in training
    mode, so branches taken only in training (auxiliary classifiers) are part of the graph, and
    run in eval mode without gradients. ``attention``: what an attention module's groups prune,
    whole heads or the per-head width (core.ATTENTION_UNITS)."""
    attention = check_attention_units(attention)
    inputs = as_inputs(model, example_inputs)
    with training_mode(True, model):
        fx_graph = traced_graph(model)
    with eval_mode(model), torch.no_grad():
        graph = Walk(fx_graph, model, attention=attention).run(*inputs)
    graph.example_inputs = tuple(x.detach() for x in inputs)
    return graph


def is_chain(model: nn.Module, example_inputs=None) -> bool:
    """Whether ``model`` is a plain chain (no channel group is a residual stream or a
    concatenation), where Han et al.'s output-side Act% is defined (calFLOP.py's tables)."""
    inputs = example_inputs if example_inputs is not None else model.input_shape
    return not any(group.residual for group in build_graph(model, inputs).groups)
