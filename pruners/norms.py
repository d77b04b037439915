"""The other filter methods from the command line, on the same groups, schedule and removal as
FPGM (pruners/structured.py); their criteria are pruners/criteria/norms.py and taylor.py.

- l1norm: Li et al., ICLR 2017, "Pruning Filters for Efficient ConvNets": the filters of smallest
  L1 norm, pruned once and retrained (fixed schedule).
- sfp: He et al., IJCAI 2018, "Soft Filter Pruning": the filters of smallest L2 norm, re-selected
  and zeroed at the end of every epoch while they keep training (soft schedule).
- taylor: Molchanov et al., CVPR 2019: the channels of smallest first-order Taylor importance
  (activation x gradient) over a few training batches at every selection (soft schedule here).
"""
from pruners.registry import register_pruner
from pruners.criteria import L1Norm, SoftFilterNorm, Taylor
from pruners.structured import StructuredPruner


@register_pruner("l1norm")
class L1NormPruner(StructuredPruner):
    """Li et al. 2017: smallest L1 norm, pruned once then retrained (fixed schedule)."""

    default_mode = "fixed"
    citation = "L1 norm (Li et al. 2017)"

    def make_criterion(self):
        return L1Norm()


@register_pruner("sfp")
class SoftFilterPruner(StructuredPruner):
    """He et al. 2018: smallest L2 norm, re-selected and zeroed every epoch (soft schedule)."""

    default_mode = "soft"
    citation = "SFP (He et al. 2018)"

    def make_criterion(self):
        return SoftFilterNorm()


@register_pruner("taylor")
class TaylorPruner(StructuredPruner):
    """Molchanov et al. 2019: first-order Taylor importance from training batches."""

    default_mode = "soft"
    citation = "Taylor (Molchanov et al. 2019)"

    def make_criterion(self):
        return Taylor()
