"""Han et al., NIPS 2015, "Learning both Weights and Connections for Efficient Neural Networks":
remove the individual conv/linear weights of smallest magnitude |w|, retrain the survivors with
the removed ones held at zero, and repeat for higher compression.

Masks go through torch.nn.utils.prune (``weight = weight_orig * weight_mask`` in a forward
pre-hook), so a pruned weight is zero in every forward pass whatever the optimizer does to
``weight_orig`` (momentum, Adam's moments, weight decay), and the gradient reaching a pruned
weight is multiplied by the 0/1 mask, never by the weights (the reference's bug). The model is
returned with its masks on: the checkpoint stores them (utils/masks.py), and a model loaded from
it is pruned further, or fine-tuned, with the same masks, so pruned weights stay pruned.

Exactly the k smallest |w| are removed, ties broken by position (earlier layer, then earlier
flat index, goes first), through a two-pass radix select on the float bit patterns (see
``find_cut``): exact, and several times faster than torch.kthvalue on AlexNet-size models.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from models.base import weight_layers
from pruners.registry import register_pruner
from pruners.base import DEFAULT_CUT_RATE, PruneContext, Pruner, check_rate
from utils import cli
from utils.errors import UserError
from utils.masks import mask_of, trained_tensor
from pruners.sparse_linear import SPARSE_INFERENCE_MODES, sparsify_linear_layers

SCOPES = ("global", "layer")
_ABS_BITS = 0x7FFFFFFF   # clearing the sign bit of an IEEE float is |w|
_HIGH_BUCKETS = 1 << 15   # first radix pass: the top 16 bits of a non-negative int32 key
_LOW_BUCKETS = 1 << 16    # second pass: the low 16 bits
_NOTHING = -1                           # a cut below every key removes nothing
_EVERYTHING = torch.iinfo(torch.int32).max  # no key is above it: everything goes


# ---------------------------------------------------------------- exact k-smallest selection

def magnitude_keys(tensor: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Flat int32 keys that sort like |tensor|: a non-negative IEEE float's bit pattern, read as
    an integer, orders exactly as its value. Entries where ``mask`` is 0 (pruned before) get key
    0, like |w| = 0.0; ``keep_masks`` puts them ahead of live zeros.
    Non-float32 tensors are compared in float32 (exact for half/bfloat16; float64 values that
    round to the same float32 count as ties)."""
    flat = tensor.detach().reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    keys = flat.contiguous().view(torch.int32).bitwise_and(_ABS_BITS)
    if mask is not None:
        keys.masked_fill_(mask.reshape(-1) == 0, 0)
    return keys


@dataclass(frozen=True)
class Cut:
    """Removes every entry whose key is below ``key`` and the first ``ties`` entries (in order,
    entries pruned before first) whose key equals it: exactly the k smallest."""
    key: int
    ties: int
    tied: int  # how many entries hold ``key`` in all; ties == tied needs no positional pass

    def threshold(self) -> float:
        """The |w| at the cut."""
        key = min(max(self.key, 0), _ABS_BITS)
        return torch.tensor([key], dtype=torch.int32).view(torch.float32).item()


def _first_reaching(cumulative: torch.Tensor, k: int) -> int:
    """Index of the first bucket whose cumulative count reaches k."""
    return int(torch.searchsorted(cumulative, torch.tensor([k], dtype=cumulative.dtype)).item())


def find_cut(keys: Sequence[torch.Tensor], k: int) -> Cut:
    """Where the k smallest keys over all of ``keys`` (taken in order, as one sequence) end.

    Radix select: a histogram of the high 16 bits over everything (torch.bincount, one pass),
    then a histogram of the low 16 bits of only the entries in the bucket holding the k-th key.
    On the 57M-weight alexnet_imagenet that is four elementwise passes, 0.3-0.5 s here, against
    torch.kthvalue's 0.8-2.3 s and torch.sort's 3.5 s (benchmarks/songhan_sparse.py prints it),
    exact, and it never concatenates the layers."""
    total = sum(kk.numel() for kk in keys)
    if k <= 0:
        return Cut(key=_NOTHING, ties=0, tied=0)
    if k >= total:
        return Cut(key=_EVERYTHING, ties=0, tied=0)
    high = [kk >> 16 for kk in keys]
    hist = sum(torch.bincount(h, minlength=_HIGH_BUCKETS) for h in high)
    cumulative = hist.cumsum(0)
    bucket = _first_reaching(cumulative, k)
    below = int(cumulative[bucket - 1]) if bucket > 0 else 0
    members = torch.cat([kk[h == bucket] for kk, h in zip(keys, high)])
    low_hist = torch.bincount(members & 0xFFFF, minlength=_LOW_BUCKETS)
    low_cumulative = low_hist.cumsum(0)
    low = _first_reaching(low_cumulative, k - below)
    below += int(low_cumulative[low - 1]) if low > 0 else 0
    return Cut(key=(bucket << 16) | low, ties=k - below, tied=int(low_hist[low]))


def keep_masks(keys: Sequence[torch.Tensor], cut: Cut,
               masks: Optional[Sequence[Optional[torch.Tensor]]] = None) -> List[torch.Tensor]:
    """Boolean keep-masks (flat) for each of ``keys``: False for the k entries ``cut`` removes.
    ``masks`` (the ones ``magnitude_keys`` saw) order entries pruned before ahead of live ones."""
    keep = [kk > cut.key for kk in keys]
    if cut.ties < cut.tied:
        # Only some entries at the cut's key go: the earliest ones. Entries pruned before all
        # hold key 0 and go first; the rest are ranked by position.
        masks = masks if masks is not None else [None] * len(keys)
        remaining = cut.ties
        tied = []
        for kk, m in zip(keys, masks):
            at_cut = kk == cut.key
            if cut.key == 0 and m is not None:
                was_pruned = m.reshape(-1) == 0
                remaining -= int(torch.count_nonzero(was_pruned))
                at_cut &= ~was_pruned
            tied.append(at_cut)
        for kp, at_cut in zip(keep, tied):
            positions = at_cut.nonzero().flatten()
            kp[positions[max(remaining, 0):]] = True
            remaining = max(0, remaining - len(positions))
    return keep


def smallest_k_masks(tensors: Sequence[torch.Tensor], k: int,
                     masks: Optional[Sequence[Optional[torch.Tensor]]] = None
                     ) -> List[torch.Tensor]:
    """0/1 masks (shaped and typed like ``tensors``) removing exactly the k entries of smallest
    |t| across all of them, taken in order; entries already masked count among the k and go
    first (k is raised to their number if smaller); ties go by position."""
    masks = list(masks) if masks is not None else [None] * len(tensors)
    pruned = sum(m.numel() - int(torch.count_nonzero(m)) for m in masks if m is not None)
    keys = [magnitude_keys(t, m) for t, m in zip(tensors, masks)]
    keep = keep_masks(keys, find_cut(keys, max(k, pruned)), masks)
    return [kp.view(t.shape).to(t.dtype if t.is_floating_point() else torch.float32)
            for kp, t in zip(keep, tensors)]


# ---------------------------------------------------------------- the criterion

class MagnitudeUnstructured(prune.BasePruningMethod):
    """Han et al.'s criterion, shaped like torch.nn.utils.prune's L1Unstructured.

    ``amount`` (int: a count, float in [0, 1]: a fraction of the tensor) is the tensor's total
    number of pruned entries after this step, counting those the default mask already removes:
    the schedule states sparsity targets, not increments. ``threshold`` instead removes every
    entry with |w| < threshold (Han's quality rule). Entries already masked stay masked.

    Applied through ``apply`` to a tensor that is already pruned, torch's PruningContainer hands
    compute_mask only the surviving entries, so ``amount`` then counts within those (as for
    torch's own methods)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount=None, threshold: Optional[float] = None):
        if (amount is None) == (threshold is None):
            raise ValueError("give exactly one of amount and threshold")
        if amount is not None:
            prune._validate_pruning_amount_init(amount)
        elif not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.amount = amount
        self.threshold = threshold

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        if self.threshold is not None:
            return default_mask * (t.detach().abs() >= self.threshold).to(default_mask.dtype)
        prune._validate_pruning_amount(self.amount, t.nelement())
        k = prune._compute_nparams_toprune(self.amount, t.nelement())
        (mask,) = smallest_k_masks([t], k, [default_mask])
        return default_mask * mask.to(default_mask.dtype)

    @classmethod
    def apply(cls, module, name, amount=None, threshold=None, importance_scores=None):
        return super().apply(module, name, amount=amount, threshold=threshold,
                             importance_scores=importance_scores)


def magnitude_unstructured(module: nn.Module, name: str, amount=None, threshold=None):
    """Thin functional form, like torch.nn.utils.prune.l1_unstructured."""
    MagnitudeUnstructured.apply(module, name, amount=amount, threshold=threshold)
    return module


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
            raise UserError(f"--quality must be a positive number (Han et al. use about 0.5-2), "
                            f"got {self.quality}")
        if self.scope not in SCOPES:
            raise UserError(f"--prune_scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.rounds < 1:
            raise UserError(f"--pruning_epochs must be at least 1, got {self.rounds}")
        if self.sparse_inference not in SPARSE_INFERENCE_MODES:
            raise UserError(f"--sparse_inference must be one of "
                            f"{', '.join(SPARSE_INFERENCE_MODES)}, got {self.sparse_inference!r}")
        self._record: Dict = {}
        self._start_sparsity = 0.0
        self._layer_start: Dict[str, float] = {}

    # -- what gets pruned

    def targets(self, model: nn.Module) -> List[Tuple[str, nn.Module, str]]:
        """(layer name, module, tensor name) of every tensor to prune, in forward order."""
        names = ("weight", "bias") if self.prune_bias else ("weight",)
        return [(layer, module, tensor) for layer, module in weight_layers(model)
                for tensor in names if getattr(module, tensor, None) is not None]

    @staticmethod
    def _current(module: nn.Module, tensor: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The trainable tensor and its mask (None before the first pruning)."""
        return trained_tensor(module, tensor), mask_of(module, tensor)

    # -- one pruning step

    @torch.no_grad()
    def prune_step(self, model: nn.Module, step: int) -> None:
        """Prune to the schedule's ``step``-th target (1-based); masks only grow."""
        targets = self.targets(model)
        if self.quality is not None:
            fraction = step / self.rounds  # the threshold grows linearly to q x std
            for (layer, module, tensor), std in zip(targets, self._stds):
                method = MagnitudeUnstructured(threshold=self.quality * fraction * std)
                self._apply(module, tensor, method)
            return
        for layer, module, tensor in targets:
            if layer in self.layer_rates:
                sparsity = schedule_sparsity(self.layer_rates[layer], self.rounds,
                                             self._layer_start[layer])[step - 1]
                self._apply(module, tensor, MagnitudeUnstructured(amount=sparsity))
        targets = [t for t in targets if t[0] not in self.layer_rates]
        if not targets:
            return
        sparsity = schedule_sparsity(self.cut_rate, self.rounds, self._start_sparsity)[step - 1]
        current = [self._current(module, tensor) for _, module, tensor in targets]
        if self.scope == "layer":
            for (_, module, tensor), _ in zip(targets, current):
                self._apply(module, tensor, MagnitudeUnstructured(amount=sparsity))
            return
        tensors, masks = zip(*current)
        total = sum(t.numel() for t in tensors)
        k = prune._compute_nparams_toprune(sparsity, total)
        new_masks = smallest_k_masks(tensors, k, masks)
        for (_, module, tensor), mask in zip(targets, new_masks):
            # custom_from_mask multiplies into an existing mask through torch's PruningContainer.
            prune.custom_from_mask(module, tensor, mask)

    @staticmethod
    def _apply(module: nn.Module, tensor: str, method: MagnitudeUnstructured) -> None:
        """Compute the mask over the whole tensor (so ``amount`` means total sparsity) and hand it
        to torch.nn.utils.prune."""
        orig, mask = SongHanPruner._current(module, tensor)
        default = mask if mask is not None else torch.ones_like(orig)
        prune.custom_from_mask(module, tensor, method.compute_mask(orig, default))

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
            raise UserError(f"--layer_rates names {', '.join(never)}, which songhan never prunes: "
                            f"it prunes the weights of conv and linear layers only "
                            f"({', '.join(layers)})")
        unknown = [name for name in self.layer_rates if name not in layers]
        if unknown:
            raise UserError(f"--layer_rates names no layer of {type(model).__name__}: "
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
