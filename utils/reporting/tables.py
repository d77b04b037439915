"""The per-layer table calFLOP.py prints (and reproduce.py puts in the README): built as plain
JSON-able data from the counts, then rendered as markdown, CSV or JSON."""
from typing import Optional

import torch
import torch.nn as nn

from utils.reporting.counting import (FLOP_CONVENTION, activation_density, batchnorm_parameters,
                                      input_density,
                                      is_sparse, layer_stats, original_of, weighted_total)


# --- The table calFLOP.py prints, as plain JSON-able data ------------------------------------

def _widths(model: Optional[nn.Module]) -> Optional[list]:
    """A registered model's widths; None for a model without a widths config."""
    widths = getattr(model, "widths", None)
    return list(widths) if widths is not None else None


def flop_table(model: nn.Module, input_shape, images: Optional[torch.Tensor] = None,
               original: Optional[nn.Module] = None, chain: Optional[bool] = None) -> dict:
    """Per-layer Weights / FLOP / Nonzero / MACs of ``model`` with a Total row, as a dict that
    json.dumps takes and the renderers below print.

    ``images``: test images to measure Act% on; when given, the table has Han's Weights%, Act%
    and FLOP% columns. ``original``: the same class at its original widths; when given (a
    compact FPGM model), each row has the original Weights and FLOP to compare against.
    ``chain``: whether the model is a plain chain of layers (no residual adds), which the caller
    knows from its dependency graph (utils/ does not trace models); Han's output-side Act% is
    only defined for a chain, so None (not known) measures what each layer reads."""
    stats = layer_stats(model, input_shape)
    rows = [{"layer": s.name, "weights": s.weights, "flops": s.flops, "nonzero": s.nonzero,
             "macs": s.macs, "nonzero_flops": s.nonzero_flops} for s in stats]
    total = {"layer": "Total"}
    for key in ("weights", "flops", "nonzero", "macs", "nonzero_flops"):
        total[key] = sum(row[key] for row in rows)

    chain = bool(chain)
    if images is not None:
        # Han's Act% (a layer's output where the next layer reads it) assumes a plain chain;
        # with shortcuts the column shows what each layer itself reads, and FLOP% always uses
        # that: a multiply is skipped when the weight or the value it multiplies is zero.
        reads = input_density(model, images)
        act = activation_density(model, images) if chain else {s.name: reads[s.name] for s in stats}
        # FLOPs come from the weight tensor alone (biases are added, not multiplied), so FLOP%
        # uses the weight tensor's density; Weights% matches the Weights column (with biases).
        weight_only = [s.nonzero_macs / s.macs if s.macs else 0.0 for s in stats]
        read_density = [1.0] + [reads[s.name] for s in stats[1:]]  # the input image counted dense
        fractions = [w * r for w, r in zip(weight_only, read_density)]
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
        "widths": _widths(model),
        "original_widths": _widths(original) if original is not None else None,
        "activation_images": len(images) if images is not None else None,
        "batchnorm_parameters": batchnorm_parameters(model),
        # Every parameter of the model (the rows' weights and biases, BatchNorm's scale and
        # shift, any other): the count papers quote, so no reader has to add.
        "parameters": sum(p.numel() for p in model.parameters()),
        "act_of": "output" if chain else "input",
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


def markdown_table(headers, rows, align=None) -> str:
    """A GitHub markdown table, cells padded so the source reads as a table too.
    ``align``: "left" or "right" per column (numbers read best right-aligned)."""
    align = align or ["left"] * len(headers)
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(len(headers))]

    def line(row):
        padded = [c.rjust(w) if a == "right" else c.ljust(w) for c, w, a in zip(row, widths, align)]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if a == "right" else "-" * w for w, a in zip(widths, align)]
    return "\n".join([line(cells[0]), "| " + " | ".join(rule) + " |"] + [line(r) for r in cells[1:]])


def render_markdown(table: dict) -> str:
    """The reference README's layout: a markdown table with a Total row, the convention under it."""
    columns = table_columns(table)
    rows = [[cell(row) for _, _, cell in columns] for row in table["layers"] + [table["total"]]]
    text = markdown_table([header for header, _, _ in columns], rows,
                          align=["left"] + ["right"] * (len(columns) - 1))
    notes = []
    total = table["total"]
    if "original_weights" in total:
        shape = (f"widths {table['widths']} against the original {table['original_widths']}"
                 if table.get("widths") is not None else "against the unpruned model its builder makes")
        notes.append(f"Compact model, {shape}: weights "
                     f"{_reduction(total['weights'], total['original_weights'])}, "
                     f"FLOP {_reduction(total['flops'], total['original_flops'])}.")
    if "weights_density" in total and table.get("act_of", "output") == "output":
        notes.append(f"Weights% = nonzero / all weights and biases; Act% = share of nonzero "
                     f"activations where the next layer reads them, over "
                     f"{table['activation_images']:,} test images; FLOP% = weight density x the "
                     f"previous layer's Act% (input image dense), as Han et al. 2015, Tables 2 and 3.")
    elif "weights_density" in total:
        notes.append(f"Weights% = nonzero / all weights and biases; Act% = share of nonzero values "
                     f"in what the layer reads (a network with shortcuts is not a chain, so Han et "
                     f"al.'s output-side Act% is not defined), over {table['activation_images']:,} "
                     f"test images; FLOP% = weight density x Act% (input image dense).")
    parameters = all_parameters(table)
    other = parameters - total["weights"]
    if other and other != (table.get("batchnorm_parameters") or 0):
        # GroupNorm, LayerNorm, embeddings, layer scales: any model's parameters outside the rows.
        notes.append(f"Parameters: {parameters:,} in all, the rows' {total['weights']:,} weights "
                     f"and biases plus {other:,} in layers without a FLOP row (normalisation "
                     f"scales and shifts, BatchNorm's {table.get('batchnorm_parameters') or 0:,} "
                     "among them, and any embeddings or layer scales).")
    elif table.get("batchnorm_parameters"):
        notes.append(f"Parameters: {parameters:,} in all, the rows' {total['weights']:,} weights "
                     f"and biases plus BatchNorm's {table['batchnorm_parameters']:,} (scale and "
                     "shift; no FLOP counted for them).")
    else:
        notes.append(f"Parameters: {parameters:,} in all (the rows' weights and biases).")
    notes.append(f"{table['flop_convention']}.")
    return text + "\n\n" + "\n".join(notes) + "\n"


def all_parameters(table: dict) -> int:
    """The model's whole parameter count; tables recorded before it was stored: the rows'
    weights and biases plus BatchNorm's, all that the registered models hold."""
    if table.get("parameters") is not None:
        return table["parameters"]
    return table["total"]["weights"] + (table.get("batchnorm_parameters") or 0)


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


def model_table(model: nn.Module, images: Optional[torch.Tensor] = None,
                original_widths=None, chain: Optional[bool] = None) -> dict:
    """calFLOP.py's table for a model as it stands: Han's columns when it is sparse and test
    ``images`` are given, the original widths' figures when it is compact (``original_widths``:
    those the pruning started from, as its checkpoint records; default the architecture's)."""
    images = images if images is not None and is_sparse(model) else None
    return flop_table(model, model.input_shape, images=images,
                      original=original_of(model, original_widths), chain=chain)
