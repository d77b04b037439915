"""Tracing models with torch.fx, shared by the dependency graph (pruners/graph) and the
deployment form (models/inference.py)."""
import torch
import torch.fx
import torch.nn as nn

from utils.errors import UnsupportedOperation
from utils.transformers import ATTENTION_MODULES

# Normalisation layers are traced as one operation even when a library subclasses them
# (torchvision's LayerNorm2d permutes inside its forward): the graph handles them as a whole.
# So are attention modules (utils/transformers.py): their heads are one operation's business.
_NORMALIZATIONS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


class LeafTracer(torch.fx.Tracer):
    """torch.nn modules are leaves as usual; so are normalisation layers of any class, attention
    modules, and the models' own ``fx_leaf`` modules (input adapters whose forward branches on
    the input's shape)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (getattr(type(module), "fx_leaf", False) or isinstance(module, _NORMALIZATIONS)
                or isinstance(module, ATTENTION_MODULES)
                or super().is_leaf_module(module, qualified_name))


def traced_graph(model: nn.Module) -> torch.fx.Graph:
    """``model``'s torch.fx graph, whose targets name ``model``'s own modules and tensors. A
    model torch.fx cannot trace is refused with torch.fx's reason."""
    try:
        return LeafTracer().trace(model)
    except Exception as exc:  # data-dependent control flow and the like
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnsupportedOperation(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(exc).__name__}: {reason}); "
            "structured pruning needs a forward() without Python branches on tensor values: move "
            "such code into a submodule marked as a leaf (a class attribute fx_leaf = True) whose "
            "channels are not pruned, or bind the branching arguments (torch.fx's concrete_args)"
        ) from None


def traced(model: nn.Module) -> torch.fx.GraphModule:
    """``model`` as a torch.fx GraphModule sharing its modules (so its tensors too); see
    ``traced_graph``."""
    return torch.fx.GraphModule(model, traced_graph(model))
