"""Pruner registry: ``--pruning_method`` names map to Pruner classes.

A pruner adds its own flags (``add_arguments``), checks them (``__init__`` raises UserError),
and turns a trained model into a pruned one (``prune``), retraining through the shared loop that
the PruneContext hands it. See pruners/base.py.
"""
from typing import Dict, Type

from pruners.base import Pruner, PruneContext  # noqa: F401
from utils.errors import UserError

_PRUNERS: Dict[str, Type[Pruner]] = {}


def register_pruner(name: str):
    def wrap(cls):
        if name in _PRUNERS:
            raise ValueError(f"pruner {name!r} registered twice")
        cls.name = name
        _PRUNERS[name] = cls
        return cls
    return wrap


def pruner_names():
    return sorted(_PRUNERS)


def pruner_classes():
    return [_PRUNERS[name] for name in pruner_names()]


def create_pruner(name: str, args) -> Pruner:
    if name not in _PRUNERS:
        raise UserError(f"unknown pruning method {name!r}; choose one of: {', '.join(pruner_names())}")
    return _PRUNERS[name](args)


# Importing the methods fills the registry.
from pruners import fpgm  # noqa: E402,F401
from pruners import songhan  # noqa: E402,F401
