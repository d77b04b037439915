"""The model registry: ``--model`` names map to builders, the way timm's create_model does."""
import inspect
from typing import Callable, Optional, Sequence, Tuple

import torch.nn as nn

from utils.errors import UserError
from utils.registry import Registry

# A builder learns its name as ``registry_name`` (what a checkpoint's config records).
MODELS: Registry[Callable[..., nn.Module]] = Registry("model", attribute="registry_name")
register_model = MODELS.register
model_names = MODELS.names
model_class = MODELS.get


def create_model(name: str, input_shape: Tuple[int, int, int], num_classes: int,
                 widths: Optional[Sequence[int]] = None, **kwargs) -> nn.Module:
    """``kwargs``: the builder's own arguments (``pretrained``) and its architecture options."""
    builder = model_class(name)
    accepted = set(inspect.signature(builder).parameters) | set(getattr(builder, "architecture_options", {}))
    unknown = set(kwargs) - accepted
    if unknown:
        raise UserError(f"{name} does not take {', '.join(sorted(unknown))}")
    return builder(tuple(input_shape), num_classes, widths=widths, **kwargs)
