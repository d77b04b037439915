"""Run a model in eval (or training) mode and put it back the way it was, whatever happens
inside: every module's own flag, so a BatchNorm its user froze in eval mode inside a training
model stays frozen (``model.train(was)`` would set them all to the model's flag)."""
import contextlib
from typing import Iterator

import torch.nn as nn


@contextlib.contextmanager
def training_mode(mode: bool, *modules: nn.Module) -> Iterator[None]:
    tree = [m for module in modules for m in module.modules()]
    saved = [m.training for m in tree]
    if any(type(m).train is not nn.Module.train for m in tree):
        for module in modules:
            module.train(mode)  # a class's own train() decides
    else:
        # nn.Module.train only sets these flags, through a Python call per module: a
        # measurable part of building a small model's graph, which switches modes several times.
        for m in tree:
            object.__setattr__(m, "training", mode)
    try:
        yield
    finally:
        for module, was in zip(tree, saved):
            object.__setattr__(module, "training", was)  # what Module.__setattr__ does for it


def eval_mode(*modules: nn.Module):
    return training_mode(False, *modules)

