"""FPGM from the command line: He et al., CVPR 2019, "Filter Pruning via Geometric Median".

The criterion (the filters nearest their group's geometric median, and FPGM-mix's norm share)
is pruners/criteria/fpgm.py; the schedule, soft as in the paper, is pruners/structured.py.
"""
from pruners.registry import register_pruner
from pruners.base import DEFAULT_CUT_RATE, check_rate
from pruners.criteria.fpgm import DISTANCES, GeometricMedian
from pruners.structured import StructuredPruner
from utils import cli


@register_pruner("fpgm")
class FPGMPruner(StructuredPruner):
    """He et al. 2019: geometric median, soft schedule (the paper's)."""

    default_mode = "soft"
    citation = "FPGM (He et al. 2019)"

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
        self.norm_rate = check_rate("norm_rate", norm_rate)
        super().__init__(cut_rate, **kwargs)

    def make_criterion(self) -> GeometricMedian:
        return GeometricMedian(self.distance_name, self.norm_rate)

    def metadata(self) -> dict:
        return {**super().metadata(), "norm_rate": self.norm_rate,
                "distance": self.criterion.distance.name}
