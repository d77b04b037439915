"""FPGM: filter pruning via geometric median (He et al., CVPR 2019).

In every prunable layer (every conv and every hidden linear layer; never the classifier) the
filters whose summed distance to all other filters of the layer is smallest lie nearest the
layer's geometric median: what they compute the others can stand in for, so they go. Soft mode
(the paper's schedule) zeroes them at the end of every retraining epoch and lets training update
them again, so the selection can change; fixed mode holds the first selection at zero with a mask.
Afterwards the selected filters are removed physically (models/compact.py): the result is a
smaller dense model of the same class.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from models.base import weight_layers
from models.compact import (channel_masks, compact_model, graph_of, group_vectors, pruned_sets,
                            zero_channels)
from models.graph import DependencyGraph, Group
from pruners import register_pruner
from pruners.base import DEFAULT_CUT_RATE, Pruner, PruneContext, check_rate
from utils import cli
from utils.errors import UserError
from utils.masks import apply_masks, make_permanent, masked_tensors
from utils.reporting.counting import LayerStats, layer_stats
from utils.modes import eval_mode

# floor(N x rate) in floating point can land just under an integer (0.29 x 100 =
# 28.999999999999996); the tolerance keeps such products on the integer they denote.
_FLOOR_TOLERANCE = 1e-9
MODES = ("soft", "fixed")


def pruned_count(filters: int, rate: float) -> int:
    """floor(filters x rate), the number of filters a rate removes from a layer."""
    return int(math.floor(filters * rate + _FLOOR_TOLERANCE))


def aligned_counts(filters: int, by_norm: int, by_distance: int, multiple: int):
    """The counts moved so that the kept filters are a multiple of ``multiple`` (the nearest one
    to what the rates keep, ties towards keeping more, never fewer than ``multiple``): CPU
    convolution kernels work on blocks of 8 or 16 channels, so a layer cut from 16 to 10
    channels runs slower than at 16, and one cut to 8 runs twice as fast
    (benchmarks/fpgm_speed.py). Groups of ``multiple`` channels or fewer are left as the rates
    say."""
    if multiple <= 1 or filters <= multiple:
        return by_norm, by_distance
    kept = filters - by_norm - by_distance
    aligned = max(multiple, math.floor(kept / multiple + 0.5) * multiple)
    pruned = filters - min(aligned, filters)
    by_norm = min(by_norm, pruned)
    return by_norm, pruned - by_norm


# ---- distances: one small class each, so the choice really switches the metric --------------

class FilterDistance:
    """Pairwise distances between the rows of an (N, D) matrix of flattened filters."""
    name = ""

    def pairwise(self, vectors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class L2Distance(FilterDistance):
    name = "l2"

    def pairwise(self, vectors):
        return torch.cdist(vectors, vectors, p=2.0)


class L1Distance(FilterDistance):
    name = "l1"

    def pairwise(self, vectors):
        return torch.cdist(vectors, vectors, p=1.0)


class CosineDistance(FilterDistance):
    """1 - cosine similarity. A zero filter has no direction; it is taken as orthogonal to all
    (distance 1), which is what normalising with a small floor gives."""
    name = "cos"

    def pairwise(self, vectors):
        unit = nn.functional.normalize(vectors, dim=1, eps=1e-12)
        return 1.0 - unit @ unit.T


DISTANCES = {cls.name: cls for cls in (L2Distance, L1Distance, CosineDistance)}


class GeometricMedianFilters:
    """Criterion: which output filters of a weight tensor to prune.

    ``amount`` (a fraction) of the filters nearest the geometric median, after FPGM-mix's
    ``norm_amount`` (a fraction) of smallest-norm filters; the two counts add up, as in the
    official code (its rate_dist and 1 - rate_norm). Distances are computed among the filters
    that survive the norm step only. Like torch.nn.utils.prune's methods, ``compute_mask`` turns
    a tensor into a 0/1 mask; ``select`` gives the indices."""

    def __init__(self, amount: float, distance: str = "l2", norm_amount: float = 0.0,
                 channel_multiple: int = 1):
        if distance not in DISTANCES:
            raise UserError(f"unknown distance {distance!r}; choose one of: {', '.join(DISTANCES)}")
        self.amount = amount
        self.norm_amount = norm_amount
        self.channel_multiple = channel_multiple
        self.distance = DISTANCES[distance]()

    def counts(self, filters: int):
        """(by norm, by distance) filters to prune out of ``filters``."""
        by_norm, by_distance = pruned_count(filters, self.norm_amount), pruned_count(filters, self.amount)
        return aligned_counts(filters, by_norm, by_distance, self.channel_multiple)

    @torch.no_grad()
    def select(self, weight: torch.Tensor) -> torch.Tensor:
        """Sorted indices of the filters to prune (dimension 0 of ``weight``)."""
        vectors = weight.detach().flatten(1).double()  # double: sums of many distances tie less
        by_norm, by_distance = self.counts(len(vectors))
        order = torch.argsort(vectors.norm(dim=1), stable=True)
        smallest_norm, survivors = order[:by_norm], order[by_norm:]
        scores = self.distance.pairwise(vectors[survivors]).sum(dim=1)
        nearest_median = survivors[torch.argsort(scores, stable=True)[:by_distance]]
        return torch.cat([smallest_norm, nearest_median]).sort().values

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
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
    """--fpgm_exclude may be repeated and may hold comma-separated names."""
    return [n.strip() for value in (values or []) for n in value.split(",") if n.strip()]


@register_pruner("fpgm")
class FPGMPruner(Pruner):

    structured = True

    @staticmethod
    def add_arguments(group) -> None:
        group.add_argument("--fpgm_distance", choices=sorted(DISTANCES), default="l2",
                           help="distance between flattened filters")
        group.add_argument("--fpgm_norm_rate", type=cli.fraction, default=0.0,
                           help="FPGM-mix: fraction of each layer's filters removed first by "
                                "smallest L2 norm, in addition to the --cut_rate fraction chosen "
                                "by distance among the rest; the two add up as in the official "
                                "code (its --rate_norm 0.7 --rate_dist 0.1 is "
                                "--fpgm_norm_rate=0.3 --cut_rate=0.1). 0 = FPGM only")
        group.add_argument("--fpgm_mode", choices=MODES, default="soft",
                           help="soft: reselect and zero at the end of every retraining epoch, "
                                "zeroed filters keep training (the paper); fixed: keep the first "
                                "selection, masked at zero (the official code's gradient mask)")
        group.add_argument("--fpgm_exclude", action="append", default=None, metavar="LAYER[,LAYER]",
                           help="layer names never pruned (repeatable or comma-separated), "
                                "e.g. conv1; the classifier is never pruned")
        group.add_argument("--prune_residual", type=cli.str2bool, default=False,
                           help="also prune the residual streams of networks with shortcuts (each "
                                "stage's stream as one group, in every layer that reads or writes "
                                "it); by default only channels inside blocks are pruned, which "
                                "leaves the streams as they are")
        group.add_argument("--channel_multiple", type=cli.positive_int, default=1,
                           help="keep a multiple of this many channels in every group (the "
                                "multiple nearest what --cut_rate keeps): 8 or 16 lets CPU "
                                "convolution kernels, which work on blocks of channels, turn the "
                                "removed FLOPs into speed; 1 keeps the paper's floor(N x rate)")
        group.add_argument("--finetune_epochs", type=cli.non_negative_int, default=0,
                           help="epochs of training of the compact model after the filters are "
                                "removed. Soft mode ends on a fresh zeroing that no epoch has "
                                "recovered from: with few --epochs (1 or 2) that costs accuracy, "
                                "and a few fine-tuning epochs win it back; 0 keeps the paper's "
                                "schedule")

    @classmethod
    def from_args(cls, args) -> "FPGMPruner":
        return cls(cut_rate=args.cut_rate, distance=args.fpgm_distance,
                   norm_rate=args.fpgm_norm_rate, mode=args.fpgm_mode,
                   exclude=_names(args.fpgm_exclude), finetune_epochs=args.finetune_epochs,
                   prune_residual=args.prune_residual, channel_multiple=args.channel_multiple)

    def __init__(self, cut_rate: float = DEFAULT_CUT_RATE, distance: str = "l2",
                 norm_rate: float = 0.0, mode: str = "soft", exclude: Sequence[str] = (),
                 finetune_epochs: int = 0, prune_residual: bool = False,
                 channel_multiple: int = 1):
        super().__init__(cut_rate)
        self.rate = self.cut_rate
        self.norm_rate = check_rate("--fpgm_norm_rate", norm_rate)
        self.mode = mode
        self.exclude = list(exclude)
        self.finetune_epochs = int(finetune_epochs)
        self.prune_residual = bool(prune_residual)
        if self.mode not in MODES:
            raise UserError(f"--fpgm_mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.finetune_epochs < 0:
            raise UserError(f"--finetune_epochs must be zero or more, got {self.finetune_epochs}")
        if int(channel_multiple) < 1:
            raise UserError(f"--channel_multiple must be at least 1, got {channel_multiple}")
        self.channel_multiple = int(channel_multiple)
        self.criterion = GeometricMedianFilters(self.rate, distance, self.norm_rate,
                                                self.channel_multiple)
        self.selection: Dict[str, torch.Tensor] = {}
        self.epoch_log: List[dict] = []
        self.finetune_log: List[dict] = []
        self.original_widths: Optional[list] = None
        self.widths: Optional[list] = None
        self.compact_difference: Optional[float] = None
        self.graph: Optional[DependencyGraph] = None
        self.flops: Optional[dict] = None

    def check_model(self, model: nn.Module) -> None:
        if any(True for _ in masked_tensors(model)):
            raise UserError("this checkpoint is magnitude-pruned (it carries weight masks); fpgm "
                            "removes whole filters of a dense model: prune the dense checkpoint "
                            "it came from")
        self.prunable_groups(model)

    # -- which groups, how many ------------------------------------------------------------

    def prunable_groups(self, model: nn.Module) -> List[Group]:
        """The channel groups this run prunes (every group that is neither the input's, the
        output's, nor, without --prune_residual, a residual stream; none written by an excluded
        layer). Checks the flags against the model (unknown names, a group emptied, operations
        the graph does not know), so it runs before any training."""
        self.graph = graph_of(model)
        names = [name for name, _ in weight_layers(model)]
        unknown = [n for n in self.exclude if n not in names]
        if unknown:
            raise UserError(f"--fpgm_exclude names no layer of {type(model).__name__}: "
                            f"{', '.join(unknown)}; its layers are {', '.join(names)}")
        groups = [g for g in self.graph.prunable(residual=self.prune_residual)
                  if not set(g.writers) & set(self.exclude)]
        for group in groups:
            by_norm, by_distance = self.criterion.counts(len(group))
            if by_norm + by_distance >= len(group):
                raise UserError(
                    f"--cut_rate={self.rate} with --fpgm_norm_rate={self.norm_rate} would remove "
                    f"all {len(group)} filters of {group.name} ({by_norm} by norm + {by_distance} "
                    "by distance); lower the rates or --fpgm_exclude it")
        return groups

    def select(self, model: nn.Module, groups: List[Group]) -> Dict[str, torch.Tensor]:
        """Per group, the positions of the channels to prune, judged on the filters of every
        layer that writes them together (see models/compact.group_vectors)."""
        return {g.name: self.criterion.select(group_vectors(model, self.graph, g)) for g in groups}

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
            print_fn(f"fpgm epoch {epoch}: zeroed {entry['zeroed']} filters; of the last "
                     f"selection {regrown} had grown back and {left} left it")
        return entry

    # -- the method ------------------------------------------------------------------------

    def train_masked(self, model: nn.Module, context: PruneContext) -> Dict[str, torch.Tensor]:
        """Soft- or fixed-prune ``model`` in place while retraining; returns the final selection
        (its channels are zero in ``model``)."""
        groups = self.prunable_groups(model)
        self.selection, self.epoch_log = {}, []
        print_fn = context.print_fn
        if self.mode == "fixed":
            # torch.nn.utils.prune masks: the forward uses weight_orig x mask, so the pruned
            # channels' gradients are masked and they stay exactly zero through every step.
            self.selection = self.select(model, groups)
            sets = self._sets(self.selection)
            zero_channels(model, self.graph, sets)
            apply_masks(model, channel_masks(model, self.graph, sets))
            try:
                context.retrain(model)
            finally:
                make_permanent(model)
        else:
            # The paper's schedule: train an epoch, then select and zero; no zeroing before the
            # first epoch, so the optimizer holds state for every filter when it starts.
            context.retrain(model, on_epoch_end=lambda epoch: self.soft_step(model, groups, epoch,
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
        self.compact_difference = self._max_difference(model, small, context.test.images[:256])
        context.print_fn(f"fpgm: widths {self.original_widths} -> {self.widths} "
                         f"({self.mode} mode, {self.criterion.distance.name} distance); compact vs "
                         f"masked model: max |logit difference| {self.compact_difference:.2e} "
                         f"on {min(len(context.test), 256)} test images")
        if self.finetune_epochs:
            # New, smaller parameters: retrain builds a new optimizer over them.
            context.print_fn(f"fpgm: fine-tuning the compact model for {self.finetune_epochs} epochs")
            self.finetune_log = context.retrain(small, epochs=self.finetune_epochs)
        return small

    @staticmethod
    @torch.no_grad()
    def _max_difference(masked: nn.Module, small: nn.Module, images: torch.Tensor) -> float:
        """Evidence, on every run, that removal kept the function the masked model computes."""
        with eval_mode(masked, small):
            return float((masked(images) - small(images)).abs().max()) if len(images) else 0.0

    def metadata(self) -> dict:
        return {
            "method": self.name, "cut_rate": self.rate, "norm_rate": self.norm_rate,
            "distance": self.criterion.distance.name, "mode": self.mode, "exclude": self.exclude,
            "original_widths": self.original_widths, "widths": self.widths,
            "pruned_filters": {name: index.tolist() for name, index in self.selection.items()},
            "epochs": self.epoch_log, "compact_max_difference": self.compact_difference,
            "prune_residual": self.prune_residual, "channel_multiple": self.channel_multiple,
            "flops": self.flops,
            "finetune_epochs": self.finetune_epochs,
            "finetune_acc": self.finetune_log[-1]["test_acc"] if self.finetune_log else None,
        }
