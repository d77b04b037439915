"""The step-level API of structured pruning, for any traceable model and any training loop.

    pruner = ChannelPruner(model, example_inputs, criterion="fpgm", rate=0.3)
    for epoch in range(epochs):
        train_one_epoch(model, ...)      # your loop
        pruner.step()                    # select and zero (soft pruning: FPGM's schedule)
    small = pruner.compact()             # a smaller nn.Module computing what the masked one does

``step`` scores every prunable group with the criterion and zeroes the selection in place (the
model keeps its shapes); in ``mode="fixed"`` the first selection is held at zero by
torch.nn.utils.prune masks through any training. ``compact`` removes the selected channels by
surgery on a copy and checks the removal: the compact model's outputs on the example inputs must
equal the masked model's (``compact_difference``), or it raises. The command-line methods
(pruning.py --pruning_method=fpgm|l1norm|sfp|taylor) are schedules over this same class.
"""
import math
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruners.base import check_rate
from pruners.compact import (channel_masks, compact_model, group_rows, max_relative_difference,
                             pruned_sets, tensor_at, zero_channels)
from pruners.criteria import Criterion, GroupView, create_criterion
from pruners.criteria.fpgm import pruned_count
from pruners.graph import DependencyGraph, Group, build_graph
from utils.errors import UserError
from utils.masks import apply_masks

MODES = ("soft", "fixed")
# Largest |masked - compact| / max |masked| a removal may leave (float32 rounding of reordered
# sums is about 1e-6 here).
COMPACT_TOLERANCE = 1e-4


class CompactionMismatch(RuntimeError):
    """The compact model does not compute what the masked one does: a defect, never expected."""


def aligned_count(filters: int, pruned: int, multiple: int) -> int:
    """``pruned`` moved so that the kept filters are a multiple of ``multiple`` (the nearest one
    to what the rate keeps, ties towards keeping more, never fewer than ``multiple``): CPU
    convolution kernels work on blocks of 8 or 16 channels, so a layer cut from 16 to 10
    channels runs slower than at 16, and one cut to 8 runs twice as fast
    (benchmarks/fpgm_speed.py). Groups of ``multiple`` channels or fewer keep the rate's count."""
    if multiple <= 1 or filters <= multiple:
        return pruned
    kept = filters - pruned
    aligned = max(multiple, math.floor(kept / multiple + 0.5) * multiple)
    return filters - min(aligned, filters)


def _names(values) -> List[str]:
    """Names given as a list, or comma-separated in strings."""
    if isinstance(values, str):
        values = [values]
    return [n.strip() for value in (values or []) for n in str(value).split(",") if n.strip()]


class ChannelPruner:
    """Structured pruning of ``model`` through its channel-dependency graph.

    ``example_inputs``: a batch (or a tuple of them) the model takes, or an input shape (C, H, W).
    ``criterion``: a name (fpgm, l1norm, l2norm, sfp, taylor) or a Criterion instance.
    ``rate``: the fraction of every prunable group's channels (or units) removed;
    ``layer_rates``: {group or layer name: rate} overriding it. ``prune_residual``: also prune
    channels merged by residual adds (a stage's stream, in every layer that reads or writes it).
    ``exclude``: layer or group names never pruned. ``channel_multiple``: keep a multiple of this
    many channels in every group (CPU kernels work on blocks of 8 or 16). ``mode``: soft (select
    and zero at every step; zeroed channels keep training) or fixed (the first selection held at
    zero by masks). ``attention``: what the groups of attention modules prune, "heads" (whole
    heads) or "head_width" (the width of every head, as many dimensions from each: a group
    "<projection>[qk]" of query/key pairs and a group "<projection>[v]" of value dimensions
    per attention module).
    """

    def __init__(self, model: nn.Module, example_inputs, criterion="fpgm", rate: float = 0.3,
                 layer_rates: Optional[Dict[str, float]] = None, prune_residual: bool = False,
                 exclude: Sequence[str] = (), channel_multiple: int = 1, mode: str = "soft",
                 graph: Optional[DependencyGraph] = None, attention: str = "heads"):
        self.model = model
        self.rate = check_rate("rate", rate)
        self.layer_rates = {str(name): check_rate(f"layer_rates[{name!r}]", r)
                            for name, r in (layer_rates or {}).items()}
        self.prune_residual = bool(prune_residual)
        self.exclude = _names(exclude)
        self.channel_multiple = int(channel_multiple)
        if self.channel_multiple < 1:
            raise UserError(f"channel_multiple must be at least 1, got {channel_multiple}")
        if mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.criterion: Criterion = create_criterion(criterion)
        self.graph = graph if graph is not None else build_graph(model, example_inputs,
                                                                 attention=attention)
        self.example_inputs = self.graph.example_inputs
        self.selection: Dict[str, torch.Tensor] = {}   # group -> positions of removed channels
        self.compact_difference: Optional[float] = None
        self.check_seconds: Optional[float] = None
        self._check_names()
        self.prunable = [g for g in self.graph.prunable(residual=self.prune_residual)
                         if not self._excluded(g)]
        self.group_rates = {g.name: self._rate_of(g) for g in self.prunable}
        for group in self.prunable:
            for block in group.blocks or [range(len(group.units))]:
                if self.unit_count(group, len(block)) >= len(block):
                    raise UserError(
                        f"a rate of {self.group_rates[group.name]} would remove all "
                        f"{len(block)} {'units of a head' if group.blocks else 'channels'} of "
                        f"{group.name}; lower the rate or exclude it")

    # -- the groups ----------------------------------------------------------------------------

    @property
    def groups(self) -> List[Group]:
        """Every channel group of the model: name, size, writers, and why a group is fixed."""
        return self.graph.groups

    def _known_names(self):
        layers = {w for g in self.graph.groups for w in g.writers}
        return layers, {g.name for g in self.graph.groups}

    def _check_names(self) -> None:
        layers, groups = self._known_names()
        unknown = [n for n in self.exclude if n not in layers | groups]
        if unknown:
            raise UserError(f"exclude names no layer or group of {type(self.model).__name__}: "
                            f"{', '.join(unknown)}; its groups are "
                            f"{', '.join(g.name for g in self.graph.prunable(True))}")
        unknown = [n for n in self.layer_rates if n not in layers | groups]
        if unknown:
            raise UserError(f"layer_rates names no layer or group of {type(self.model).__name__}: "
                            f"{', '.join(unknown)}; its groups are "
                            f"{', '.join(g.name for g in self.graph.prunable(True))}")
        pruned = self.graph.prunable(residual=self.prune_residual)
        for name in self.layer_rates:
            hits = [g for g in self.graph.groups if name == g.name or name in g.writers]
            if not any(g in pruned for g in hits):
                why = hits[0].reason if hits and hits[0].fixed else (
                    "a residual stream, pruned only with prune_residual" if hits else "")
                raise UserError(f"layer_rates names {name}, whose channels are never pruned "
                                f"({why}); leave it out")

    def _excluded(self, group: Group) -> bool:
        return group.name in self.exclude or bool(set(group.writers) & set(self.exclude))

    def _rate_of(self, group: Group) -> float:
        for name in (group.name,) + group.writers:
            if name in self.layer_rates:
                return self.layer_rates[name]
        return self.rate

    def unit_count(self, group: Group, units: int, rate: Optional[float] = None) -> int:
        """Units a step removes from ``units`` of ``group`` (the group's, or one block's) at
        ``rate`` (the group's by default): floor(units x rate) plus the criterion's extra,
        moved by ``channel_multiple`` where units are single channels (or are counted per
        block: a head's width)."""
        rate = self.group_rates[group.name] if rate is None else rate
        count = pruned_count(units, rate) + self.criterion.extra(units)
        if len(group.units) == len(group.sets) or group.blocks:
            count = aligned_count(units, count, self.channel_multiple)
        return min(count, units)

    def count(self, group: Group, rate: Optional[float] = None) -> int:
        """Units of ``group`` a step removes (in a group with blocks, as many from each)."""
        if group.blocks:
            return sum(self.unit_count(group, len(block), rate) for block in group.blocks)
        return self.unit_count(group, len(group.units), rate)

    # -- a step --------------------------------------------------------------------------------

    def view(self, group: Group, data: Optional[Dict[str, Dict[str, torch.Tensor]]] = None) -> GroupView:
        return GroupView(group.name, group.units,
                         lambda: group_rows(self.model, self.graph, group),
                         data=(data or {}).get(group.name, {}))

    def select_group(self, group: Group, data: Optional[Dict] = None,
                     rate: Optional[float] = None) -> torch.Tensor:
        """Sorted positions of ``group``'s channels the criterion removes at ``rate`` (the
        group's by default). A group with blocks is scored block by block (a head's dimensions
        against each other), and each block loses its count."""
        view = self.view(group, data)
        if not group.blocks:
            chosen = self.criterion.select(view, self.count(group, rate)).tolist()
        else:
            rows = view.rows_fn()  # once for every block
            chosen = []
            for block in group.blocks:
                block_view = GroupView(group.name, [group.units[u] for u in block], lambda: rows,
                                       data=view.data)
                picked = self.criterion.select(block_view, self.unit_count(group, len(block), rate))
                chosen.extend(block[u] for u in picked.tolist())
        return torch.tensor(sorted(p for u in chosen for p in group.units[u]), dtype=torch.long)

    def select(self, data: Optional[Dict] = None) -> Dict[str, torch.Tensor]:
        """Per prunable group, the sorted positions of the channels the criterion removes now."""
        return {group.name: self.select_group(group, data) for group in self.prunable}

    def step(self, data: Optional[Iterable] = None, loss_fn: Optional[Callable] = None
             ) -> Dict[str, torch.Tensor]:
        """Select from the current weights (and, for a criterion that asks, from ``data``: an
        iterable of (inputs, targets) batches, the loss ``loss_fn(outputs, targets)``, cross
        entropy by default) and zero the selection in place. Fixed mode: the first step's
        selection is masked and held; later steps keep it."""
        if self.mode == "fixed" and self.selection:
            return self.selection
        gathered = None
        if self.criterion.needs_data:
            if data is None:
                raise UserError(f"criterion {self.criterion.name} needs data: step(data=batches) "
                                "with (inputs, targets) batches")
            gathered = taylor_importance(self.model, self.graph, self.prunable, data, loss_fn)
        self.selection = self.select(gathered)
        sets = self.sets()
        zero_channels(self.model, self.graph, sets)
        if self.mode == "fixed":
            # torch.nn.utils.prune masks: the forward uses weight_orig x mask, so the pruned
            # channels' gradients are masked and they stay exactly zero through every step.
            apply_masks(self.model, channel_masks(self.model, self.graph, sets))
        return self.selection

    def sets(self):
        return pruned_sets(self.graph, {n: p.tolist() for n, p in self.selection.items()})

    def zero(self) -> None:
        """Zero the current selection again (after an optimizer step in soft mode, where zeroed
        channels train)."""
        zero_channels(self.model, self.graph, self.sets())

    # -- removal -------------------------------------------------------------------------------

    def compact(self, tolerance: float = COMPACT_TOLERANCE) -> nn.Module:
        """A new, smaller nn.Module of the same classes without the selected channels. The
        removal is checked on the example inputs: relative to the largest output, no output of
        the compact model may differ from the masked model's by more than ``tolerance``."""
        small = compact_model(self.model, {n: p.tolist() for n, p in self.selection.items()},
                              self.graph)
        start = time.perf_counter()
        try:
            self.compact_difference = max_relative_difference(self.model, small, self.example_inputs)
        except RuntimeError as exc:  # a shape the forward computes from constants, say
            raise CompactionMismatch(f"{type(self.model).__name__}: the compact model does not run "
                                     f"on the example inputs ({str(exc).splitlines()[0]})") from exc
        finally:
            # what the proof cost (two forward passes): benchmarks report the removal without it
            self.check_seconds = time.perf_counter() - start
        if not self.compact_difference <= tolerance:
            raise CompactionMismatch(
                f"{type(self.model).__name__}: the compact model differs from the masked one by "
                f"{self.compact_difference:.2e} of the largest output (tolerance {tolerance:g})")
        return small


# ---- data-aware criteria: activations x gradients through hooks -----------------------------------

def taylor_importance(model: nn.Module, graph: DependencyGraph, groups: List[Group],
                      data: Iterable, loss_fn: Optional[Callable] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per group and channel, Molchanov et al.'s first-order Taylor importance: per batch,
    (sum over samples and positions of activation x d loss / d activation)^2 at the output of
    every layer that writes the channel, summed over writers and averaged over batches.

    A writer whose output no forward hook sees (a projection an attention module calls
    functionally: Swin's qkv, nn.MultiheadAttention's packed in-projection) is differentiated
    through its parameters instead: for a linear map, the sum over a row of weight x d loss /
    d weight, plus bias x d loss / d bias, is exactly the sum over samples and positions of
    activation x d loss / d activation for that channel. Only activations and those parameters
    are differentiated, through torch.autograd.grad: the parameters' .grad are left as they
    were."""
    loss_fn = loss_fn or F.cross_entropy
    modules = dict(model.named_modules())
    writers = sorted({w for g in groups for w in g.writers})
    position = {s: (g.name, p) for g in groups for p, s in enumerate(g.sets)}
    where = {key: position[s] for key, s in graph.set_of.items() if s in position}
    totals = {g.name: torch.zeros(len(g), dtype=torch.float64) for g in groups}
    captured: Dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output):
            captured[name] = output
        return hook

    def add(name, per_channel):
        for channel, value in enumerate(per_channel.cpu().tolist()):
            hit = where.get((name, channel))
            if hit is not None:
                totals[hit[0]][hit[1]] += value

    handles = [modules[w].register_forward_hook(keep(w)) for w in writers if w in modules]
    batches = 0
    try:
        for inputs, targets in data:
            captured.clear()
            loss = loss_fn(model(inputs), targets)
            names = [n for n in writers
                     if isinstance(captured.get(n), torch.Tensor) and captured[n].requires_grad]
            unseen = set(writers) - set(names)
            rows = [(use.layer, tensor_at(model, use.key)) for use in graph.uses
                    if use.layer in unseen and use.writes and use.dim == 0
                    and use.key.endswith(("weight", "bias"))]
            grads = torch.autograd.grad(loss, [captured[n] for n in names] + [t for _, t in rows],
                                        allow_unused=True)
            for name, grad in zip(names, grads):
                if grad is None:
                    continue
                out = captured[name]
                dim = 1 if isinstance(modules[name], nn.modules.conv._ConvNd) else out.dim() - 1
                add(name, (out.detach() * grad).movedim(dim, 0).flatten(1).sum(1).double() ** 2)
            through_parameters: Dict[str, torch.Tensor] = {}
            for (layer, tensor), grad in zip(rows, grads[len(names):]):
                if grad is not None:
                    row_sums = (tensor.detach() * grad).flatten(1).sum(1).double() \
                        if tensor.dim() > 1 else (tensor.detach() * grad).double()
                    through_parameters[layer] = through_parameters.get(layer, 0) + row_sums
            for layer, per_channel in through_parameters.items():
                add(layer, per_channel ** 2)
            batches += 1
    finally:
        for handle in handles:
            handle.remove()
    if batches == 0:
        raise UserError("step(data=...) was given no batches")
    return {name: {"taylor": total / batches} for name, total in totals.items()}
