"""Per-layer weights and FLOPs. FLOP = 2 x multiply-accumulate for one input image, the
reference tables' convention, equal to what torch.utils.flop_counter.FlopCounterMode counts
(biases, activations and pooling are not counted, as there)."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

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


# --- Han et al. 2015's sparse columns (their Tables 2 and 3) -----------------------------------
#
# Weights% = nonzero / all weights of a layer; Act% = share of nonzero activations at a layer's
# output; FLOP% = Weights% of the layer x Act% of the previous layer's output, the input image
# counted dense. A multiply by a zero weight or by a zero activation is skipped, and the rule
# treats the two as independent; with it, every row of the paper's two tables comes out.

DEFAULT_ACTIVATION_IMAGES = 1000
_ACTIVATION_CHUNK = 256  # images per forward pass, so alexnet_imagenet at 224x224 stays in memory


@torch.no_grad()
def activation_density(model: nn.Module, images: torch.Tensor) -> Dict[str, float]:
    """Share of nonzero activations at each conv/linear layer's output over ``images``.

    A layer's output is taken where the next weight layer reads it: after the nonlinearity,
    pooling and flattening in between (dropout is the identity in eval mode). That is the
    activation whose zeros let the next layer skip multiplies, which is what FLOP% needs. The
    last layer's output is its own (the logits)."""
    layers = weight_layers(model)
    if not layers:
        return {}
    names = [name for name, _ in layers]
    nonzero = {name: 0 for name in names}
    total = {name: 0 for name in names}

    def count(name, tensor):
        nonzero[name] += int(torch.count_nonzero(tensor))
        total[name] += tensor.numel()

    hooks = []
    # The input of layer i+1 is the output of layer i: weight_layers is forward order and the
    # models here are plain chains.
    for (previous, _), (_, module) in zip(layers, layers[1:]):
        hooks.append(module.register_forward_pre_hook(
            lambda mod, inputs, name=previous: count(name, inputs[0])))
    last_name, last = layers[-1]
    hooks.append(last.register_forward_hook(lambda mod, inputs, out: count(last_name, out)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for start in range(0, len(images), _ACTIVATION_CHUNK):
            model(images[start:start + _ACTIVATION_CHUNK].to(device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {name: nonzero[name] / total[name] if total[name] else 0.0 for name in names}


def han_flop_fractions(weight_density: Sequence[float], act_density: Sequence[float]) -> List[float]:
    """FLOP% of each layer: its weight density x the previous layer's activation density, the
    first layer's input (the image) counted dense. Fractions in [0, 1], forward order."""
    if len(weight_density) != len(act_density):
        raise ValueError("one weight density and one activation density per layer")
    previous = [1.0] + list(act_density[:-1])
    return [w * a for w, a in zip(weight_density, previous)]


def weighted_total(fractions: Sequence[float], flops: Sequence[int]) -> float:
    """Whole-network FLOP%: each layer's fraction weighted by its dense FLOPs."""
    dense = sum(flops)
    return sum(f * n for f, n in zip(fractions, flops)) / dense if dense else 0.0


# --- The table calFLOP.py prints, as plain JSON-able data ------------------------------------

def flop_table(model: nn.Module, input_shape, images: Optional[torch.Tensor] = None,
               original: Optional[nn.Module] = None) -> dict:
    """Per-layer Weights / FLOP / Nonzero / MACs of ``model`` with a Total row, as a dict that
    json.dumps takes and the renderers below print.

    ``images``: test images to measure Act% on; when given, the table has Han's Weights%, Act%
    and FLOP% columns. ``original``: the same class at its original widths; when given (a
    compact FPGM model), each row has the original Weights and FLOP to compare against."""
    stats = layer_stats(model, input_shape)
    rows = [{"layer": s.name, "weights": s.weights, "flops": s.flops, "nonzero": s.nonzero,
             "macs": s.macs, "nonzero_flops": s.nonzero_flops} for s in stats]
    total = {"layer": "Total"}
    for key in ("weights", "flops", "nonzero", "macs", "nonzero_flops"):
        total[key] = sum(row[key] for row in rows)

    if images is not None:
        act = activation_density(model, images)
        # FLOPs come from the weight tensor alone (biases are added, not multiplied), so FLOP%
        # uses the weight tensor's density; Weights% matches the Weights column (with biases).
        weight_only = [s.nonzero_macs / s.macs if s.macs else 0.0 for s in stats]
        fractions = han_flop_fractions(weight_only, [act[s.name] for s in stats])
        for row, s, fraction in zip(rows, stats, fractions):
            row["weights_density"] = s.nonzero / s.weights if s.weights else 0.0
            row["act_density"] = act[s.name]
            row["flop_density"] = fraction
        total["weights_density"] = total["nonzero"] / total["weights"] if total["weights"] else 0.0
        total["act_density"] = None  # a network-wide Act% means nothing; the paper leaves it blank
        total["flop_density"] = weighted_total(fractions, [s.flops for s in stats])

    if original is not None:
        before = {s.name: s for s in layer_stats(original, input_shape)}
        for row in rows:
            old = before.get(row["layer"])
            row["original_weights"] = old.weights if old else None
            row["original_flops"] = old.flops if old else None
        total["original_weights"] = sum(s.weights for s in before.values())
        total["original_flops"] = sum(s.flops for s in before.values())

    return {
        "model": getattr(model, "registry_name", type(model).__name__),
        "input_shape": list(input_shape),
        "widths": list(getattr(model, "widths", [])),
        "original_widths": list(original.widths) if original is not None else None,
        "activation_images": len(images) if images is not None else None,
        "flop_convention": FLOP_CONVENTION,
        "layers": rows,
        "total": total,
    }


def _count(value) -> str:
    return f"{value:,}" if value is not None else "n/a"


def _percent(value) -> str:
    return f"{value:.1%}" if value is not None else ""


def _reduction(new, old) -> str:
    """'-57.4%': how much smaller than the original; 'n/a' when there is nothing to compare."""
    if not old or new is None:
        return "n/a"
    return f"{new / old - 1:+.1%}"


def table_columns(table: dict):
    """(header, csv key, cell text of a row) of every column the table has, in printed order."""
    def count(key):
        return lambda row: _count(row.get(key))

    def percent(key):
        return lambda row: _percent(row.get(key))

    columns = [("Layer", "layer", lambda row: row["layer"]), ("Weights", "weights", count("weights")),
               ("FLOP", "flops", count("flops")), ("Nonzero Weights", "nonzero", count("nonzero")),
               ("MACs", "macs", count("macs"))]
    total = table["total"]
    if "weights_density" in total:
        def weights_percent(row):
            text = _percent(row["weights_density"])
            if row is total and row["nonzero"]:
                # Han's tables print the compression next to the total: "8% (12x)".
                text += f" ({row['weights'] / row['nonzero']:.1f}x)"
            return text
        columns += [("Weights%", "weights_density", weights_percent),
                    ("Act%", "act_density", percent("act_density")),
                    ("FLOP%", "flop_density", percent("flop_density"))]
    if "original_weights" in total:
        columns += [("Original Weights", "original_weights", count("original_weights")),
                    ("Original FLOP", "original_flops", count("original_flops")),
                    ("FLOP vs original", None,
                     lambda row: _reduction(row["flops"], row.get("original_flops")))]
    return columns


def render_markdown(table: dict) -> str:
    """The reference README's layout: a markdown table with a Total row, the convention under it."""
    from utils.report import markdown_table
    columns = table_columns(table)
    rows = [[cell(row) for _, _, cell in columns] for row in table["layers"] + [table["total"]]]
    text = markdown_table([header for header, _, _ in columns], rows,
                          align=["left"] + ["right"] * (len(columns) - 1))
    notes = []
    total = table["total"]
    if "original_weights" in total:
        notes.append(f"Compact model, widths {table['widths']} against the original "
                     f"{table['original_widths']}: weights "
                     f"{_reduction(total['weights'], total['original_weights'])}, "
                     f"FLOP {_reduction(total['flops'], total['original_flops'])}.")
    if "weights_density" in total:
        notes.append(f"Weights% = nonzero / all weights and biases; Act% = share of nonzero "
                     f"activations where the next layer reads them, over "
                     f"{table['activation_images']:,} test images; FLOP% = weight density x the "
                     f"previous layer's Act% (input image dense), as Han et al. 2015, Tables 2 and 3.")
    notes.append(f"{table['flop_convention']}.")
    return text + "\n\n" + "\n".join(notes) + "\n"


def render_csv(table: dict) -> str:
    """One header line and one line per layer plus Total; raw numbers (fractions, not percents)."""
    import csv
    import io
    keys = [key for _, key, _ in table_columns(table) if key] + ["nonzero_flops"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in table["layers"] + [table["total"]]:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in keys})
    return buffer.getvalue()


def render_json(table: dict) -> str:
    import json
    return json.dumps(table, indent=2) + "\n"


RENDERERS = {"markdown": render_markdown, "csv": render_csv, "json": render_json}


def is_sparse(model: nn.Module) -> bool:
    """Pruned weight by weight: some weight or bias is exactly zero. Trained dense weights are
    never exactly zero in practice, and a fresh model's are continuous random draws."""
    return any(bool((p == 0).any()) for p in model.parameters())


def original_of(model: nn.Module) -> Optional[nn.Module]:
    """The same class at its original widths when ``model`` is a compact (structurally pruned)
    one, else None. Only the shapes matter here, so the weights stay as initialised."""
    default = tuple(getattr(type(model), "default_widths", ()))
    if not default or tuple(model.widths) == default:
        return None
    return type(model)(model.input_shape, model.num_classes)


def model_table(model: nn.Module, images: Optional[torch.Tensor] = None) -> dict:
    """calFLOP.py's table for a model as it stands: Han's columns when it is sparse and test
    ``images`` are given, the original widths' figures when it is compact."""
    images = images if images is not None and is_sparse(model) else None
    return flop_table(model, model.input_shape, images=images, original=original_of(model))
