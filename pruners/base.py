"""What pruning.py needs from a pruning method, and what it gives the method to retrain with."""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from utils.data import Split
from utils.errors import UserError
from utils.training import fit, make_optimizer, make_scheduler


@dataclass
class PruneContext:
    """Data and training settings for retraining; ``retrain`` runs the shared loop."""
    train: Split
    test: Split
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    augment: bool = False
    generator: Optional[torch.Generator] = None
    progress: bool = True
    print_fn: Callable = print

    def retrain(self, model: nn.Module, epochs: Optional[int] = None,
                after_step: Optional[Callable[[], None]] = None,
                on_epoch_end: Optional[Callable[[int], None]] = None) -> list:
        """Retrain ``model`` with a fresh optimizer over its current parameters (after
        torch.nn.utils.prune these are the weight_orig tensors behind the masks)."""
        epochs = self.epochs if epochs is None else epochs
        if epochs <= 0:
            return []
        optimizer = make_optimizer(self.optimizer, model.parameters(), self.learning_rate,
                                   self.momentum, self.weight_decay)
        scheduler = make_scheduler(self.lr_schedule, optimizer, epochs)
        return fit(model, self.train, self.test, epochs, self.batch_size, optimizer, scheduler,
                   augment=self.augment, generator=self.generator, after_step=after_step,
                   on_epoch_end=on_epoch_end, progress=self.progress, print_fn=self.print_fn)


def check_rate(flag: str, value) -> float:
    """A pruning fraction in [0, 1); anything else is the user's error (one line, exit 2)."""
    rate = float(value)
    if not 0 <= rate < 1:  # also rejects NaN
        raise UserError(f"{flag} must be in [0, 1), got {value}")
    return rate


class Pruner:
    """Base class of a pruning method. Subclasses are registered with @register_pruner(name)."""

    name = ""
    # Store pruned tensors as bitmask + values (pays for unstructured sparsity only).
    sparse_checkpoint = False

    @staticmethod
    def add_arguments(parser) -> None:
        """Method-specific flags; every method's flags are on pruning.py's parser."""

    def __init__(self, args):
        """Checks --cut_rate, shared by every method; subclasses check their own flags after."""
        self.args = args
        self.cut_rate = check_rate("--cut_rate", getattr(args, "cut_rate", 0.5))

    def prune(self, model: nn.Module, context: PruneContext) -> nn.Module:
        """Prune and retrain; return the final model (a new, smaller one if the method
        removes structure). Masks must be made permanent before returning."""
        raise NotImplementedError

    def metadata(self) -> dict:
        """What the checkpoint records about this run (method, rate, rounds, per-layer ...)."""
        return {"method": self.name}

    def inference_model(self, model: nn.Module) -> nn.Module:
        """The model to time and deploy; a method may swap in faster kernels."""
        return model
