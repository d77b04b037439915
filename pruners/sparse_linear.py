"""Sparse inference for magnitude-pruned linear layers: y = W x + b with W in torch's sparse CSR
layout, so the work scales with the nonzero weights instead of all of them.

When it pays (``auto``): a CSR product skips the zeros but walks index arrays and vectorises
worse than a dense GEMM, so it only wins when the weight is sparse enough and the batch large
enough to amortise the per-call overhead, and the layer big enough for the saved multiplies to
outweigh the index walking. Measured on this machine's CPU (2 cores, torch 2.14.1, torch's default
2 threads, the machine otherwise idle) by section 2a of ``python benchmarks/songhan_sparse.py``:
random weights zeroed to the density, torch.rand inputs, eval + inference_mode, 10 warm-up calls,
median of 50 timed calls, dense and CSR alternating over 3 rounds. CSR (torch.addmm) speed-up over
dense F.linear:

                      batch 1   batch 16   batch 64   batch 256   batch 1024
    784->300  2%       1.18x     1.03x      2.20x      2.32x       2.59x
              5%       0.94x     1.46x      1.68x      1.73x       1.63x
              8%       0.83x     1.15x      1.37x      1.42x       1.29x
             12%       0.66x     0.98x      1.16x      1.14x       1.01x
             20%       0.57x     0.90x      0.90x      0.74x       0.70x
    300->100  2%       0.46x     0.57x      0.81x      0.90x       1.25x
              8%       0.43x     0.51x      0.68x      0.69x       0.83x

So ``auto`` swaps a layer only if its density is <= AUTO_MAX_DENSITY (the 784->300 crossover is
near 12%) and it holds at least AUTO_MIN_WEIGHTS weights (300->100, 30,000 weights, loses at every
density and batch up to 256), and per call uses CSR only for batches of at least AUTO_MIN_BATCH
rows (at batch 1 dense wins from 5% density up; batch 16 gains 1.15x at 8%, too thin a margin);
smaller batches go through the dense weight, kept for that. ``on`` uses CSR for every pruned
linear layer and every batch; ``off`` changes nothing.
"""
import copy
import warnings
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

SPARSE_INFERENCE_MODES = ("auto", "on", "off")
AUTO_MAX_DENSITY = 0.10    # below the ~12% crossover measured above, with a margin
AUTO_MIN_WEIGHTS = 100_000  # between 300->100 (never pays) and 784->300 (pays)
AUTO_MIN_BATCH = 32         # 1.37-1.42x at 8% density from batch 64 up; 1.15x at 16


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and tested here
        warnings.simplefilter("ignore")
        return weight.detach().to_sparse_csr()


class SparseLinear(nn.Module):
    """A frozen, pruned nn.Linear for inference, multiplying through a CSR weight.

    ``min_batch``: inputs with fewer rows than this use the dense weight (kept only then)."""

    def __init__(self, linear: nn.Linear, min_batch: int = 1):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.min_batch = int(min_batch)
        weight = linear.weight.detach()
        self.density = float(torch.count_nonzero(weight)) / max(weight.numel(), 1)
        self.register_buffer("weight_csr", to_csr(weight), persistent=False)
        self.register_buffer("weight", weight.clone() if self.min_batch > 1 else None,
                             persistent=False)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] < self.min_batch:
            return F.linear(x, self.weight, self.bias)
        # CSR (out x in) @ dense (in x batch): the layout torch's CPU/CUDA sparse kernels take.
        if self.bias is None:
            out = torch.mm(self.weight_csr, rows.t())
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight_csr, rows.t())
        return out.t().reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"density={self.density:.3f}, min_batch={self.min_batch}")


def _density(linear: nn.Linear) -> float:
    return float(torch.count_nonzero(linear.weight)) / max(linear.weight.numel(), 1)


def sparsify_linear_layers(model: nn.Module, mode: str = "auto") -> nn.Module:
    """A copy of ``model`` whose pruned nn.Linear layers run as SparseLinear (``model`` itself
    when ``mode`` is off or no layer qualifies). The copy is for inference only."""
    if mode not in SPARSE_INFERENCE_MODES:
        raise ValueError(f"mode must be one of {SPARSE_INFERENCE_MODES}, got {mode!r}")
    if mode == "off":
        return model
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            density = _density(module)
            big = module.weight.numel() >= AUTO_MIN_WEIGHTS
            if (mode == "on" and density < 1) or (mode == "auto" and density <= AUTO_MAX_DENSITY
                                                  and big):
                chosen.append(name)
    if not chosen:
        return model
    result = copy.deepcopy(model)
    min_batch = 1 if mode == "on" else AUTO_MIN_BATCH
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = result.get_submodule(parent_name) if parent_name else result
        setattr(parent, child, SparseLinear(getattr(parent, child), min_batch))
    return result


def sparse_layers(model: nn.Module) -> Tuple[str, ...]:
    """Names of the layers running as SparseLinear (for reports and tests)."""
    return tuple(name for name, m in model.named_modules() if isinstance(m, SparseLinear))
