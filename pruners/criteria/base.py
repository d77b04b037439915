"""What a criterion sees and says: ``select(view, count)`` gives the sorted positions of the
``count`` units of a group to remove, from a ``GroupView``: the rows of every layer that writes
the group, the columns of every layer that reads it, and, when the criterion asks for data
(``needs_data``), what hooks gathered over the batches given to ``ChannelPruner.step(data=...)``.
Like torch.nn.utils.prune's compute_mask and Torch-Pruning's Importance, but over whole groups.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from utils.errors import UserError

_CRITERIA: Dict[str, type] = {}


def register_criterion(name: str):
    def wrap(cls):
        if name in _CRITERIA:
            raise ValueError(f"criterion {name!r} registered twice")
        _CRITERIA[name] = cls
        cls.name = name
        return cls
    return wrap


def criterion_names() -> List[str]:
    return sorted(_CRITERIA)


def create_criterion(name, **kwargs) -> "Criterion":
    """A criterion by name (or the instance given)."""
    if isinstance(name, Criterion):
        return name
    if name not in _CRITERIA:
        raise UserError(f"unknown criterion {name!r}; choose one of: {', '.join(criterion_names())}")
    return _CRITERIA[name](**kwargs)


@dataclass
class GroupView:
    """A group as a criterion sees it, one entry per *unit* (a channel, or the channels that
    leave together: a grouped convolution's group, a GroupNorm group, an attention head)."""
    name: str
    units: List[List[int]]                    # positions of each unit's channels in the group
    rows_fn: Callable[[], torch.Tensor]       # (channels, D): writers' rows, one per channel
    columns_fn: Optional[Callable[[], torch.Tensor]] = None
    data: Dict[str, torch.Tensor] = field(default_factory=dict)  # per channel, gathered by hooks

    def __len__(self):
        return len(self.units)

    def per_unit(self, per_channel: torch.Tensor) -> torch.Tensor:
        """(channels, ...) -> (units, unit size x ...): a unit's channels side by side. Units of
        one channel each, in order, are the rows as given (no copy: a VGG classifier's rows are
        0.4 GB); ``rows`` are copied from the model once, by the pruner."""
        order = [p for unit in self.units for p in unit]
        if order == list(range(len(per_channel))):
            return per_channel.reshape(len(self.units), -1)
        chosen = per_channel.index_select(0, torch.tensor(order, device=per_channel.device))
        return chosen.reshape(len(self.units), -1)

    @property
    def rows(self) -> torch.Tensor:
        """(units, D): every writer's rows of a unit's channels, flattened and concatenated."""
        return self.per_unit(self.rows_fn().flatten(1))

    @property
    def columns(self) -> torch.Tensor:
        """(units, D'): every reader's columns of a unit's channels."""
        if self.columns_fn is None:
            raise ValueError(f"{self.name}: no reader columns were gathered")
        return self.per_unit(self.columns_fn().flatten(1))


class Criterion:
    """Base class. Subclasses implement ``scores`` (smaller goes first) or ``select``."""

    name = ""
    needs_data = False   # True: step() must be given batches; hooks fill GroupView.data

    def extra(self, units: int) -> int:
        """Units removed on top of the rate's count (FPGM-mix's norm share)."""
        return 0

    def scores(self, view: GroupView) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def select(self, view: GroupView, count: int) -> torch.Tensor:
        """Sorted positions (among ``view.units``) of the ``count`` units to remove; ties go by
        position."""
        scores = self.scores(view).double()
        return torch.argsort(scores.cpu(), stable=True)[:count].sort().values

    def select_rows(self, rows: torch.Tensor, count: int) -> torch.Tensor:
        """``select`` on a plain (N, ...) matrix of filters, one channel each (no data)."""
        view = GroupView("rows", [[i] for i in range(len(rows))], lambda: rows)
        return self.select(view, count)

    def describe(self) -> str:
        return self.name
