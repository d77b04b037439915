"""The model registry: ``--model`` names map to builders, the way timm's create_model does."""
import inspect
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch.nn as nn

from utils.errors import UserError

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Class decorator: make ``name`` available to :func:`create_model` and ``--model``."""

    def wrap(builder):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = builder
        builder.registry_name = name
        return builder

    return wrap


def model_names():
    return sorted(_MODELS)


def model_class(name: str):
    if name not in _MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    return _MODELS[name]


def create_model(name: str, input_shape: Tuple[int, int, int], num_classes: int,
                 widths: Optional[Sequence[int]] = None, **kwargs) -> nn.Module:
    """``kwargs``: the builder's own arguments (``pretrained``) and its architecture options."""
    builder = model_class(name)
    accepted = set(inspect.signature(builder).parameters) | set(getattr(builder, "architecture_options", {}))
    unknown = set(kwargs) - accepted
    if unknown:
        raise UserError(f"{name} does not take {', '.join(sorted(unknown))}")
    return builder(tuple(input_shape), num_classes, widths=widths, **kwargs)
