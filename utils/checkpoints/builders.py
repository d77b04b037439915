"""How a file rebuilds the unpruned model it was saved from: a builder spec {"kind", "name",
"kwargs"} with JSON-able keyword arguments, never a pickled module. Kinds: "torchvision"
(``torchvision.models.<name>``), "callable" (an importable ``package.module:function``) and
"registered" (the toolkit's models/, which adds that kind when it is imported: utils never
imports models)."""
import importlib
import json
from typing import Callable, Optional

import torch.nn as nn

from utils.errors import UserError
from utils.registry import Registry

# How a kind of builder makes the unpruned model from (name, keyword arguments). The models
# package adds "registered" (models.create_model); utils never imports it.
BUILDERS = Registry("model builder", "builder_kind")
REGISTERED_MODELS_PACKAGE = "models"


def _torchvision(name: str, kwargs: dict) -> nn.Module:
    import torchvision
    try:
        return torchvision.models.get_model(name, **kwargs)
    except ValueError as exc:  # an unknown name
        raise UserError(f"torchvision.models has no model {name!r} ({exc})") from None


def _callable(name: str, kwargs: dict) -> nn.Module:
    return import_builder(name)(**kwargs)


BUILDERS.add("torchvision", _torchvision)
BUILDERS.add("callable", _callable)


def import_builder(spec: str) -> Callable[..., nn.Module]:
    """``package.module:function`` imported; one UserError if it cannot be."""
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise UserError(f"a builder is written package.module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import {module_name} for builder {spec!r} ({exc})") from None
    builder = module
    for part in function.split("."):
        builder = getattr(builder, part, None)
        if builder is None:
            raise UserError(f"{module_name} has no {function} (builder {spec!r})")
    if not callable(builder):
        raise UserError(f"builder {spec!r} is not callable")
    return builder


def builder_spec(model: nn.Module, builder=None, builder_kwargs: Optional[dict] = None) -> Optional[dict]:
    """{"kind", "name", "kwargs"}: how the unpruned model is built; None for a model that is
    not registered and has no builder given."""
    kwargs = dict(builder_kwargs or {})
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"builder_kwargs must be JSON-able (a file stores them as data, never "
                        f"pickled objects): {exc}") from None
    if builder is None:
        if hasattr(model, "config") and hasattr(model, "registry_name"):
            # Its own config, widths as they are now: the registered class builds the pruned
            # widths itself, so only what widths do not describe is left to the structure.
            return registered_spec(model.config())
        return None  # loading then needs an unpruned instance (load_model(path, model=...))
    if callable(builder):
        name = f"{builder.__module__}:{builder.__qualname__}"
        if "<" in name or builder.__module__ == "__main__":
            raise UserError(f"builder {name} cannot be imported back by another script (a lambda, "
                            "a local function or __main__'s): give a module-level function of an "
                            "importable module, or 'package.module:function'")
        import_builder(name)
        return {"kind": "callable", "name": name, "kwargs": kwargs}
    builder = str(builder)
    if ":" in builder:  # package.module:function, torchvision's own classes included
        import_builder(builder)
        return {"kind": "callable", "name": builder, "kwargs": kwargs}
    for prefix in ("torchvision.models.", "torchvision."):
        if builder.startswith(prefix):
            return {"kind": "torchvision", "name": builder[len(prefix):], "kwargs": kwargs}
    return {"kind": "registered", "name": builder, "kwargs": kwargs}


def build(spec: dict) -> nn.Module:
    """The unpruned model ``spec`` describes."""
    if spec.get("kind") == "registered" and "registered" not in BUILDERS:
        # The toolkit's own models register this kind when their package is imported; a file
        # naming one loads that package on demand, as a plugin (utils never imports it by name,
        # so the layers stay one-way: scripts -> pruners -> models -> utils).
        importlib.import_module(REGISTERED_MODELS_PACKAGE)
    if spec.get("kind") not in BUILDERS.names():
        raise UserError(f"no builder of kind {spec.get('kind')!r} (known: "
                        f"{', '.join(BUILDERS.names())}; 'registered' needs `import models`)")
    kwargs = dict(spec.get("kwargs") or {})
    try:
        return BUILDERS.get(spec["kind"])(spec["name"], kwargs)
    except TypeError as exc:  # keyword arguments the builder does not take
        raise UserError(f"cannot build {spec['name']} with {kwargs}: {exc}") from None

def registered_spec(config: dict) -> dict:
    """The builder spec of a registered model's config (what the scripts' checkpoints hold)."""
    return {"kind": "registered", "name": config["model"],
            "kwargs": {"input_shape": list(config["input_shape"]),
                       "num_classes": config["num_classes"],
                       "widths": None if config.get("widths") is None else list(config["widths"]),
                       **dict(config.get("options", {}))}}
