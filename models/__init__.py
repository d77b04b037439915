"""Models: every one is built from (name, input shape, number of classes, widths). ``widths`` are
the output channels or neurons of every conv/linear layer except the classifier, in forward order;
a structurally pruned model is the same class with smaller widths.
"""
from models.registry import create_model, model_class, model_names, register_model  # noqa: F401

# Importing the families fills the registry.
from models import alexnet, lenet  # noqa: E402,F401
from models.base import PrunableNet, weight_layers  # noqa: E402,F401
