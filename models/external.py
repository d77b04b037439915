"""Models the toolkit does not define: any torchvision classification builder
(``--model=torchvision.mobilenet_v2``) or a user's own (``--model=package.module:function``),
built behind an input adapter so that they train on any dataset.

The net is the builder's own module tree, unchanged, under ``net``; pruning it removes channels
by surgery (pruners/compact.py) and a checkpoint records what changed per module (its
``structure``), since such a model has no widths config. Its config names the builder, so a
checkpoint rebuilds it from the file alone.

- torchvision builders get ``num_classes`` from the dataset; grey images are repeated to three
  channels. Inception v3 and GoogLeNet are built without their auxiliary classifiers (their
  training-mode outputs are tuples, which a plain classification loop does not take); the
  vision transformers get the input size (ViT's ``image_size``, MaxViT's ``input_size``).
- a user builder gets ``num_classes``, and ``input_shape`` or ``in_channels`` when its signature
  names them, plus ``builder_kwargs`` (JSON-able, from --model_kwargs). torchvision's classes
  named this way (``torchvision.models.vision_transformer:VisionTransformer`` with
  --model_kwargs for a small one) get three channels, as its builders do.
- ``image_size``: the adapter resizes inputs to image_size x image_size first (bilinear), for
  models that need a minimum or a fixed size (Inception v3 needs 75x75; the default is the
  dataset's own size).
"""
import inspect
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from models.adapters import ImageAdapter
from utils.checkpoints.builders import import_builder
from utils.errors import UserError

TORCHVISION_PREFIX = "torchvision."


def is_external(name: str) -> bool:
    return name.startswith(TORCHVISION_PREFIX) or ":" in name


def is_torchvision_builder(name: str) -> bool:
    """``torchvision.<name>``: one of torchvision.models' builders (not a module:function)."""
    return name.startswith(TORCHVISION_PREFIX) and ":" not in name


def torchvision_names() -> Sequence[str]:
    """torchvision's classification builders (torchvision.models, not its detection or video
    sub-packages)."""
    import torchvision
    return torchvision.models.list_models(module=torchvision.models)


def check_name(name: str) -> str:
    """``name`` if it can be built, else one UserError saying why (an unknown torchvision name,
    a module that does not import, a function it lacks)."""
    if is_torchvision_builder(name):
        short = name[len(TORCHVISION_PREFIX):]
        if short not in torchvision_names():
            raise UserError(f"torchvision.models has no classification model {short!r}; choose "
                            f"one of torchvision.models.list_models(), e.g. torchvision.resnet18")
    else:
        import_builder(name)
    return name


# How builders refuse their arguments (torchvision's classes assert, for example that
# hidden_dim divides by num_heads): the user's --model_kwargs, so one line. Other exceptions are
# a builder's own bugs and keep their traceback.
BUILDER_ARGUMENT_ERRORS = (TypeError, ValueError, AssertionError)


def _torchvision_net(short: str, num_classes: int, size: int, kwargs: dict) -> nn.Module:
    import torchvision
    kwargs = {"num_classes": num_classes, **kwargs}
    if short in ("inception_v3", "googlenet"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)  # their default warns that it will change
    elif short.startswith("vit_"):
        kwargs.setdefault("image_size", size)
    elif short.startswith("maxvit"):
        kwargs.setdefault("input_size", (size, size))
    try:
        return torchvision.models.get_model(short, **kwargs)
    except BUILDER_ARGUMENT_ERRORS as exc:
        raise UserError(f"torchvision.{short} cannot be built with {kwargs}: {exc}") from None


def _user_net(name: str, input_shape: Tuple[int, ...], num_classes: int, kwargs: dict) -> nn.Module:
    builder = import_builder(name)
    try:
        accepted = set(inspect.signature(builder).parameters)
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        accepted = set()
    given = dict(kwargs)
    for key, value in (("num_classes", num_classes), ("input_shape", tuple(input_shape)),
                       ("in_channels", input_shape[0])):
        if key in accepted:
            given.setdefault(key, value)
    try:
        net = builder(**given)
    except BUILDER_ARGUMENT_ERRORS as exc:
        raise UserError(f"builder {name} cannot be called with {given}: "
                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"builder {name} returned a {type(net).__name__}, not an nn.Module")
    return net


class ExternalModel(nn.Module):
    """A builder's model behind an ImageAdapter; config() makes it rebuildable from a file."""

    widths = None  # no widths config: a checkpoint records the structure per module

    def __init__(self, name: str, input_shape: Sequence[int], num_classes: int,
                 widths: Optional[Sequence[int]] = None, image_size: Optional[int] = None,
                 builder_kwargs: Optional[dict] = None):
        super().__init__()
        if widths is not None:
            raise UserError(f"{name} has no widths config (--widths is for the toolkit's own "
                            "models); prune it instead")
        check_name(name)
        self.registry_name = name
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)
        self.options = {"image_size": image_size, "builder_kwargs": dict(builder_kwargs or {})}
        size = int(image_size or self.input_shape[-1])
        if is_torchvision_builder(name):
            self.adapter = ImageAdapter(channels=3, size=int(image_size or 0))
            self.net = _torchvision_net(name[len(TORCHVISION_PREFIX):], self.num_classes, size,
                                        self.options["builder_kwargs"])
        else:
            # torchvision's own classes (torchvision.models.vision_transformer:VisionTransformer,
            # to choose its size) take three channels like its builders.
            channels = 3 if name.startswith("torchvision") else self.input_shape[0]
            self.adapter = ImageAdapter(channels=channels, size=int(image_size or 0))
            self.net = _user_net(name, (channels, size, size), self.num_classes,
                                 self.options["builder_kwargs"])

    def config(self) -> dict:
        return {"model": self.registry_name, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "widths": None, "options": dict(self.options)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapter(x))


def check_forward(model: nn.Module, input_shape: Sequence[int], name: str) -> None:
    """One forward pass on a zero image before any training: a model that cannot take the
    dataset's images (too small for its downsampling, a fixed size) is one line naming
    --image_size, not a traceback an epoch in."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            model(torch.zeros(1, *input_shape, device=device))
    except (RuntimeError, AssertionError, ValueError) as exc:  # torch._assert: AssertionError
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{name} cannot run on {'x'.join(map(str, input_shape))} images ({line}); "
                        "give --image_size=N, a square size the model's input adapter resizes "
                        "to (224 is what torchvision's models were designed for)") from None
    finally:
        model.train(was_training)
