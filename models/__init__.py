"""Models: every one is built from (name, input shape, number of classes, widths, architecture
options). ``widths`` are the sizes of the model's channel groups (in a plain chain, the outputs of
every conv/linear layer but the classifier; with shortcuts, block-internal channels and residual
streams: see models/base.py); a structurally pruned model is the same class with smaller widths.
"""
from models.registry import create_model, model_class, model_names, register_model  # noqa: F401

# Importing the families fills the registry.
from models import alexnet, lenet, resnet_cifar, resnet_imagenet, vgg  # noqa: E402,F401
from models.base import PrunableNet, weight_layers  # noqa: E402,F401
