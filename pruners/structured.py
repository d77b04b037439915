"""Structured (filter) pruning from the command line, once for every criterion: a schedule over
the step-level API (pruners/channel.ChannelPruner) through the shared training loop, physical
removal, metadata.

A criterion (pruners/criteria) only says which channels of a group go: FPGM's geometric median,
the smallest L1 norm of Li et al. 2017, the smallest L2 norm of SFP, Molchanov et al.'s Taylor
importance. The groups come from the model's channel-dependency graph (pruners/graph): every conv
and hidden linear layer of a plain chain, block-internal channels of a residual network, the
expanded channels of an inverted residual with its depthwise conv and its squeeze-and-excitation
gate, and with ``prune_residual`` the residual streams; never the classifier's outputs.

Soft mode (FPGM's and SFP's schedule) selects and zeroes at the end of every retraining epoch and
lets training update the zeroed channels, so the selection can change; fixed mode (Li et al.'s)
holds the first selection at zero under torch.nn.utils.prune masks. Afterwards the selected
channels are removed by surgery (pruners/compact.py): a smaller model of the same classes, checked
against the masked one.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from pruners.base import DEFAULT_CUT_RATE, PruneContext, Pruner, check_rate
from pruners.channel import MODES, ChannelPruner
from pruners.compact import group_rows, structure
from pruners.criteria import Criterion
from pruners.graph import DependencyGraph, Group
from pruners.graph.core import ATTENTION_UNITS, check_attention_units
from utils import cli
from utils.errors import UserError
from utils.masks import make_permanent, masked_tensors
from utils.reporting.counting import LayerStats, layer_stats

# Batches of the training split the data-aware criteria (taylor) see at every selection.
DATA_BATCHES = 8


# ---- what the paper's counting claims -----------------------------------------------------

def paper_counted_flops(graph: DependencyGraph, stats: List[LayerStats], rate: float) -> Optional[int]:
    """The FLOPs the FPGM paper's counting reports for pruning every conv layer at ``rate``:
    each conv's FLOPs x (1 - rate) for its pruned filters, x (1 - rate) again when its input
    comes straight from a pruned conv's output (not through a residual add); linear layers dense.
    In a basic block that is the first conv at (1 - r) and the second at (1 - r)^2, as the
    official CIFAR code counts, although the residual stream the block adds into keeps its width
    and so must the second conv's outputs: the compact model's FLOPs are what is real.
    None for a model with no conv whose filters are pruned inside a block (a vision
    transformer's only conv writes its embedding stream): the counting describes none of it."""
    reads = {u.layer: u for u in graph.uses if not u.writes and u.dim == 1}
    convs = {layer.name for layer in stats if len(layer.output_shape) == 3}
    written = [graph.group_of.get(u.sets[0]) for u in graph.uses
               if u.writes and u.dim == 0 and u.layer in convs and u.sets]
    if not any(g is not None and not g.fixed and not g.residual for g in written):
        return None
    total = 0.0
    for layer in stats:
        if len(layer.output_shape) != 3:  # a linear layer: the paper prunes convolutions only
            total += layer.flops
            continue
        read = reads.get(layer.name)  # none for a depthwise conv: its inputs are its outputs
        source = graph.group_of.get(read.sets[0]) if read is not None else None
        squared = source is not None and not source.fixed and not source.residual
        total += layer.flops * (1 - rate) * ((1 - rate) if squared else 1)
    return int(round(total))


# ---- the pruner ------------------------------------------------------------------------------

def _names(values: Optional[List[str]]) -> List[str]:
    """--exclude may be repeated and may hold comma-separated names."""
    return [n.strip() for value in (values or []) for n in value.split(",") if n.strip()]


def _widths(model: nn.Module) -> Optional[list]:
    """A registered model's widths; None for one without a widths config (torchvision's, a
    user's: its checkpoint records the structure per module instead)."""
    widths = getattr(model, "widths", None)
    return list(widths) if widths is not None else None


class StructuredPruner(Pruner):
    """Base of the filter-pruning methods; a subclass sets ``default_mode`` and builds its
    criterion for a rate (``make_criterion``)."""

    structured = True
    default_mode = "soft"
    SHARED_GROUP = "structured pruning options (fpgm, l1norm, sfp, taylor)"

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
        group.add_argument("--attention", choices=ATTENTION_UNITS, default="heads",
                           help="what the groups of attention modules prune (ViT, Swin, MaxViT): "
                                "heads (whole heads: a head's query, key and value rows and its "
                                "output columns) or head_width (every head keeps its heads' count "
                                "and loses as many query/key and value dimensions as the others; "
                                "groups <projection>[qk] and <projection>[v]). The 1/sqrt(head "
                                "width) scale stays the original one either way")
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
                    layer_rates=getattr(args, "layer_rates", None),
                    attention=getattr(args, "attention", "heads"))

    @classmethod
    def from_args(cls, args) -> "StructuredPruner":
        return cls(**cls.shared_kwargs(args))

    def __init__(self, cut_rate: float = DEFAULT_CUT_RATE, mode: Optional[str] = None,
                 exclude: Sequence[str] = (), finetune_epochs: int = 0,
                 prune_residual: bool = False, channel_multiple: int = 1,
                 layer_rates: Optional[Dict[str, float]] = None, attention: str = "heads"):
        super().__init__(cut_rate)
        self.attention = check_attention_units(attention)
        self.rate = self.cut_rate
        self.mode = mode or self.default_mode
        self.exclude = list(exclude)
        self.finetune_epochs = int(finetune_epochs)
        self.prune_residual = bool(prune_residual)
        self.channel_multiple = int(channel_multiple)
        self.layer_rates = {name: check_rate(f"layer_rates[{name!r}]", rate)
                            for name, rate in (layer_rates or {}).items()}
        if self.mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.finetune_epochs < 0:
            raise UserError(f"finetune_epochs must be zero or more, got {self.finetune_epochs}")
        if self.channel_multiple < 1:
            raise UserError(f"channel_multiple must be at least 1, got {channel_multiple}")
        self.criterion = self.make_criterion()
        self.selection: Dict[str, torch.Tensor] = {}
        self.epoch_log: List[dict] = []
        self.finetune_log: List[dict] = []
        self.finetune_acc: Optional[float] = None
        self.original_widths: Optional[list] = None
        self.widths: Optional[list] = None
        self.structure: Dict[str, dict] = {}
        self.compact_difference: Optional[float] = None
        self.graph: Optional[DependencyGraph] = None
        self.flops: Optional[dict] = None
        self.group_rates: Dict[str, float] = {}
        self._channel_pruner: Optional[ChannelPruner] = None

    def make_criterion(self) -> Criterion:
        raise NotImplementedError

    def describe_criterion(self) -> str:
        return self.criterion.describe()

    def check_model(self, model: nn.Module) -> None:
        if any(True for _ in masked_tensors(model)):
            raise UserError(f"this checkpoint is magnitude-pruned (it carries weight masks); "
                            f"{self.name} removes whole filters of a dense model: prune the dense "
                            "checkpoint it came from")
        self.prunable_groups(model)

    # -- which groups, how many ------------------------------------------------------------

    def channel_pruner(self, model: nn.Module, example_inputs=None) -> ChannelPruner:
        """The step-level pruner this schedule drives (its graph built once per model)."""
        if self._channel_pruner is None or self._channel_pruner.model is not model:
            inputs = example_inputs if example_inputs is not None else model.input_shape
            self._channel_pruner = ChannelPruner(
                model, inputs, criterion=self.criterion, rate=self.rate,
                layer_rates=self.layer_rates, prune_residual=self.prune_residual,
                exclude=self.exclude, channel_multiple=self.channel_multiple, mode=self.mode,
                attention=self.attention)
            self.graph = self._channel_pruner.graph
            self.group_rates = dict(self._channel_pruner.group_rates)
        return self._channel_pruner

    def prunable_groups(self, model: nn.Module, example_inputs=None) -> List[Group]:
        """The channel groups this run prunes. Checks the arguments against the model (unknown
        names, a group emptied, operations the graph does not know), so it runs before any
        training."""
        return self.channel_pruner(model, example_inputs).prunable

    def select_at(self, model: nn.Module, group: Group, rate: float) -> torch.Tensor:
        """Positions of ``group``'s channels the criterion removes at ``rate`` (sensitivity)."""
        return self.channel_pruner(model).select_group(group, rate=rate)

    # -- soft mode -------------------------------------------------------------------------

    def _data(self, context: Optional[PruneContext]):
        """Training batches for a criterion that asks for data."""
        if not self.criterion.needs_data or context is None:
            return None
        batches = context.train.batches(context.settings.batch_size, shuffle=True,
                                        generator=context.generator)
        return [batch for _, batch in zip(range(DATA_BATCHES), batches)]

    def soft_step(self, model: nn.Module, groups: List[Group], epoch: int, print_fn=None,
                  context: Optional[PruneContext] = None) -> dict:
        """Reselect from the current weights and zero the selection (BatchNorm's scale and
        shift too). Records how many channels zeroed last time have grown back and how many of
        them left the selection."""
        pruner = self.channel_pruner(model)
        old = dict(self.selection)
        regrown = 0
        for group in groups:
            if group.name in old:
                rows = group_rows(model, self.graph, group)
                regrown += int((rows[old[group.name].to(rows.device)].abs().sum(dim=1) > 0).sum())
        new = pruner.step(self._data(context))
        left = sum(len(set(old[g].tolist()) - set(new[g].tolist())) for g in old if g in new)
        self.selection = dict(new)
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
        if self._channel_pruner is not None:
            self._channel_pruner.selection = dict(self.selection)

    def train_masked(self, model: nn.Module, context: PruneContext) -> Dict[str, torch.Tensor]:
        """Soft- or fixed-prune ``model`` in place while retraining; returns the final selection
        (its channels are zero in ``model``)."""
        groups = self.prunable_groups(model)
        pruner = self.channel_pruner(model)
        self.selection, self.epoch_log = {}, []
        pruner.selection = {}
        context.track("selection", self._selection_state, self._set_selection_state)
        print_fn = context.print_fn
        if self.mode == "fixed":
            # Masks hold the first selection at zero through every optimizer step.
            self.selection = dict(pruner.step(self._data(context)))
            try:
                context.retrain(model, phase="fixed")
            finally:
                make_permanent(model)
        else:
            # The soft schedule: train an epoch, then select and zero; no zeroing before the
            # first epoch, so the optimizer holds state for every filter when it starts.
            context.retrain(model, phase="soft",
                            on_epoch_end=lambda epoch: self.soft_step(model, groups, epoch,
                                                                      print_fn, context))
            if not self.epoch_log:  # --epochs=0: prune the trained weights once
                self.soft_step(model, groups, 0, print_fn, context)
        pruner.selection = dict(self.selection)
        return self.selection

    def prune(self, model: nn.Module, context: PruneContext) -> nn.Module:
        self.check_model(model)
        self.original_widths = _widths(model)
        input_shape = tuple(model.input_shape)
        dense_flops = layer_stats(model, input_shape)
        self.train_masked(model, context)
        pruner = self.channel_pruner(model)
        pruner.example_inputs = (context.test.first_images(256),)
        small = pruner.compact()
        self.compact_difference = pruner.compact_difference
        self.widths = _widths(small)
        self.structure = structure(model, small)
        self.flops = {"dense": sum(s.flops for s in dense_flops),
                      "compact": sum(s.flops for s in layer_stats(small, input_shape)),
                      "paper_counting": paper_counted_flops(self.graph, dense_flops, self.rate)}
        shape = (f"widths {self.original_widths} -> {self.widths}" if self.widths is not None
                 else f"{len(self.structure)} modules smaller")
        context.print_fn(f"{self.name}: {shape} ({self.mode} mode, {self.describe_criterion()}); "
                         f"compact vs masked model: max |difference| {self.compact_difference:.2e} "
                         f"of the largest output on {min(len(context.test), 256)} test images")
        if self.finetune_epochs:
            # New, smaller parameters: retrain builds a new optimizer over them.
            context.print_fn(f"{self.name}: fine-tuning the compact model for "
                             f"{self.finetune_epochs} epochs")
            self.finetune_log = context.retrain(small, epochs=self.finetune_epochs,
                                                phase="finetune")
            self.finetune_acc = context.accuracy(small, self.finetune_log)
        return small

    def metadata(self) -> dict:
        return {
            "method": self.name, "criterion": self.describe_criterion(), "cut_rate": self.rate,
            "layer_rates": self.layer_rates, "group_rates": self.group_rates, "mode": self.mode,
            "exclude": self.exclude, "original_widths": self.original_widths,
            "widths": self.widths,
            "pruned_filters": {name: index.tolist() for name, index in self.selection.items()},
            "epochs": self.epoch_log, "compact_max_difference": self.compact_difference,
            "prune_residual": self.prune_residual, "channel_multiple": self.channel_multiple,
            "attention": self.attention, "flops": self.flops, "finetune_epochs": self.finetune_epochs,
            "finetune_acc": self.finetune_acc,
        }
