"""Counting what a model holds and printing the figures every script reports."""
import torch


def count_parameters(model: torch.nn.Module) -> dict:
    """Total and nonzero parameters (weights and biases)."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"total": total, "nonzero": nonzero}


def format_timing(stats: dict) -> str:
    return (f"{stats['median_ms']:.3f} ms median, {stats['mean_ms']:.3f} mean, "
            f"{stats['p95_ms']:.3f} p95, variance {stats['var_ms2']:.4f} ms^2 "
            f"(batch {stats['batch_size']}, {stats['samples']} timed passes after warm-up)")


def print_rows(rows, print_fn=print):
    """Aligned 'label: value' lines."""
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print_fn(f"{label:<{width}}  {value}")


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
