"""Han et al., NIPS 2015, "Learning both Weights and Connections for Efficient Neural Networks":
remove the individual conv/linear weights of smallest magnitude |w|, retrain the survivors with
the removed ones held at zero, and repeat for higher compression.

Masks go through torch.nn.utils.prune (``weight = weight_orig * weight_mask`` in a forward
pre-hook), so a pruned weight is zero in every forward pass whatever the optimizer does to
``weight_orig`` (momentum, Adam's moments, weight decay), and the gradient reaching a pruned
weight is multiplied by the 0/1 mask, never by the weights (the reference's bug). The model is
returned with its masks on: the checkpoint stores them (utils/masks.py), and a model loaded from
it is pruned further, or fine-tuned, with the same masks, so pruned weights stay pruned.

Each round is a step of pruners.magnitude.MagnitudePruner (the step-level API): exactly the k
smallest |w| are removed, ties broken by position, through the radix select there. This module
is the schedule around it: rounds, Han's quality rule, dropout adjustment, sparse inference.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from utils.layers import weight_layers
from pruners.registry import register_pruner
from pruners.base import DEFAULT_CUT_RATE, PruneContext, Pruner, check_rate
from utils import cli
from utils.errors import UserError
from utils.masks import mask_of, trained_tensor
from pruners.magnitude import SCOPES, MagnitudePruner, MagnitudeUnstructured
from pruners.sparse_linear import SPARSE_INFERENCE_MODES, sparsify_linear_layers



# ---------------------------------------------------------------- schedule and dropout

def schedule_sparsity(target: float, rounds: int, start: float = 0.0) -> List[float]:
    """Sparsity after each round, from ``start`` (what an already pruned model has) to
    ``target`` at the last. Each round removes the same fraction of the weights still alive
    (density (1-start) x ((1-target)/(1-start))^(i/N)), so later rounds, when the network has
    less slack, remove fewer weights in absolute terms, as in Han's iterations."""
    ratio = (1 - target) / (1 - start)
    steps = [1 - (1 - start) * ratio ** (i / rounds) for i in range(1, rounds)]
    return steps + [target]  # the target itself, not a float power that lands a hair off


def adjusted_dropout(rate: float, connections_original: int, connections_now: int) -> float:
    """Han et al. Eq. 2: D_r = D_o * sqrt(C_ir / C_io). A sparser layer has less capacity to
    overfit and its surviving weights matter more, so its input dropout shrinks."""
    if connections_original <= 0:
        return rate
    return rate * math.sqrt(connections_now / connections_original)


# ---------------------------------------------------------------- the pruner

@register_pruner("songhan")
class SongHanPruner(Pruner):
    """Magnitude pruning of individual weights, Han et al. 2015."""

    sparse_checkpoint = True  # unstructured zeros: the bitmask + values form shrinks the file
    citation = "magnitude (Han et al. 2015)"

    @staticmethod
    def add_arguments(group) -> None:
        group.add_argument("--pruning_epochs", type=cli.positive_int, default=1,
                           help="pruning rounds; each prunes further along a schedule that "
                                "reaches --cut_rate at the last round, then retrains --epochs "
                                "epochs")
        group.add_argument("--prune_scope", choices=SCOPES, default="global",
                           help="global: --cut_rate of all prunable weights together, one "
                                "magnitude threshold for the whole network; layer: --cut_rate "
                                "of every layer")
        group.add_argument("--quality", type=cli.positive_float, default=None,
                           help="Han's rule instead of --cut_rate (do not give both): remove "
                                "weights with |w| < quality x std of their layer's weights (per "
                                "layer; std of the trained weights before pruning; Han et al. use "
                                "about 0.5-2)")
        group.add_argument("--prune_bias", type=cli.str2bool, default=False,
                           help="also prune biases (the paper prunes connections only)")
        group.add_argument("--adjust_dropout", type=cli.str2bool, default=True,
                           help="Han's Eq. 2: scale the dropout before each pruned layer by "
                                "sqrt(remaining / original connections) while retraining")
        group.add_argument("--sparse_inference", choices=SPARSE_INFERENCE_MODES, default="auto",
                           help="run pruned linear layers with sparse CSR kernels: on, off, or "
                                "auto (only layers and batch sizes where it measurably pays on "
                                "CPU; see pruners/sparse_linear.py)")

    @classmethod
    def from_args(cls, args) -> "SongHanPruner":
        if args.quality is not None and args.cut_rate != DEFAULT_CUT_RATE:
            raise UserError("give either --cut_rate (a fraction of the weights) or --quality (a "
                            "threshold in standard deviations), not both")
        if args.quality is not None and args.layer_rates:
            raise UserError("give either --layer_rates (fractions per layer) or --quality (a "
                            "threshold in standard deviations), not both")
        return cls(cut_rate=args.cut_rate, rounds=args.pruning_epochs, scope=args.prune_scope,
                   quality=args.quality, prune_bias=args.prune_bias,
                   adjust_dropout=args.adjust_dropout, sparse_inference=args.sparse_inference,
                   layer_rates=args.layer_rates)

    def __init__(self, cut_rate: float = DEFAULT_CUT_RATE, rounds: int = 1, scope: str = "global",
                 quality: Optional[float] = None, prune_bias: bool = False,
                 adjust_dropout: bool = True, sparse_inference: str = "auto",
                 layer_rates: Optional[Dict[str, float]] = None):
        super().__init__(cut_rate)
        # Han et al.'s per-layer targets (their Tables 2 and 3): these layers are pruned each to
        # its own rate; the others follow --cut_rate and --prune_scope among themselves.
        self.layer_rates = {name: check_rate(f"layer_rates[{name!r}]", rate)
                            for name, rate in (layer_rates or {}).items()}
        self.quality = quality
        self.scope = scope
        self.rounds = int(rounds)
        self.prune_bias = bool(prune_bias)
        self.adjust_dropout = bool(adjust_dropout)
        self.sparse_inference = sparse_inference
        if self.quality is not None and not (math.isfinite(self.quality) and self.quality > 0):
            raise UserError(f"quality must be a positive number (Han et al. use about 0.5-2), "
                            f"got {self.quality}")
        if self.scope not in SCOPES:
            raise UserError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.rounds < 1:
            raise UserError(f"rounds must be at least 1, got {self.rounds}")
        if self.sparse_inference not in SPARSE_INFERENCE_MODES:
            raise UserError(f"sparse_inference must be one of "
                            f"{', '.join(SPARSE_INFERENCE_MODES)}, got {self.sparse_inference!r}")
        self._record: Dict = {}
        self._start_sparsity = 0.0
        self._layer_start: Dict[str, float] = {}

    # -- what gets pruned

    def targets(self, model: nn.Module) -> List[Tuple[str, nn.Module, str]]:
        """(layer name, module, tensor name) of every tensor to prune, in forward order."""
        return [(layer, module, tensor) for layer, module in weight_layers(model)
                for tensor in self.tensor_names if getattr(module, tensor, None) is not None]

    @property
    def tensor_names(self) -> Tuple[str, ...]:
        return ("weight", "bias") if self.prune_bias else ("weight",)

    @staticmethod
    def _current(module: nn.Module, tensor: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The trainable tensor and its mask (None before the first pruning)."""
        return trained_tensor(module, tensor), mask_of(module, tensor)

    # -- one pruning step

    @torch.no_grad()
    def prune_step(self, model: nn.Module, step: int) -> None:
        """Prune to the schedule's ``step``-th target (1-based); masks only grow. A step of
        MagnitudePruner (the step-level API): scripts and code share one code path."""
        targets = self.targets(model)
        if self.quality is not None:
            fraction = step / self.rounds  # the threshold grows linearly to q x std
            for (layer, module, tensor), std in zip(targets, self._stds):
                method = MagnitudeUnstructured(threshold=self.quality * fraction * std)
                orig, mask = self._current(module, tensor)
                default = mask if mask is not None else torch.ones_like(orig)
                prune.custom_from_mask(module, tensor, method.compute_mask(orig, default))
            return
        layer_rates = {layer: schedule_sparsity(rate, self.rounds, self._layer_start[layer])[step - 1]
                       for layer, rate in self.layer_rates.items()}
        sparsity = schedule_sparsity(self.cut_rate, self.rounds, self._start_sparsity)[step - 1]
        MagnitudePruner(model, sparsity, self.scope, layer_rates, tensors=self.tensor_names).step()

    def _adjust_dropout(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for layer, dropout in getattr(model, "dropout_before", {}).items():
            module = modules[layer]
            _, mask = self._current(module, "weight")
            now = int(torch.count_nonzero(mask)) if mask is not None else module.weight.numel()
            rate = adjusted_dropout(self._dropout_original[dropout],
                                    self._connections_original[layer], now)
            modules[dropout].p = rate
            self._record.setdefault("dropout", {})[dropout] = rate

    # -- the whole method

    def check_model(self, model: nn.Module) -> None:
        """A model pruned before keeps its masks (masks only grow): a target it has already
        reached would prune nothing and is refused before any retraining; so are per-layer rates
        for layers the model does not have."""
        layers = [name for name, _ in weight_layers(model)]
        modules = dict(model.named_modules())
        # A module that exists but holds no conv/linear weights (a BatchNorm, an activation, a
        # block) would take the rate and prune nothing: say what it is rather than "no layer".
        never = [f"{name} ({type(modules[name]).__name__})" for name in self.layer_rates
                 if name in modules and name not in layers]
        if never:
            raise UserError(f"layer_rates names {', '.join(never)}, which songhan never prunes: "
                            f"it prunes the weights of conv and linear layers only "
                            f"({', '.join(layers)})")
        unknown = [name for name in self.layer_rates if name not in layers]
        if unknown:
            raise UserError(f"layer_rates names no layer of {type(model).__name__}: "
                            f"{', '.join(unknown)}; its layers are {', '.join(layers)}")
        for layer in self.layer_rates:
            pruned, total = self._count(model, [layer])
            self._layer_start[layer] = pruned / total if total else 0.0
            if pruned and self._layer_start[layer] >= self.layer_rates[layer]:
                raise UserError(f"{layer} already has {self._layer_start[layer]:.2%} of its weights "
                                f"pruned; --layer_rates {layer}={self.layer_rates[layer]} would "
                                "prune nothing more (pruned weights stay pruned)")
        rest = [name for name in layers if name not in self.layer_rates]
        pruned, total = self._count(model, rest)
        self._start_sparsity = pruned / total if total else 0.0
        if self.quality is None and pruned and rest and self._start_sparsity >= self.cut_rate:
            raise UserError(
                f"the model already has {pruned:,} of {total:,} prunable weights pruned "
                f"({self._start_sparsity:.2%}); --cut_rate={self.cut_rate} would prune nothing "
                f"more (pruned weights stay pruned): give a rate above {self._start_sparsity:.4f}")

    def prune(self, model: nn.Module, context: PruneContext) -> nn.Module:
        """Prunes and retrains in place. The model comes back with its torch.nn.utils.prune
        masks on, so the checkpoint stores them; make them permanent (utils.masks) for
        inference."""
        self.check_model(model)
        modules = dict(model.named_modules())
        dropout_before = getattr(model, "dropout_before", {})
        self._dropout_original = {d: modules[d].p for d in dropout_before.values()}
        # Han's C_io: the dense layer's connections, also when the model was pruned before.
        self._connections_original = {layer: modules[layer].weight.numel()
                                      for layer in dropout_before}
        targets = self.targets(model)
        # Han's std is of each layer's trained weights, taken once before this run's pruning.
        self._stds = [float(getattr(m, t).detach().float().std()) for _, m, t in targets]
        self._record = {"rounds": [], "start_sparsity": self._start_sparsity}
        for step in range(1, self.rounds + 1):
            self.prune_step(model, step)
            if self.adjust_dropout and dropout_before:
                self._adjust_dropout(model)
            pruned, total = self._count(model)
            pruned_acc = context.accuracy(model)
            context.print_fn(f"round {step}/{self.rounds}: {pruned:,} of {total:,} prunable "
                             f"entries pruned ({pruned / max(total, 1):.2%}), {context.monitor_name} acc "
                             f"{pruned_acc:.4f} before retraining {context.epochs} epochs")
            history = context.retrain(model, phase=f"round {step}")
            self._record["rounds"].append({"round": step, "pruned": pruned,
                                           "sparsity": pruned / max(total, 1),
                                           "acc_pruned": pruned_acc,
                                           "acc_retrained": context.accuracy(model, history)})
        self._record["layers"] = {}
        for layer, m, tensor in targets:
            values = getattr(m, tensor)
            nonzero = int(torch.count_nonzero(values))
            self._record["layers"][f"{layer}.{tensor}"] = {
                "entries": values.numel(), "nonzero": nonzero,
                "sparsity": 1 - nonzero / values.numel()}
        return model

    def _count(self, model: nn.Module, layers: Optional[Sequence[str]] = None) -> Tuple[int, int]:
        """(pruned, all) entries of the prunable tensors (of ``layers`` only, when given)."""
        pruned = total = 0
        for layer, module, tensor in self.targets(model):
            if layers is not None and layer not in layers:
                continue
            orig, mask = self._current(module, tensor)
            total += orig.numel()
            if mask is not None:
                pruned += orig.numel() - int(torch.count_nonzero(mask))
        return pruned, total

    def metadata(self) -> dict:
        rule = ({"quality": self.quality, "scope": "layer"} if self.quality is not None
                else {"cut_rate": self.cut_rate, "scope": self.scope,
                      "layer_rates": self.layer_rates})
        return {"method": self.name, **rule, "pruning_rounds": self.rounds,
                "prune_bias": self.prune_bias, "adjust_dropout": self.adjust_dropout,
                "sparse_inference": self.sparse_inference, **self._record}

    def inference_model(self, model: nn.Module) -> nn.Module:
        return sparsify_linear_layers(model, self.sparse_inference)
