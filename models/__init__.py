"""Models: every one is built from (name, input shape, number of classes, widths, architecture
options). ``widths`` are the sizes of the model's channel groups (in a plain chain, the outputs of
every conv/linear layer but the classifier; with shortcuts, block-internal channels and residual
streams: see models/base.py); a structurally pruned model is the same class with smaller widths.
"""
import importlib
import pkgutil

from models.registry import (MODEL_NAME_HELP, check_model_name, create_model,  # noqa: F401
                             model_class, model_names, register_model)
from models.external import check_forward, is_external  # noqa: F401
from models.base import PrunableNet, weight_layers  # noqa: F401
from utils.checkpoints.builders import BUILDERS

# Files name a registered model by its config; utils builds it through this entry (utils never
# imports models).
BUILDERS.add("registered", lambda name, kwargs: create_model(name, **kwargs))

# Every module of this folder is imported, so a new file's @register_model takes effect without
# an import list to forget (models/ holds only model code; importing a module has no other
# effect than defining it).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
