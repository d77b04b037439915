"""Criteria: one small class each, scoring the channels of a group (pruners/criteria/base.py).

A criterion is chosen by name everywhere (``ChannelPruner(criterion="taylor")``,
``pruning.py --pruning_method=taylor``) or passed as an instance."""
from pruners.criteria.base import (Criterion, GroupView, create_criterion,  # noqa: F401
                                   criterion_names, register_criterion)
from pruners.criteria import fpgm, norms, taylor  # noqa: E402,F401  (fill the registry)
from pruners.criteria.fpgm import DISTANCES, GeometricMedian  # noqa: E402,F401
from pruners.criteria.norms import L1Norm, L2Norm, SmallestNorm, SoftFilterNorm  # noqa: E402,F401
from pruners.criteria.taylor import Taylor  # noqa: E402,F401
