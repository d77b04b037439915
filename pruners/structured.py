"""Structured (filter) pruning, once for every criterion: selection per channel group, a soft or
fixed schedule through the shared training loop, physical removal, metadata.

A criterion (``FilterCriterion``) only says which filters of a group go, as torch.nn.utils.prune's
methods compute a mask: FPGM's geometric median (pruners/fpgm.py), the smallest L1 norm of Li et
al. 2017 and the smallest L2 norm of SFP (pruners/norms.py). The groups come from the model's
channel-dependency graph (models/graph.py): every conv and hidden linear layer of a plain chain,
block-internal channels of a residual network, and with ``prune_residual`` its residual streams;
never the classifier's outputs. A group's filters are the rows of every layer that writes it,
concatenated (models/compact.group_vectors).

Soft mode (FPGM's and SFP's schedule) zeroes the selection at the end of every retraining epoch
and lets training update it again, so the selection can change; fixed mode (Li et al.'s) holds
the first selection at zero under torch.nn.utils.prune masks. Afterwards the selected channels are
removed physically (models/compact.py): a smaller dense model of the same class.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from models.base import weight_layers
from models.compact import (channel_masks, compact_model, graph_of, group_vectors, pruned_sets,
                            zero_channels)
from models.graph import DependencyGraph, Group
from pruners.base import DEFAULT_CUT_RATE, PruneContext, Pruner, check_rate
from utils import cli
from utils.errors import UserError
from utils.masks import apply_masks, make_permanent, masked_tensors
from utils.modes import eval_mode
from utils.reporting.counting import LayerStats, layer_stats

MODES = ("soft", "fixed")
# floor(N x rate) in floating point can land just under an integer (0.29 x 100 =
# 28.999999999999996); the tolerance keeps such products on the integer they denote.
_FLOOR_TOLERANCE = 1e-9


def pruned_count(filters: int, rate: float) -> int:
    """floor(filters x rate), the number of filters a rate removes from a layer."""
    return int(math.floor(filters * rate + _FLOOR_TOLERANCE))


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


class FilterCriterion:
    """Which filters of a group to prune: ``amount`` (a fraction) of them, the count rounded by
    ``channel_multiple``; ``select`` takes the group's filters as an (N, D) matrix, one row per
    channel, and gives the sorted indices of the rows to prune."""

    name = ""

    def __init__(self, amount: float, channel_multiple: int = 1):
        self.amount = amount
        self.channel_multiple = channel_multiple

    def extra(self, filters: int) -> int:
        """Filters a criterion removes on top of ``amount`` (FPGM-mix's norm share)."""
        return 0

    def pruned(self, filters: int) -> int:
        return aligned_count(filters, pruned_count(filters, self.amount) + self.extra(filters),
                             self.channel_multiple)

    def select(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        """The torch.nn.utils.prune form: ``default_mask`` with the selected filters zeroed."""
        mask = default_mask.clone()
        mask[self.select(t)] = 0
        return mask


# ---- what the paper's counting claims -----------------------------------------------------

def paper_counted_flops(graph: DependencyGraph, stats: List[LayerStats], rate: float) -> int:
    """The FLOPs the FPGM paper's counting reports for pruning every conv layer at ``rate``:
    each conv's FLOPs x (1 - rate) for its pruned filters, x (1 - rate) again when its input
    comes straight from a pruned conv's output (not through a residual add); linear layers dense.
    In a basic block that is the first conv at (1 - r) and the second at (1 - r)^2, as the
    official CIFAR code counts, although the residual stream the block adds into keeps its width
    and so must the second conv's outputs: the compact model's FLOPs are what is real."""
    reads = {u.layer: u for u in graph.uses if not u.writes and u.dim == 1}
    total = 0.0
    for layer in stats:
        if len(layer.output_shape) != 3:  # a linear layer: the paper prunes convolutions only
            total += layer.flops
            continue
        source = graph.group_of.get(reads[layer.name].sets[0])
        squared = source is not None and not source.fixed and not source.residual
        total += layer.flops * (1 - rate) * ((1 - rate) if squared else 1)
    return int(round(total))


# ---- the pruner ------------------------------------------------------------------------------

def _names(values: Optional[List[str]]) -> List[str]:
    """--exclude may be repeated and may hold comma-separated names."""
    return [n.strip() for value in (values or []) for n in value.split(",") if n.strip()]


class StructuredPruner(Pruner):
    """Base of the filter-pruning methods; a subclass sets ``default_mode`` and builds its
    criterion for a rate (``make_criterion``)."""

    structured = True
    default_mode = "soft"
    SHARED_GROUP = "structured pruning options (fpgm, l1norm, sfp)"

    @classmethod
    def argument_groups(cls):
        groups = [(cls.SHARED_GROUP, StructuredPruner.add_shared_arguments)]
        if cls.add_arguments is not Pruner.add_arguments:
            groups.append((f"{cls.name} options", cls.add_arguments))
        return groups

    @staticmethod
    def add_shared_arguments(group) -> None:
        group.add_argument("--prune_mode", "--fpgm_mode", dest="prune_mode", choices=MODES,
                           default=None,
                           help="soft: reselect and zero at the end of every retraining epoch, "
                                "zeroed filters keep training (FPGM's and SFP's schedule); fixed: "
                                "prune once and hold the selection at zero with masks (Li et "
                                "al.'s). Default: the method's own (fpgm soft, l1norm fixed, sfp "
                                "soft)")
        group.add_argument("--exclude", "--fpgm_exclude", dest="exclude", action="append",
                           default=None, metavar="LAYER[,LAYER]",
                           help="layer names never pruned (repeatable or comma-separated), e.g. "
                                "conv1: no group a listed layer writes loses channels; the "
                                "classifier is never pruned")
        group.add_argument("--prune_residual", type=cli.str2bool, default=False,
                           help="also prune the residual streams of networks with shortcuts (each "
                                "stage's stream as one group, in every layer that reads or writes "
                                "it); by default only channels inside blocks are pruned, which "
                                "leaves the streams as they are")
        group.add_argument("--channel_multiple", type=cli.positive_int, default=1,
                           help="keep a multiple of this many channels in every group (the "
                                "multiple nearest what the rate keeps): 8 or 16 lets CPU "
                                "convolution kernels, which work on blocks of channels, turn the "
                                "removed FLOPs into speed; 1 keeps the papers' floor(N x rate)")
        group.add_argument("--finetune_epochs", type=cli.non_negative_int, default=0,
                           help="epochs of training of the compact model after the filters are "
                                "removed. Soft mode ends on a fresh zeroing that no epoch has "
                                "recovered from: with few --epochs (1 or 2) that costs accuracy, "
                                "and a few fine-tuning epochs win it back; 0 keeps the papers' "
                                "schedules")

    @classmethod
    def shared_kwargs(cls, args) -> dict:
        return dict(cut_rate=args.cut_rate, mode=args.prune_mode or cls.default_mode,
                    exclude=_names(args.exclude), finetune_epochs=args.finetune_epochs,
                    prune_residual=args.prune_residual, channel_multiple=args.channel_multiple,
                    layer_rates=getattr(args, "layer_rates", None))

    @classmethod
    def from_args(cls, args) -> "StructuredPruner":
        return cls(**cls.shared_kwargs(args))

    def __init__(self, cut_rate: float = DEFAULT_CUT_RATE, mode: Optional[str] = None,
                 exclude: Sequence[str] = (), finetune_epochs: int = 0,
                 prune_residual: bool = False, channel_multiple: int = 1,
                 layer_rates: Optional[Dict[str, float]] = None):
        super().__init__(cut_rate)
        self.rate = self.cut_rate
        self.mode = mode or self.default_mode
        self.exclude = list(exclude)
        self.finetune_epochs = int(finetune_epochs)
        self.prune_residual = bool(prune_residual)
        self.channel_multiple = int(channel_multiple)
        self.layer_rates = {name: check_rate(f"--layer_rates {name}", rate)
                            for name, rate in (layer_rates or {}).items()}
        if self.mode not in MODES:
            raise UserError(f"--prune_mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.finetune_epochs < 0:
            raise UserError(f"--finetune_epochs must be zero or more, got {self.finetune_epochs}")
        if self.channel_multiple < 1:
            raise UserError(f"--channel_multiple must be at least 1, got {channel_multiple}")
        self.criterion = self.make_criterion(self.rate)
        self.selection: Dict[str, torch.Tensor] = {}
        self.epoch_log: List[dict] = []
        self.finetune_log: List[dict] = []
        self.finetune_acc: Optional[float] = None
        self.original_widths: Optional[list] = None
        self.widths: Optional[list] = None
        self.compact_difference: Optional[float] = None
        self.graph: Optional[DependencyGraph] = None
        self.flops: Optional[dict] = None
        self.group_rates: Dict[str, float] = {}
        self._criteria: Dict[float, FilterCriterion] = {}

    def make_criterion(self, rate: float) -> FilterCriterion:
        raise NotImplementedError

    def describe_criterion(self) -> str:
        return self.criterion.name

    def check_model(self, model: nn.Module) -> None:
        if any(True for _ in masked_tensors(model)):
            raise UserError(f"this checkpoint is magnitude-pruned (it carries weight masks); "
                            f"{self.name} removes whole filters of a dense model: prune the dense "
                            "checkpoint it came from")
        self.prunable_groups(model)

    # -- which groups, how many ------------------------------------------------------------

    def _rate_of(self, group: Group) -> float:
        """--layer_rates names a group (or a layer that writes it); else --cut_rate."""
        for name in (group.name,) + group.writers:
            if name in self.layer_rates:
                return self.layer_rates[name]
        return self.rate

    def prunable_groups(self, model: nn.Module) -> List[Group]:
        """The channel groups this run prunes (every group that is neither the input's, the
        output's, nor, without --prune_residual, a residual stream; none written by an excluded
        layer). Checks the flags against the model (unknown names, a group emptied, operations
        the graph does not know), so it runs before any training."""
        self.graph = graph_of(model)
        names = [name for name, _ in weight_layers(model)]
        unknown = [n for n in self.exclude if n not in names]
        if unknown:
            raise UserError(f"--exclude names no layer of {type(model).__name__}: "
                            f"{', '.join(unknown)}; its layers are {', '.join(names)}")
        known = set(names) | {g.name for g in self.graph.groups}
        unknown = [n for n in self.layer_rates if n not in known]
        if unknown:
            raise UserError(f"--layer_rates names no layer or group of {type(model).__name__}: "
                            f"{', '.join(unknown)}; its groups are "
                            f"{', '.join(g.name for g in self.graph.prunable(True))}")
        groups = [g for g in self.graph.prunable(residual=self.prune_residual)
                  if not set(g.writers) & set(self.exclude)]
        self.group_rates = {g.name: self._rate_of(g) for g in groups}
        for group in groups:
            criterion = self._criterion_for(self.group_rates[group.name])
            count = criterion.pruned(len(group))
            if count >= len(group):
                raise UserError(
                    f"{self.describe_rate(group)} would remove all {len(group)} filters of "
                    f"{group.name}; lower the rate or --exclude it")
        return groups

    def describe_rate(self, group: Group) -> str:
        return f"a rate of {self.group_rates[group.name]}"

    def _criterion_for(self, rate: float) -> FilterCriterion:
        if rate not in self._criteria:
            self._criteria[rate] = self.criterion if rate == self.rate else self.make_criterion(rate)
        return self._criteria[rate]

    def select(self, model: nn.Module, groups: List[Group]) -> Dict[str, torch.Tensor]:
        """Per group, the positions of the channels to prune, judged on the filters of every
        layer that writes them together (see models/compact.group_vectors)."""
        return {g.name: self._criterion_for(self.group_rates[g.name]).select(
                    group_vectors(model, self.graph, g)) for g in groups}

    def _sets(self, selection: Dict[str, torch.Tensor]):
        return pruned_sets(self.graph, {name: index.tolist() for name, index in selection.items()})

    # -- soft mode -------------------------------------------------------------------------

    def soft_step(self, model: nn.Module, groups: List[Group], epoch: int, print_fn=None) -> dict:
        """Reselect from the current weights and zero the selection (BatchNorm's scale and
        shift too). Records how many filters zeroed last time have grown back and how many of
        them left the selection."""
        new = self.select(model, groups)
        regrown = left = 0
        for group in groups:
            old = self.selection.get(group.name)
            if old is None:
                continue
            vectors = group_vectors(model, self.graph, group)
            regrown += int((vectors[old.to(vectors.device)].abs().sum(dim=1) > 0).sum())
            left += len(set(old.tolist()) - set(new[group.name].tolist()))
        zero_channels(model, self.graph, self._sets(new))
        self.selection = new
        entry = {"epoch": epoch, "zeroed": sum(len(v) for v in new.values()),
                 "regrown": regrown, "left": left}
        self.epoch_log.append(entry)
        if print_fn is not None:
            print_fn(f"{self.name} epoch {epoch}: zeroed {entry['zeroed']} filters; of the last "
                     f"selection {regrown} had grown back and {left} left it")
        return entry

    # -- the method ------------------------------------------------------------------------

    def _selection_state(self) -> dict:
        return {"selection": {name: index.cpu() for name, index in self.selection.items()},
                "epoch_log": list(self.epoch_log)}

    def _set_selection_state(self, state: dict) -> None:
        self.selection = dict(state["selection"])
        self.epoch_log = list(state["epoch_log"])

    def train_masked(self, model: nn.Module, context: PruneContext) -> Dict[str, torch.Tensor]:
        """Soft- or fixed-prune ``model`` in place while retraining; returns the final selection
        (its channels are zero in ``model``)."""
        groups = self.prunable_groups(model)
        self.selection, self.epoch_log = {}, []
        context.track("selection", self._selection_state, self._set_selection_state)
        print_fn = context.print_fn
        if self.mode == "fixed":
            # torch.nn.utils.prune masks: the forward uses weight_orig x mask, so the pruned
            # channels' gradients are masked and they stay exactly zero through every step.
            self.selection = self.select(model, groups)
            sets = self._sets(self.selection)
            zero_channels(model, self.graph, sets)
            apply_masks(model, channel_masks(model, self.graph, sets))
            try:
                context.retrain(model, phase="fixed")
            finally:
                make_permanent(model)
        else:
            # The soft schedule: train an epoch, then select and zero; no zeroing before the
            # first epoch, so the optimizer holds state for every filter when it starts.
            context.retrain(model, phase="soft",
                            on_epoch_end=lambda epoch: self.soft_step(model, groups, epoch,
                                                                      print_fn))
            if not self.epoch_log:  # --epochs=0: prune the trained weights once
                self.soft_step(model, groups, 0, print_fn)
        return self.selection

    def prune(self, model: nn.Module, context: PruneContext) -> nn.Module:
        self.check_model(model)
        self.original_widths = list(model.widths)
        dense_flops = layer_stats(model, model.input_shape)
        selection = self.train_masked(model, context)
        small = compact_model(model, {name: index.tolist() for name, index in selection.items()},
                              self.graph)
        self.widths = list(small.widths)
        self.flops = {"dense": sum(s.flops for s in dense_flops),
                      "compact": sum(s.flops for s in layer_stats(small, small.input_shape)),
                      "paper_counting": paper_counted_flops(self.graph, dense_flops, self.rate)}
        self.compact_difference = self._max_difference(model, small, context.test.first_images(256))
        context.print_fn(f"{self.name}: widths {self.original_widths} -> {self.widths} "
                         f"({self.mode} mode, {self.describe_criterion()}); compact vs "
                         f"masked model: max |logit difference| {self.compact_difference:.2e} "
                         f"on {min(len(context.test), 256)} test images")
        if self.finetune_epochs:
            # New, smaller parameters: retrain builds a new optimizer over them.
            context.print_fn(f"{self.name}: fine-tuning the compact model for "
                             f"{self.finetune_epochs} epochs")
            self.finetune_log = context.retrain(small, epochs=self.finetune_epochs,
                                                phase="finetune")
            self.finetune_acc = context.accuracy(small, self.finetune_log)
        return small

    @staticmethod
    @torch.no_grad()
    def _max_difference(masked: nn.Module, small: nn.Module, images: torch.Tensor) -> float:
        """Evidence, on every run, that removal kept the function the masked model computes."""
        with eval_mode(masked, small):
            return float((masked(images) - small(images)).abs().max()) if len(images) else 0.0

    def metadata(self) -> dict:
        return {
            "method": self.name, "criterion": self.describe_criterion(), "cut_rate": self.rate,
            "layer_rates": self.layer_rates, "group_rates": self.group_rates, "mode": self.mode,
            "exclude": self.exclude, "original_widths": self.original_widths,
            "widths": self.widths,
            "pruned_filters": {name: index.tolist() for name, index in self.selection.items()},
            "epochs": self.epoch_log, "compact_max_difference": self.compact_difference,
            "prune_residual": self.prune_residual, "channel_multiple": self.channel_multiple,
            "flops": self.flops, "finetune_epochs": self.finetune_epochs,
            "finetune_acc": self.finetune_acc,
        }
