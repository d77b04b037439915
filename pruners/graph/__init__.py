"""The channel-dependency graph: which channels of any traceable model must be pruned together
(core.py: labels, sets, groups; operations.py: the explicit table of operations)."""
from pruners.graph.core import (ATTENTION_UNITS, Attr, DependencyGraph, Group,  # noqa: F401
                                Label, Normalization, SizeUse, TensorUse)
from pruners.graph.build import as_inputs, build_graph, is_chain  # noqa: F401
from utils.errors import UnsupportedOperation  # noqa: F401
from utils.tracing import traced  # noqa: F401
