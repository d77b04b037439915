"""Han et al.'s magnitude pruning as a step-level API for any model and any training loop.

    pruner = MagnitudePruner(model, rate=0.9)         # every Conv2d and Linear layer, classifier too
    pruner.step()                                     # masks on: the 90% smallest |w| are zero
    train(model)                                      # pruned weights stay zero (the masks)

The masks are torch.nn.utils.prune's (``weight = weight_orig * weight_mask``), so a pruned weight
is zero in every forward pass whatever the optimizer does, and masks only grow: a later step to a
higher rate prunes further (a weight pruned once is never counted as kept again). ``scope=
"global"`` ranks all layers' weights together (one threshold, Han et al.'s global compression),
``"layer"`` prunes every layer to the rate; ``layer_rates`` sets a layer's own rate. The
classifier is included, as in Han et al.; ``exclude`` leaves layers out; ``tensors=("weight",
"bias")`` prunes biases too. songhan's rounds (pruning.py --pruning_method=songhan) are steps of
this class.

Exactly the k smallest |w| are removed, ties broken by position (earlier layer, then earlier
flat index, goes first), through a two-pass radix select on the float bit patterns (see
``find_cut``): exact, and several times faster than torch.kthvalue on AlexNet-size models.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from pruners.base import check_rate
from utils.errors import UserError
from utils.layers import weight_layers
from utils.masks import mask_of, trained_tensor

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


# ---------------------------------------------------------------- the step-level API

Target = Tuple[str, nn.Module, str]  # (layer name, module, tensor name)


class MagnitudePruner:
    def __init__(self, model: nn.Module, rate: float, scope: str = "global",
                 layer_rates: Optional[Dict[str, float]] = None, exclude: Sequence[str] = (),
                 tensors: Sequence[str] = ("weight",)):
        self.model = model
        self.rate = check_rate("rate", rate)
        if scope not in SCOPES:
            raise UserError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.scope = scope
        layers = weight_layers(model)
        known = {name for name, _ in layers}
        unknown = [n for n in list(layer_rates or {}) + list(exclude) if n not in known]
        if unknown:
            raise UserError(f"layer_rates or exclude name no Conv2d or Linear layer of "
                            f"{type(model).__name__}: {', '.join(unknown)}")
        self.targets: List[Target] = [
            (name, module, tensor) for name, module in layers if name not in set(exclude)
            for tensor in tensors if getattr(module, tensor, None) is not None]
        self.layer_rates = {name: check_rate(f"layer_rates[{name!r}]", r)
                            for name, r in (layer_rates or {}).items() if name not in set(exclude)}

    @torch.no_grad()
    def step(self, rate: Optional[float] = None, layer_rates: Optional[Dict[str, float]] = None
             ) -> Dict[str, float]:
        """Prune to ``rate`` (default: the constructor's) of the weights, and each layer of
        ``layer_rates`` to its own rate; returns every layer's sparsity."""
        rate = self.rate if rate is None else check_rate("rate", rate)
        layer_rates = dict(self.layer_rates, **(layer_rates or {}))
        for target in self.targets:
            if target[0] in layer_rates:
                self._prune_together([target], layer_rates[target[0]])
        rest = [t for t in self.targets if t[0] not in layer_rates]
        if self.scope == "layer":
            for target in rest:
                self._prune_together([target], rate)
        elif rest:
            self._prune_together(rest, rate)
        return self.sparsity()

    @staticmethod
    def _prune_together(targets: List[Target], rate: float) -> None:
        """Mask the ``rate`` smallest-magnitude entries of these tensors, ranked together (the
        already pruned ones count among them: masks only grow)."""
        tensors = [trained_tensor(module, tensor) for _, module, tensor in targets]
        masks = [mask_of(module, tensor) for _, module, tensor in targets]
        k = prune._compute_nparams_toprune(rate, sum(t.numel() for t in tensors))
        for (_, module, tensor), mask in zip(targets, smallest_k_masks(tensors, k, masks)):
            # custom_from_mask multiplies into an existing mask through torch's PruningContainer.
            prune.custom_from_mask(module, tensor, mask)

    def sparsity(self) -> Dict[str, float]:
        """Per layer, the fraction of its pruned tensors' entries that are masked."""
        pruned: Dict[str, List[int]] = {}
        for name, module, tensor in self.targets:
            mask = mask_of(module, tensor)
            total = trained_tensor(module, tensor).numel()
            zeros = 0 if mask is None else total - int(mask.sum())
            counts = pruned.setdefault(name, [0, 0])
            counts[0], counts[1] = counts[0] + zeros, counts[1] + total
        return {name: zeros / total for name, (zeros, total) in pruned.items()}
