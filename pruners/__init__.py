"""Pruner registry: ``--pruning_method`` names map to Pruner classes.

A pruner adds its own flags (``add_arguments``), checks them (``__init__`` raises UserError),
and turns a trained model into a pruned one (``prune``), retraining through the shared loop that
the PruneContext hands it. See pruners/base.py.
"""
from pruners.base import Pruner, PruneContext  # noqa: F401
from pruners.registry import (create_pruner, pruner_class, pruner_classes,  # noqa: F401
                              pruner_names, register_pruner)

# Importing the methods fills the registry.
from pruners import fpgm, norms, songhan  # noqa: E402,F401
