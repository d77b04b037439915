"""What every registered model shares: a width config, architecture options, and how its widths
map onto channel groups.

``widths`` are the sizes of the model's channel groups: channels that are pruned together because
one set of layers writes them and others read them. In a plain chain that is each hidden layer's
outputs (layer i feeds layer i+1); in a residual network, a block's internal channels, or a
residual stream that every block of a stage adds into. ``width_groups`` says, per width, one
(layer, output channel) inside the group it counts, so that a structurally pruned model's widths
follow from which channels it keeps (pruners/compact.py), whatever the architecture.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from utils.errors import UserError
from utils.layers import PRUNABLE_TYPES, weight_layers  # noqa: F401 (models' and pruners' import)


def flat_size(features, input_shape) -> int:
    """Number of features a conv stack hands to the first linear layer for one image."""
    with torch.no_grad():
        return features(torch.zeros(1, *input_shape)).numel()


class PrunableNet(nn.Module):
    """Base class: subclasses set ``default_widths`` (or override ``widths_for``) and build their
    layers from ``self.widths``; ``architecture_options`` (name -> default) are constructor
    arguments that change the layers and are stored in checkpoints (unlike ``pretrained``)."""

    default_widths: Tuple[int, ...] = ()
    architecture_options: Dict[str, object] = {}
    # Layers before which Han et al.'s dropout rule rescales dropout: {layer: dropout module}.
    dropout_before: Dict[str, str] = {}

    @classmethod
    def widths_for(cls, **options) -> Tuple[int, ...]:
        """The unpruned widths (they may depend on the architecture options)."""
        return tuple(cls.default_widths)

    def __init__(self, input_shape: Tuple[int, int, int], num_classes: int,
                 widths: Optional[Sequence[int]] = None, **options):
        super().__init__()
        unknown = set(options) - set(self.architecture_options)
        if unknown:
            raise UserError(f"{type(self).__name__} has no option {', '.join(sorted(unknown))}")
        self.options = {name: options.get(name, default)
                        for name, default in self.architecture_options.items()}
        defaults = self.widths_for(**self.options)
        widths = tuple(int(w) for w in (widths if widths is not None else defaults))
        if len(widths) != len(defaults) or any(w < 1 for w in widths):
            raise UserError(
                f"{type(self).__name__} needs {len(defaults)} positive widths "
                f"(default {list(defaults)}), got {list(widths)}")
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.widths = widths

    @property
    def original_widths(self) -> Tuple[int, ...]:
        return self.widths_for(**self.options)

    def config(self) -> dict:
        """What rebuilds this model without flags; stored in every checkpoint."""
        config = {"model": self.registry_name, "input_shape": list(self.input_shape),
                  "num_classes": self.num_classes, "widths": list(self.widths)}
        if self.options:
            config["options"] = dict(self.options)
        return config

    def width_groups(self) -> List[Tuple[str, int]]:
        """Per width, a (layer name, output channel) inside the channel group that width counts.
        A plain chain's widths are its hidden layers' outputs, in forward order."""
        hidden = weight_layers(self)[:-1]
        if len(hidden) != len(self.widths):
            raise NotImplementedError(f"{type(self).__name__} must say which channel group each "
                                      "width counts (width_groups)")
        return [(name, 0) for name, _ in hidden]
