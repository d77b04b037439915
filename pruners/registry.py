"""The pruner registry: ``--pruning_method`` names map to Pruner classes."""
from typing import List, Type

from pruners.base import Pruner
from utils.registry import Registry

# A class learns its name as ``name`` (what its checkpoints' metadata records).
PRUNERS: Registry[Type[Pruner]] = Registry("pruning method", attribute="name")
register_pruner = PRUNERS.register
pruner_names = PRUNERS.names
pruner_class = PRUNERS.get


def pruner_classes() -> List[Type[Pruner]]:
    return [cls for _, cls in PRUNERS.items()]


def create_pruner(name: str, args=None, **kwargs) -> Pruner:
    """From parsed flags (``args``, the command line) or from keyword arguments (code)."""
    cls = pruner_class(name)
    return cls.from_args(args) if args is not None else cls(**kwargs)
