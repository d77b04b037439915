"""Per-layer weights and FLOPs. FLOP = 2 x multiply-accumulate for one input image, the
reference tables' convention, equal to what torch.utils.flop_counter.FlopCounterMode counts
(biases, activations and pooling are not counted, as there)."""
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from utils.checkpoints.builders import build, registered_spec
from utils.layers import PRUNABLE_TYPES, weight_layers
from utils.masks import masked_value
from utils.modes import eval_mode
from utils.structure import structure
from utils.transformers import ATTENTION_MODULES, explicit_attention

FLOP_CONVENTION = ("FLOP = 2 x multiply-accumulate for one input image (bias, BatchNorm, "
                   "activation and pooling not counted), as torch.utils.flop_counter.FlopCounterMode "
                   "counts")


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


def count_parameters(model: torch.nn.Module) -> dict:
    """Total and nonzero parameters (weights and biases), a masked tensor counted as its masked
    value (weight_orig x mask), which is what the model computes with."""
    total = nonzero = 0
    for name, parameter in model.named_parameters():
        parameter = masked_value(model, name, parameter)
        total += parameter.numel()
        nonzero += int(torch.count_nonzero(parameter))
    return {"total": total, "nonzero": nonzero}


def _uses_per_weight(module: nn.Module, output: torch.Tensor) -> int:
    """How many times each weight is used for one image: once per output position (a conv's
    H x W; a linear layer's tokens, 1 for a classifier on a flat vector)."""
    if isinstance(module, nn.Conv2d):
        return output.shape[-1] * output.shape[-2]
    return output.numel() // output.shape[0] // output.shape[-1] if output.dim() > 2 else 1


@torch.no_grad()
def layer_stats(model: nn.Module, input_shape) -> List[LayerStats]:
    """Stats of every conv and linear layer for one image of ``input_shape``, and of every
    attention module (torchvision's ViT, Swin, MaxViT), in registration order. An attention row
    holds what its module computes beyond the rows of its own sublayers: the projections it reads
    as tensors (nn.MultiheadAttention's in_proj and out_proj, Swin's qkv and proj) and the
    query-key and attention-value products, counted by FlopCounterMode on its explicit form."""
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, PRUNABLE_TYPES + ATTENTION_MODULES)]
    outputs, calls = {}, {}

    def record(name, module, args, kwargs, out):
        outputs[name] = out[0] if isinstance(out, tuple) else out
        if isinstance(module, ATTENTION_MODULES):
            calls[name] = (args, kwargs)

    hooks = [m.register_forward_hook(partial(record, name), with_kwargs=True) for name, m in layers]
    try:
        with eval_mode(model):
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    stats = []
    for name, module in layers:
        if name not in outputs:
            # Never called as a module: its owner reads the weights directly (nn.MultiheadAttention's
            # out_proj); counted in the owner's attention row.
            continue
        out = outputs[name]
        if name in calls:
            stats.append(_attention_stats(name, module, calls[name], out, outputs))
            continue
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


def _attention_stats(name: str, module: nn.Module, call, out: torch.Tensor,
                     outputs: Dict[str, torch.Tensor]) -> LayerStats:
    """An attention module's row: its parameters and multiply-accumulates less those of its
    sublayers that are rows of their own (MaxViT's to_qkv and merge, Swin V2's position MLP)."""
    args, kwargs = call
    with explicit_attention(module), FlopCounterMode(display=False) as counter:
        module(*args, **kwargs)
    own_rows = [child for child, _ in module.named_modules()
                if child and f"{name}.{child}" in outputs]
    macs = counter.get_total_flops() // 2
    for child in own_rows:
        sub = module.get_submodule(child)
        macs -= sub.weight.numel() * _uses_per_weight(sub, outputs[f"{name}.{child}"])
    params = {key.removesuffix("_orig"): masked_value(module, key, p)
              for key, p in module.named_parameters()
              if not any(key.startswith(child + ".") for child in own_rows)}
    # The projections' weights multiply every token once; a zero weight skips those MACs (the
    # position-bias table and the products between tokens have no weight to be zero).
    tokens = args[0].numel() // args[0].shape[-1]
    zeros = sum(int(p.numel() - torch.count_nonzero(p)) for key, p in params.items()
                if key.endswith("weight") and p.dim() == 2)
    return LayerStats(
        name=name,
        weights=sum(p.numel() for p in params.values()),
        nonzero=sum(int(torch.count_nonzero(p)) for p in params.values()),
        macs=macs,
        nonzero_macs=macs - zeros * tokens,
        output_shape=tuple(out.shape[1:]),
    )


def count_flops(model: nn.Module, input_shape) -> int:
    """Dense FLOPs for one image, by torch's own FlopCounterMode (attention through its explicit
    form, which the counter sees: utils.transformers.explicit_attention)."""
    with eval_mode(model), explicit_attention(model), FlopCounterMode(display=False) as counter, \
            torch.no_grad():
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    return counter.get_total_flops()


# --- Han et al. 2015's sparse columns (their Tables 2 and 3) -----------------------------------
#
# Weights% = nonzero / all weights of a layer; Act% = share of nonzero activations at a layer's
# output; FLOP% = Weights% of the layer x Act% of the previous layer's output, the input image
# counted dense. A multiply by a zero weight or by a zero activation is skipped, and the rule
# treats the two as independent; with it, every row of the paper's two tables comes out.

DEFAULT_ACTIVATION_IMAGES = 1000
_ACTIVATION_CHUNK = 256  # images per forward pass, so alexnet_imagenet at 224x224 stays in memory


@torch.no_grad()
def input_density(model: nn.Module, images: torch.Tensor) -> Dict[str, float]:
    """Share of nonzero values in what each conv/linear layer reads, over ``images`` (after the
    nonlinearity, pooling, flattening and residual adds before it; dropout is the identity in
    eval mode): the zeros that let the layer skip multiplies. Under the key ``None``, the share
    of nonzero logits the last layer outputs."""
    layers = weight_layers(model)
    nonzero: Dict[Optional[str], int] = {}
    total: Dict[Optional[str], int] = {}

    def count(name, tensor):
        nonzero[name] = nonzero.get(name, 0) + int(torch.count_nonzero(tensor))
        total[name] = total.get(name, 0) + tensor.numel()

    hooks = [module.register_forward_pre_hook(lambda mod, inputs, name=name: count(name, inputs[0]))
             for name, module in layers]
    if layers:
        hooks.append(layers[-1][1].register_forward_hook(lambda mod, inputs, out: count(None, out)))
    try:
        with eval_mode(model):
            device = next(model.parameters()).device
            for start in range(0, len(images), _ACTIVATION_CHUNK):
                model(images[start:start + _ACTIVATION_CHUNK].to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: nonzero[name] / total[name] if total[name] else 0.0 for name in total}


def activation_density(model: nn.Module, images: torch.Tensor) -> Dict[str, float]:
    """Han et al.'s Act%: share of nonzero activations at each conv/linear layer's output, taken
    where the next weight layer reads it. That reading is defined for a plain chain (layer i
    feeds layer i+1, in forward order); the last layer's output is its own (the logits)."""
    names = [name for name, _ in weight_layers(model)]
    reads = input_density(model, images)
    return {name: reads[after] for name, after in zip(names, names[1:])} | (
        {names[-1]: reads[None]} if names else {})


def flop_fractions(weight_density: Sequence[float], input_density: Sequence[float]) -> List[float]:
    """FLOP% of each layer (Han et al.'s rule): the density of its weight tensor times the density
    of the input it reads, since a multiply is skipped when either factor is zero. The first
    layer reads the image, counted dense: its input density is 1.0 whatever is given for it.
    Fractions in [0, 1], forward order; in a plain chain a layer's input density is the previous
    layer's Act%."""
    if len(weight_density) != len(input_density):
        raise ValueError("one weight density and one input density per layer")
    reads = [1.0] + list(input_density[1:])
    return [w * r for w, r in zip(weight_density, reads)]


def weighted_total(fractions: Sequence[float], flops: Sequence[int]) -> float:
    """Whole-network FLOP%: each layer's fraction weighted by its dense FLOPs."""
    dense = sum(flops)
    return sum(f * n for f, n in zip(fractions, flops)) / dense if dense else 0.0


def is_sparse(model: nn.Module) -> bool:
    """Pruned weight by weight: some weight or bias is exactly zero. Trained dense weights are
    never exactly zero in practice, and a fresh model's are continuous random draws."""
    return any(bool((p == 0).any()) for p in model.parameters())


def original_of(model: nn.Module, original_widths=None) -> Optional[nn.Module]:
    """The unpruned model of a compact (structurally pruned) one, else None: a registered model
    at its original widths, any other (a torchvision or user builder's) as its builder makes it.
    Only the shapes matter here, so the weights stay as initialised."""
    if not hasattr(model, "config"):
        return None
    config = dict(model.config())
    original = original_widths or getattr(model, "original_widths", None)
    if original is not None:
        config["widths"] = list(original)
    reference = build(registered_spec(config))
    return reference if structure(reference, model) else None


def batchnorm_parameters(model: nn.Module) -> int:
    """BatchNorm's scale and shift: parameters, but no multiply-accumulates FlopCounterMode
    counts (in eval mode BatchNorm folds into the conv before it)."""
    return sum(p.numel() for m in model.modules()
               if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for p in m.parameters())
