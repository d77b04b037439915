"""The pruner registry: ``--pruning_method`` names map to Pruner classes."""
from typing import Dict, Type

from pruners.base import Pruner
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


def pruner_class(name: str) -> Type[Pruner]:
    if name not in _PRUNERS:
        raise UserError(f"unknown pruning method {name!r}; choose one of: {', '.join(pruner_names())}")
    return _PRUNERS[name]


def create_pruner(name: str, args=None, **kwargs) -> Pruner:
    """From parsed flags (``args``, the command line) or from keyword arguments (code)."""
    cls = pruner_class(name)
    return cls.from_args(args) if args is not None else cls(**kwargs)
