"""Run a model in eval mode (dropout off, BatchNorm on its running statistics) and put it back
the way it was, whatever happens inside."""
import contextlib
from typing import Iterator

import torch.nn as nn


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    modes = [m.training for m in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
