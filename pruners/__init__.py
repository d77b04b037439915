"""Pruning: the step-level API for any model (ChannelPruner, MagnitudePruner), the criteria, the
channel-dependency graph and compaction, and the command-line methods registered for
``--pruning_method`` (schedules over the same API).

A command-line pruner adds its own flags (``add_arguments``), checks them (``__init__`` raises
UserError), and turns a trained model into a pruned one (``prune``), retraining through the shared
loop that the PruneContext hands it. See pruners/base.py.
"""
from pruners.base import Pruner, PruneContext  # noqa: F401
from pruners.registry import (create_pruner, pruner_class, pruner_classes,  # noqa: F401
                              pruner_names, register_pruner)
from pruners.channel import ChannelPruner, CompactionMismatch  # noqa: F401
from pruners.criteria import Criterion, criterion_names  # noqa: F401
from utils.errors import UnsupportedOperation  # noqa: F401

# Importing the methods fills the registry.
from pruners import fpgm, norms, songhan  # noqa: E402,F401
from pruners.magnitude import MagnitudePruner  # noqa: E402,F401
