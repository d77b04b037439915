"""FPGM: filter pruning via geometric median (He et al., CVPR 2019).

In every channel group the filters whose summed distance to all other filters of the group is
smallest lie nearest the group's geometric median: what they compute the others can stand in
for, so they go. The paper's schedule is soft: selected and zeroed at the end of every retraining
epoch (pruners/structured.py holds the schedule, the groups and the physical removal).
"""
import torch
import torch.nn as nn

from pruners import register_pruner
from pruners.base import DEFAULT_CUT_RATE, check_rate
from pruners.structured import FilterCriterion, StructuredPruner, pruned_count
from utils import cli
from utils.errors import UserError


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


class GeometricMedianFilters(FilterCriterion):
    """``amount`` (a fraction) of the filters nearest the geometric median, after FPGM-mix's
    ``norm_amount`` (a fraction) of smallest-norm filters; the two counts add up, as in the
    official code (its rate_dist and 1 - rate_norm). Distances are computed among the filters
    that survive the norm step only."""

    name = "fpgm"

    def __init__(self, amount: float, distance: str = "l2", norm_amount: float = 0.0,
                 channel_multiple: int = 1):
        super().__init__(amount, channel_multiple)
        if distance not in DISTANCES:
            raise UserError(f"unknown distance {distance!r}; choose one of: {', '.join(DISTANCES)}")
        self.norm_amount = norm_amount
        self.distance = DISTANCES[distance]()

    def extra(self, filters: int) -> int:
        return pruned_count(filters, self.norm_amount)

    def counts(self, filters: int):
        """(by norm, by distance) filters to prune out of ``filters``; the norm share is taken
        first when --channel_multiple moves the total."""
        total = self.pruned(filters)
        by_norm = min(self.extra(filters), total)
        return by_norm, total - by_norm

    @torch.no_grad()
    def select(self, weight: torch.Tensor) -> torch.Tensor:
        """Sorted indices of the filters to prune (dimension 0 of ``weight``)."""
        vectors = weight.detach().flatten(1).double()  # double: sums of many distances tie less
        by_norm, by_distance = self.counts(len(vectors))
        order = torch.argsort(vectors.norm(dim=1), stable=True)
        smallest_norm, survivors = order[:by_norm], order[by_norm:]
        scores = self.distance.pairwise(vectors[survivors]).sum(dim=1)
        nearest_median = survivors[torch.argsort(scores, stable=True)[:by_distance]]
        return torch.cat([smallest_norm, nearest_median]).sort().values


@register_pruner("fpgm")
class FPGMPruner(StructuredPruner):
    """He et al. 2019: geometric median, soft schedule (the paper's)."""

    default_mode = "soft"

    @staticmethod
    def add_arguments(group) -> None:
        group.add_argument("--fpgm_distance", choices=sorted(DISTANCES), default="l2",
                           help="distance between flattened filters")
        group.add_argument("--fpgm_norm_rate", type=cli.fraction, default=0.0,
                           help="FPGM-mix: fraction of each group's filters removed first by "
                                "smallest L2 norm, in addition to the --cut_rate fraction chosen "
                                "by distance among the rest; the two add up as in the official "
                                "code (its --rate_norm 0.7 --rate_dist 0.1 is "
                                "--fpgm_norm_rate=0.3 --cut_rate=0.1). 0 = FPGM only")

    @classmethod
    def from_args(cls, args) -> "FPGMPruner":
        return cls(distance=args.fpgm_distance, norm_rate=args.fpgm_norm_rate,
                   **cls.shared_kwargs(args))

    def __init__(self, cut_rate: float = DEFAULT_CUT_RATE, distance: str = "l2",
                 norm_rate: float = 0.0, **kwargs):
        self.distance_name = distance
        self.norm_rate = check_rate("--fpgm_norm_rate", norm_rate)
        super().__init__(cut_rate, **kwargs)

    def make_criterion(self, rate: float) -> GeometricMedianFilters:
        return GeometricMedianFilters(rate, self.distance_name, self.norm_rate,
                                      self.channel_multiple)

    def describe_criterion(self) -> str:
        return f"geometric median, {self.criterion.distance.name} distance" + (
            f", {self.norm_rate:g} by norm first" if self.norm_rate else "")

    def describe_rate(self, group) -> str:
        return (f"--cut_rate={self.group_rates[group.name]} with --fpgm_norm_rate={self.norm_rate}"
                if self.norm_rate else super().describe_rate(group))

    def metadata(self) -> dict:
        return {**super().metadata(), "norm_rate": self.norm_rate,
                "distance": self.criterion.distance.name}
