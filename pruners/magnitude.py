"""Han et al.'s magnitude pruning as a step-level API for any model and any training loop.

    pruner = MagnitudePruner(model, rate=0.9)         # every Conv and Linear layer, classifier too
    pruner.step()                                     # masks on: the 90% smallest |w| are zero
    train(model)                                      # pruned weights stay zero (the masks)

The masks are torch.nn.utils.prune's (``weight = weight_orig * weight_mask``), so a pruned weight
is zero in every forward pass whatever the optimizer does, and masks only grow: a later step to a
higher rate prunes further. ``scope="global"`` ranks all layers' weights together (one threshold,
Han et al.'s global compression), ``"layer"`` prunes every layer to the rate; ``layer_rates``
sets a layer's own rate. The classifier is included, as in Han et al.; ``exclude`` leaves layers
out. The exact k-smallest selection is pruners/songhan.smallest_k_masks.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from pruners.base import check_rate
from pruners.songhan import SCOPES, smallest_k_masks
from utils.errors import UserError

PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


class MagnitudePruner:
    def __init__(self, model: nn.Module, rate: float, scope: str = "global",
                 layer_rates: Optional[Dict[str, float]] = None, exclude: Sequence[str] = ()):
        self.model = model
        self.rate = check_rate("rate", rate)
        if scope not in SCOPES:
            raise UserError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.scope = scope
        self.layers: List[Tuple[str, nn.Module]] = [
            (name, m) for name, m in model.named_modules()
            if isinstance(m, PRUNABLE_TYPES) and name not in set(exclude)]
        names = {name for name, _ in self.layers}
        unknown = [n for n in list(layer_rates or {}) + list(exclude)
                   if n not in {name for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}]
        if unknown:
            raise UserError(f"layer_rates or exclude name no Conv or Linear layer of "
                            f"{type(model).__name__}: {', '.join(unknown)}")
        self.layer_rates = {name: check_rate(f"layer_rates[{name!r}]", r)
                            for name, r in (layer_rates or {}).items() if name in names}

    @staticmethod
    def _current(module: nn.Module):
        if hasattr(module, "weight_orig"):
            return module.weight_orig, module.weight_mask
        return module.weight, None

    @torch.no_grad()
    def step(self, rate: Optional[float] = None, layer_rates: Optional[Dict[str, float]] = None
             ) -> Dict[str, float]:
        """Prune to ``rate`` (default: the constructor's) of the weights, and each layer of
        ``layer_rates`` to its own rate; returns every layer's sparsity."""
        rate = self.rate if rate is None else check_rate("rate", rate)
        layer_rates = dict(self.layer_rates, **(layer_rates or {}))
        for name, module in self.layers:
            if name in layer_rates:
                orig, mask = self._current(module)
                k = prune._compute_nparams_toprune(layer_rates[name], orig.numel())
                (new,) = smallest_k_masks([orig], k, [mask])
                prune.custom_from_mask(module, "weight", new)
        rest = [(n, m) for n, m in self.layers if n not in layer_rates]
        if rest:
            current = [self._current(m) for _, m in rest]
            groups = [[c] for c in current] if self.scope == "layer" else [current]
            modules = [[m] for _, m in rest] if self.scope == "layer" else [[m for _, m in rest]]
            for tensors_masks, mods in zip(groups, modules):
                tensors, masks = zip(*tensors_masks)
                k = prune._compute_nparams_toprune(rate, sum(t.numel() for t in tensors))
                for module, mask in zip(mods, smallest_k_masks(tensors, k, masks)):
                    prune.custom_from_mask(module, "weight", mask)
        return self.sparsity()

    def sparsity(self) -> Dict[str, float]:
        out = {}
        for name, module in self.layers:
            _, mask = self._current(module)
            out[name] = 0.0 if mask is None else 1 - float(mask.sum()) / mask.numel()
        return out
