"""What every registered model shares: a width config and a forward-ordered list of layers."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from utils.errors import UserError

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def weight_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Conv and linear layers in registration order, which is forward order for every model here
    (plain chains, no branches): layer i feeds layer i+1."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def flat_size(features, input_shape) -> int:
    """Number of features a conv stack hands to the first linear layer for one image."""
    with torch.no_grad():
        return features(torch.zeros(1, *input_shape)).numel()


class PrunableNet(nn.Module):
    """Base class: subclasses set ``default_widths`` and build their layers from ``self.widths``."""

    default_widths: Tuple[int, ...] = ()

    def __init__(self, input_shape: Tuple[int, int, int], num_classes: int,
                 widths: Optional[Sequence[int]] = None):
        super().__init__()
        widths = tuple(int(w) for w in (widths if widths is not None else self.default_widths))
        if len(widths) != len(self.default_widths) or any(w < 1 for w in widths):
            raise UserError(
                f"{type(self).__name__} needs {len(self.default_widths)} positive widths "
                f"(default {list(self.default_widths)}), got {list(widths)}")
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.widths = widths

    def config(self) -> dict:
        """What rebuilds this model without flags; stored in every checkpoint."""
        return {"model": self.registry_name, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "widths": list(self.widths)}
