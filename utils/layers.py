"""Which layers hold the weights the toolkit counts and prunes: conv and linear layers, in
registration order. Here, below models/, because counting (utils/reporting) needs it as much as
the models and pruners do; models.base re-exports it for them."""
from typing import List, Tuple

import torch.nn as nn

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def weight_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Conv and linear layers in registration order (forward order for every model here)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
