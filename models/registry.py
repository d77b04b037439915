"""The model registry: ``--model`` names map to builders, the way timm's create_model does."""
import inspect
from typing import Callable, Optional, Sequence, Tuple

import torch.nn as nn

from models.external import ExternalModel, check_name, is_external
from utils.errors import UserError
from utils.registry import Registry

# A builder learns its name as ``registry_name`` (what a checkpoint's config records).
MODELS: Registry[Callable[..., nn.Module]] = Registry("model", attribute="registry_name")
register_model = MODELS.register
model_names = MODELS.names
model_class = MODELS.get


def create_model(name: str, input_shape: Tuple[int, int, int], num_classes: int,
                 widths: Optional[Sequence[int]] = None, **kwargs) -> nn.Module:
    """``kwargs``: the builder's own arguments (``pretrained``) and its architecture options.
    ``torchvision.<name>`` and ``package.module:function`` build any other model
    (models/external.py)."""
    if is_external(name):
        return ExternalModel(name, input_shape, num_classes, widths, **kwargs)
    builder = model_class(name)
    accepted = set(inspect.signature(builder).parameters) | set(getattr(builder, "architecture_options", {}))
    unknown = set(kwargs) - accepted
    if unknown:
        raise UserError(f"{name} does not take {', '.join(sorted(unknown))}")
    return builder(tuple(input_shape), num_classes, widths=widths, **kwargs)


def check_model_name(name: str) -> str:
    """A --model value: a registered name, ``torchvision.<name>`` or ``package.module:function``;
    anything else is one UserError listing what there is."""
    if is_external(name):
        return check_name(name)
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}, or "
                        "torchvision.<name> (torchvision.models' classification models), or "
                        "package.module:function (your own builder)")
    return name


MODEL_NAME_HELP = ("a registered model, torchvision.<name> (any classification model of "
                   "torchvision.models), or package.module:function (your own builder)")
