"""The smallest-norm criteria.

- l1norm: Li et al., ICLR 2017, "Pruning Filters for Efficient ConvNets": smallest L1 norm.
- sfp: He et al., IJCAI 2018, "Soft Filter Pruning": smallest L2 norm (also named l2norm).
"""
import torch

from pruners.criteria.base import Criterion, GroupView, register_criterion


class SmallestNorm(Criterion):
    """The units whose writers' rows have the smallest Lp norm."""

    def __init__(self, p: int = 2):
        self.p = p

    def scores(self, view: GroupView) -> torch.Tensor:
        rows = view.rows
        if self.p == 1:
            # Summed in float64 as the entries are read: no float64 copy of the rows (most of
            # what selecting took on a ResNet), and the same sums as rows.double().norm(p=1).
            return rows.abs().sum(dim=1, dtype=torch.float64)
        return rows.double().norm(p=self.p, dim=1)

    def describe(self) -> str:
        return f"smallest L{self.p} norm"


@register_criterion("l1norm")
class L1Norm(SmallestNorm):
    def __init__(self):
        super().__init__(p=1)


@register_criterion("l2norm")
class L2Norm(SmallestNorm):
    def __init__(self):
        super().__init__(p=2)


@register_criterion("sfp")
class SoftFilterNorm(SmallestNorm):
    """SFP's criterion: the smallest L2 norm (its schedule is soft)."""

    def __init__(self):
        super().__init__(p=2)
