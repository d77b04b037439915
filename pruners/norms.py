"""Norm criteria beside FPGM, on the same groups, schedule and removal (pruners/structured.py).

- l1norm: Li et al., ICLR 2017, "Pruning Filters for Efficient ConvNets": the filters of smallest
  L1 norm (sum of absolute weights), pruned once and retrained (fixed schedule).
- sfp: He et al., IJCAI 2018, "Soft Filter Pruning": the filters of smallest L2 norm, re-selected
  and zeroed at the end of every epoch while they keep training (soft schedule).
"""
import torch

from pruners import register_pruner
from pruners.structured import FilterCriterion, StructuredPruner


class SmallestNormFilters(FilterCriterion):
    """``amount`` of the filters of smallest Lp norm, ties by position."""

    def __init__(self, amount: float, p: int, channel_multiple: int = 1):
        super().__init__(amount, channel_multiple)
        self.p = p
        self.name = f"smallest L{p} norm"

    @torch.no_grad()
    def select(self, weight: torch.Tensor) -> torch.Tensor:
        vectors = weight.detach().flatten(1).double()
        norms = vectors.norm(p=self.p, dim=1)
        return torch.argsort(norms, stable=True)[:self.pruned(len(vectors))].sort().values


@register_pruner("l1norm")
class L1NormPruner(StructuredPruner):
    """Li et al. 2017: smallest L1 norm, pruned once then retrained (fixed schedule)."""

    default_mode = "fixed"

    def make_criterion(self, rate: float) -> SmallestNormFilters:
        return SmallestNormFilters(rate, p=1, channel_multiple=self.channel_multiple)


@register_pruner("sfp")
class SoftFilterPruner(StructuredPruner):
    """He et al. 2018: smallest L2 norm, re-selected and zeroed every epoch (soft schedule)."""

    default_mode = "soft"

    def make_criterion(self, rate: float) -> SmallestNormFilters:
        return SmallestNormFilters(rate, p=2, channel_multiple=self.channel_multiple)
