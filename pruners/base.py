"""What pruning.py needs from a pruning method, and what it gives the method to retrain with.

A pruner is built from keyword arguments (tests and benchmarks call the class directly); the
command line goes through ``from_args``, which maps the method's flags onto them. Every method's
flags live on pruning.py's parser in a group of their own (``add_arguments``), so a flag given to
the wrong method can be refused (script_setup.foreign_flags).
"""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from utils.data import Split
from utils.errors import UserError
from utils.training import TrainingRun, TrainingSettings, evaluate, fit


@dataclass
class PruneContext:
    """Data and training settings for retraining; ``retrain`` runs the shared loop. With a
    validation split (``val``), what a method measures along the way is measured on it and the
    test split is left for the final figure."""
    train: Split
    test: Split
    settings: TrainingSettings
    augment: bool = False
    generator: Optional[torch.Generator] = None
    print_fn: Callable = print
    val: Optional[Split] = None
    run: Optional[TrainingRun] = None  # resumable state and the per-epoch log (pruning.py's)

    @property
    def epochs(self) -> int:
        return self.settings.epochs

    @property
    def monitor(self) -> Split:
        return self.val if self.val is not None else self.test

    @property
    def monitor_name(self) -> str:
        return "val" if self.val is not None else "test"

    def accuracy(self, model: nn.Module, history: Optional[list] = None) -> float:
        """Top-1 on the monitored split: the last epoch's figure when ``history`` has one."""
        if history:
            return history[-1][f"{self.monitor_name}_acc"]
        return evaluate(model, self.monitor)["acc"]

    def retrain(self, model: nn.Module, epochs: Optional[int] = None,
                after_step: Optional[Callable[[], None]] = None,
                on_epoch_end: Optional[Callable[[int], None]] = None,
                phase: str = "retrain") -> list:
        """Retrain ``model`` with a fresh optimizer over its current parameters (after
        torch.nn.utils.prune these are the weight_orig tensors behind the masks; after a physical
        removal, the new smaller tensors). ``phase`` names it in the run's log and resumable
        state."""
        epochs = self.settings.epochs if epochs is None else epochs
        if epochs <= 0:
            return []
        return fit(model, self.train, self.monitor, self.settings, epochs=epochs,
                   augment=self.augment, generator=self.generator, after_step=after_step,
                   on_epoch_end=on_epoch_end, print_fn=self.print_fn,
                   monitor_name=self.monitor_name, run=self.run, phase=phase)

    def track(self, name: str, get: Callable, set: Callable) -> None:
        """State a method changes during retraining besides the weights (a soft selection):
        saved with a resumable run and restored when it resumes (TrainingRun.track)."""
        if self.run is not None:
            self.run.track(name, get, set)


def check_rate(name: str, value) -> float:
    """A pruning fraction in [0, 1); anything else is the user's error (one line, exit 2).
    ``name`` is the keyword argument the value was given as (``cut_rate``); a script whose flag
    parsing lets a bad value through names its flag itself."""
    rate = float(value)
    if not 0 <= rate < 1:  # also rejects NaN
        raise UserError(f"{name} must be in [0, 1), got {value}")
    return rate


# pruning.py's --cut_rate default; a method can tell whether the user changed it.
DEFAULT_CUT_RATE = 0.5


class Pruner:
    """Base class of a pruning method. Subclasses are registered with @register_pruner(name)."""

    name = ""
    # Store pruned tensors as bitmask + values (pays for unstructured sparsity only).
    sparse_checkpoint = False
    # Whether prune() keeps the model's architecture (masks) or builds a smaller one.
    structured = False
    # How reports name the method: its paper, or the method's own name when unset.
    citation = ""

    @staticmethod
    def add_arguments(group) -> None:
        """Method-specific flags, added to an argument group of their own on pruning.py."""

    @classmethod
    def argument_groups(cls):
        """(title, function adding the flags) of each flag group this method reads; methods
        that share flags name the same group, which pruning.py adds once."""
        if cls.add_arguments is Pruner.add_arguments:
            return []
        return [(f"{cls.name} options", cls.add_arguments)]

    @classmethod
    def from_args(cls, args) -> "Pruner":
        """The pruner the command line asks for; subclasses map their flags to keywords."""
        return cls(cut_rate=args.cut_rate)

    def __init__(self, cut_rate: float = DEFAULT_CUT_RATE):
        """Checks the rate, shared by every method; subclasses check their own keywords after."""
        self.cut_rate = check_rate("cut_rate", cut_rate)

    def check_model(self, model: nn.Module) -> None:
        """Refuse, before any training, a model this method cannot prune as asked."""

    def prune(self, model: nn.Module, context: PruneContext) -> nn.Module:
        """Prune and retrain; return the final model (a new, smaller one if the method
        removes structure)."""
        raise NotImplementedError

    def metadata(self) -> dict:
        """What the checkpoint records about this run (method, rate, rounds, per-layer ...)."""
        return {"method": self.name}

    def inference_model(self, model: nn.Module) -> nn.Module:
        """The model to time and deploy; a method may swap in faster kernels."""
        return model


def _read_rates_file(path: Path) -> list:
    """(name, rate) pairs of a JSON or YAML file, in the file's order, duplicates kept (the
    caller refuses them: json and yaml would keep the last silently)."""
    try:
        content = path.read_text()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{path} is not a text file; --layer_rates expects a "
                                         f"{path.suffix[1:].upper()} mapping of layer names to "
                                         "rates") from None
    kind = "JSON" if path.suffix == ".json" else "YAML"
    if kind == "JSON":
        pairs = []

        def keep_pairs(items):  # every key of every object, in order: duplicates stay visible
            pairs.append(items)
            return dict(items)
        try:
            mapping = json.loads(content, object_pairs_hook=keep_pairs)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{path} is not valid JSON "
                                             f"({str(exc).splitlines()[0]})") from None
        if not isinstance(mapping, dict):
            raise argparse.ArgumentTypeError(f"{path} must hold a mapping of layer names to rates")
        return pairs[-1]  # the outermost object is built last
    try:
        import yaml
    except ImportError:
        raise argparse.ArgumentTypeError(f"{path} is YAML: pip install pyyaml, or give the rates "
                                         "as JSON or NAME=RATE,...") from None

    class PairsLoader(yaml.SafeLoader):
        """safe_load, but a mapping comes back as its (key, value) pairs, so a key given twice
        is seen rather than silently overwritten."""

    class Pairs(list):
        """A YAML mapping's pairs (a YAML sequence stays a plain list)."""

    def pairs_of(loader, node):
        return Pairs((loader.construct_object(k, deep=True), loader.construct_object(v, deep=True))
                     for k, v in node.value)
    PairsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, pairs_of)
    try:
        mapping = yaml.load(content, Loader=PairsLoader)
    except yaml.YAMLError as exc:  # not a ValueError: a parser's own exception
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise argparse.ArgumentTypeError(f"{path} is not valid YAML ({problem}{at})") from None
    if not isinstance(mapping, Pairs):
        raise argparse.ArgumentTypeError(f"{path} must hold a mapping of layer names to rates")
    return mapping


def parse_layer_rates(text: str) -> Dict[str, float]:
    """--layer_rates: NAME=RATE,NAME=RATE... or a JSON (or, with PyYAML installed, YAML) file
    holding a {name: rate} mapping; every rate in [0, 1), every name once."""
    if text.endswith((".json", ".yaml", ".yml")):
        items = _read_rates_file(Path(text))
    else:
        items = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise argparse.ArgumentTypeError(f"expected NAME=RATE, got {part!r}")
            items.append((name.strip(), value.strip()))
    rates = {}
    for name, value in items:
        name = str(name)
        if name in rates:  # two rates for one layer: which one was meant cannot be known
            raise argparse.ArgumentTypeError(f"{name} is given twice (rates {rates[name]:g} and "
                                             f"{value}); give each layer once")
        if isinstance(value, bool):  # YAML reads yes/no/on/off as booleans, float() as 1/0
            raise argparse.ArgumentTypeError(f"the rate of {name} is not a number: {value!r}")
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"the rate of {name} is not a number: {value!r}") from None
        if not 0 <= rate < 1:
            raise argparse.ArgumentTypeError(f"the rate of {name} must be in [0, 1), got {value}")
        rates[name] = rate
    if not rates:
        raise argparse.ArgumentTypeError("no NAME=RATE pairs given")
    return rates
