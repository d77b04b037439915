"""Training settings: built once from the flags (``from_args``) or directly in code, then handed to
fit() and to the pruners' retraining, instead of a dozen loose parameters."""
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from utils.training.optim import make_optimizer, make_scheduler


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 0.001
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    seed: int = 0
    progress: bool = True
    # Training speed (utils/training/acceleration.py): channels_last None means auto.
    channels_last: Optional[bool] = None
    compile: bool = False
    amp: Optional[str] = None

    @classmethod
    def from_args(cls, args, **overrides) -> "TrainingSettings":
        """The fields the command line gives (flags of the same names; ``--no_progress``);
        ``overrides`` replace any of them. A flag left None (``--channels_last`` auto,
        ``--amp`` off) keeps the field's default, which means the same."""
        values = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)
                  if getattr(args, field.name, None) is not None}
        if hasattr(args, "no_progress"):
            values["progress"] = not args.no_progress
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> "TrainingSettings":
        return dataclasses.replace(self, **changes)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        return make_optimizer(self.optimizer, params, self.learning_rate, self.momentum,
                              self.weight_decay)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, epochs: Optional[int] = None):
        return make_scheduler(self.lr_schedule, optimizer, self.epochs if epochs is None else epochs)
