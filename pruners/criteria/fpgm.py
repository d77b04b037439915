"""FPGM: filter pruning via geometric median (He et al., CVPR 2019).

In every channel group the filters whose summed distance to all other filters of the group is
smallest lie nearest the group's geometric median: what they compute the others can stand in for,
so they go. FPGM-mix first removes a share of smallest-norm filters and measures distances among
the rest, as the official code's rate_norm and rate_dist do.
"""
import math

import torch
import torch.nn as nn

from pruners.criteria.base import Criterion, GroupView, register_criterion
from utils.errors import UserError

# floor(N x rate) in floating point can land just under an integer (0.29 x 100 =
# 28.999999999999996); the tolerance keeps such products on the integer they denote.
_FLOOR_TOLERANCE = 1e-9


def pruned_count(filters: int, rate: float) -> int:
    """floor(filters x rate), the number of filters a rate removes from a layer."""
    return int(math.floor(filters * rate + _FLOOR_TOLERANCE))


# ---- distances: one small class each, so the choice really switches the metric --------------

class FilterDistance:
    """Pairwise distances between the rows of an (N, D) matrix of flattened filters."""
    name = ""

    def pairwise(self, vectors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class L2Distance(FilterDistance):
    name = "l2"

    def pairwise(self, vectors):
        return torch.cdist(vectors, vectors, p=2.0)


class L1Distance(FilterDistance):
    name = "l1"

    def pairwise(self, vectors):
        return torch.cdist(vectors, vectors, p=1.0)


class CosineDistance(FilterDistance):
    """1 - cosine similarity. A zero filter has no direction; it is taken as orthogonal to all
    (distance 1), which is what normalising with a small floor gives."""
    name = "cos"

    def pairwise(self, vectors):
        unit = nn.functional.normalize(vectors, dim=1, eps=1e-12)
        return 1.0 - unit @ unit.T


DISTANCES = {cls.name: cls for cls in (L2Distance, L1Distance, CosineDistance)}


@register_criterion("fpgm")
class GeometricMedian(Criterion):
    """The units nearest the geometric median, after FPGM-mix's ``norm_rate`` (a fraction) of
    smallest-norm units; the two counts add up, as in the official code. Distances are computed
    among the units that survive the norm step only."""

    def __init__(self, distance: str = "l2", norm_rate: float = 0.0):
        if distance not in DISTANCES:
            raise UserError(f"unknown distance {distance!r}; choose one of: {', '.join(DISTANCES)}")
        if not 0 <= norm_rate < 1:
            raise UserError(f"norm_rate must be in [0, 1), got {norm_rate}")
        self.distance = DISTANCES[distance]()
        self.norm_rate = float(norm_rate)

    def extra(self, units: int) -> int:
        return pruned_count(units, self.norm_rate)

    @torch.no_grad()
    def select(self, view: GroupView, count: int) -> torch.Tensor:
        vectors = view.rows.detach().flatten(1).double()  # double: sums of many distances tie less
        by_norm = min(self.extra(len(vectors)), count)
        order = torch.argsort(vectors.norm(dim=1), stable=True)
        smallest_norm, survivors = order[:by_norm], order[by_norm:]
        scores = self.distance.pairwise(vectors[survivors]).sum(dim=1)
        nearest_median = survivors[torch.argsort(scores, stable=True)[:count - by_norm]]
        return torch.cat([smallest_norm, nearest_median]).sort().values.cpu()

    def describe(self) -> str:
        return f"geometric median, {self.distance.name} distance" + (
            f", {self.norm_rate:g} by norm first" if self.norm_rate else "")
