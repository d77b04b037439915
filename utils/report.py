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
