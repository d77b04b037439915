"""The channel-dependency graph's data and its walk over a traced model.

The model is traced with torch.fx and run once on the example inputs by a torch.fx Interpreter.
Beside every tensor the walk keeps a *label*: an integer tensor of the same rank whose entries are
channel ids, of size 1 along every dimension the ids do not vary on (so (1, C, 1, 1) for an image
batch, (1, 1, 1, C) for a channels-last one, (1, C*H*W) after a flatten, each channel's id
repeated over its H x W block). Which dimension holds the channels is therefore read off the
label, never assumed.

A layer gives its outputs new ids; an elementwise operation of two labelled tensors merges their
ids entry by entry (union-find): a residual add makes a stage's stream one set of ids per
channel, a squeeze-and-excitation gate joins its channels to the features it scales. Operations
that only move data (view, permute, transpose, chunk, slicing, cat, channel shuffle) are applied
to the label itself, so where channels go is computed, not assumed. Every parameter and buffer
dimension indexed by channels is recorded with the ids along it: removing a channel means
removing its index from every one of them.

A channel *set* is a union-find class: the channels that live and die together. A *group* is the
sets written by the same layers: a pruning rate and a criterion apply to a group. A group may be
divided into *units* that leave whole (the channels of one group of a grouped convolution, of a
GroupNorm group), and its units into *blocks* that lose as many each (the heads of an attention
module whose per-head width is pruned). An operation may *divide* the sets one layer writes
into groups of their own (an attention projection's query/key rows and its value rows).

The operations themselves are an explicit table (pruners/graph/operations.py); anything else that
receives a labelled tensor is refused with an UnsupportedOperation naming it.
"""
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
import torch.fx
import torch.nn as nn

from utils.errors import UnsupportedOperation, UserError

# What a group of an attention module is: whole heads (a head's query, key and value rows
# leave together), or the per-head width (query/key dimensions in pairs, value dimensions
# alone, as many from every head; the head count stays).
ATTENTION_UNITS = ("heads", "head_width")


def check_attention_units(attention: str) -> str:
    if attention not in ATTENTION_UNITS:
        raise UserError(f"attention must be one of {', '.join(ATTENTION_UNITS)}, got {attention!r}")
    return attention


@dataclass
class Label:
    """Channel ids of a tensor: same rank, size 1 where the ids do not vary."""
    ids: torch.Tensor

    def varying(self) -> List[int]:
        """The dimensions that carry channels."""
        return [d for d, size in enumerate(self.ids.shape) if size > 1]


@dataclass
class Attr:
    """A parameter or buffer read in forward() (torch.fx get_attr): its dimensions get channel
    ids from the labelled tensors it is combined with."""
    key: str


@dataclass
class TensorUse:
    """Dimension ``dim`` of state_dict entry ``key`` is indexed by channel ids ``ids`` (one per
    index; an id repeats over its block after a flatten). ``writes``: the entry computes those
    channels (a layer's output rows, a normalisation's per-channel tensors, a gate's scale); else
    it reads them (a layer's input columns)."""
    key: str
    dim: int
    ids: torch.Tensor    # (a 1-D LongTensor: tens of thousands of them in a large model)
    writes: bool
    layer: str
    sets: List[int] = field(default_factory=list)  # the ids' channel sets, once all are merged


@dataclass
class Normalization:
    """A LayerNorm-like module whose statistics span channels: dimension ``dim`` of its input
    holds channel ids ``ids``. Removing channels changes what the kept ones output, so the masked
    model normalises over the kept channels only (pruners/compact.masked_normalization)."""
    module: str
    dim: int
    ids: List[int]
    sets: List[int] = field(default_factory=list)


@dataclass
class SizeUse:
    """Integer attribute ``attribute`` of module ``module`` counts the channels ``ids`` (a
    parameter-free layer's width, such as a zero-padding shortcut's appended channels):
    compaction sets it to the number kept."""
    module: str
    attribute: str
    ids: List[int]
    sets: List[int] = field(default_factory=list)


@dataclass
class Group:
    """Channel sets written by the same layers. ``sets`` are union-find roots in the order of the
    first writer's output channels; ``units``: positions within ``sets`` that leave together (one
    each when nothing couples them); ``residual``: merged by a residual add; ``fixed``: never
    pruned, for ``reason``."""
    name: str
    sets: List[int]
    writers: Tuple[str, ...]
    residual: bool
    fixed: bool
    reason: str = ""
    units: List[List[int]] = field(default_factory=list)
    # Indices into ``units`` that must each lose as many (one block per attention head when the
    # per-head width is pruned: every head keeps the same width). Empty: no such constraint.
    blocks: List[List[int]] = field(default_factory=list)

    def __len__(self):
        return len(self.sets)

    @property
    def size(self) -> int:
        return len(self.sets)


class UnionFind:
    """Channel ids in sets; a set's root is its smallest id (so any order of merges gives the
    same roots). The parents live in one tensor and every operation takes a tensor of ids at
    once: a model has tens of thousands of channel ids, and a Python ``find`` per id was most of
    the time it took to build the graph."""

    def __init__(self):
        self._parents = torch.empty(0, dtype=torch.long)  # room to grow; the first ``count`` used
        self.count = 0

    @property
    def parent(self) -> torch.Tensor:
        """Each id's parent (a view: writing to it links ids)."""
        return self._parents[:self.count]

    def new(self, count: int) -> torch.Tensor:
        start = self.count
        if start + count > len(self._parents):  # double, so that n ids cost O(n) copies
            grown = torch.empty(max(2 * len(self._parents), start + count, 1024), dtype=torch.long)
            grown[:start] = self._parents[:start]
            self._parents = grown
        ids = torch.arange(start, start + count)
        self._parents[start:start + count] = ids
        self.count = start + count
        return ids

    def roots(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` with every entry replaced by its root; the paths walked are compressed."""
        parent = self.parent
        flat = ids.reshape(-1)
        found = parent[flat]
        while True:
            above = parent[found]
            if torch.equal(above, found):
                break
            found = above
        parent[flat] = found
        return found.reshape(ids.shape)

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Merge the set of ``a[i]`` with the set of ``b[i]`` for every i (same shapes). Each pass
        links every differing pair's larger root to the smallest root it meets in that pass; the
        other pairs that meet it are joined in a later pass, so passes repeat until every pair
        agrees (each pass merges at least one pair of sets)."""
        a, b = a.reshape(-1), b.reshape(-1)
        while True:
            root_a, root_b = self.roots(a), self.roots(b)
            differ = root_a != root_b
            if not bool(differ.any()):
                return
            root_a, root_b = root_a[differ], root_b[differ]
            low, high = torch.minimum(root_a, root_b), torch.maximum(root_a, root_b)
            self.parent.scatter_reduce_(0, high, low, reduce="amin")


@dataclass
class DependencyGraph:
    """Built by ``build_graph``; see the module docstring."""
    model_name: str
    uses: List[TensorUse]
    groups: List[Group]
    output_sets: Dict[str, List[int]]            # writer layer -> the set of each output channel
    normalizations: List[Normalization] = field(default_factory=list)
    sizes: List[SizeUse] = field(default_factory=list)
    example_inputs: Tuple[torch.Tensor, ...] = ()
    group_of: Dict[int, Group] = field(default_factory=dict)

    def __post_init__(self):
        self.group_of = {s: g for g in self.groups for s in g.sets}
        self._by_name: Dict[str, Group] = {}
        for group in self.groups:
            self._by_name.setdefault(group.name, group)
        self._uses_by_layer: Optional[Dict[str, List[Tuple[int, TensorUse]]]] = None
        self._set_ids: Dict[int, Tuple[List[int], torch.Tensor]] = {}
        self.set_count: Optional[int] = None  # more than the largest set id

    def group(self, name: str) -> Group:
        return self._by_name[name]

    def uses_of(self, layers: Sequence[str]) -> List[TensorUse]:
        """The recorded uses of ``layers``' tensors, in the order of ``uses``."""
        if self._uses_by_layer is None:
            self._uses_by_layer = {}
            for position, use in enumerate(self.uses):
                self._uses_by_layer.setdefault(use.layer, []).append((position, use))
        found = [entry for layer in set(layers) for entry in self._uses_by_layer.get(layer, ())]
        return [use for _, use in sorted(found, key=lambda entry: entry[0])]

    # Positions by channel set, a whole dimension at once: masking and compaction look up every
    # recorded dimension, and a Python membership test per index cost more than the surgery.

    def set_mask(self, sets: Iterable[int]) -> torch.Tensor:
        """A boolean per channel set id, True for ``sets`` (to pass to ``positions``)."""
        if self.set_count is None:
            records = [r.sets for r in self.uses + self.normalizations + self.sizes]
            self.set_count = 1 + max((max(r) for r in records if r), default=-1)
        mask = torch.zeros(self.set_count, dtype=torch.bool)
        chosen = [s for s in sets if s < self.set_count]  # a set no record holds has no position
        mask[torch.tensor(chosen, dtype=torch.long)] = True
        return mask

    def positions(self, record, mask: torch.Tensor) -> torch.Tensor:
        """Positions along ``record``'s dimension (a TensorUse, Normalization or SizeUse) whose
        channel set ``mask`` marks, ascending."""
        cached = self._set_ids.get(id(record))
        if cached is None or cached[0] is not record.sets:  # made once per list of sets
            self.know_sets(record, torch.tensor(record.sets, dtype=torch.long))
            cached = self._set_ids[id(record)]
        return torch.nonzero(mask[cached[1]]).flatten()

    def know_sets(self, record, sets: torch.Tensor) -> None:
        """``record.sets`` as a tensor, from whoever has it already (the walk that resolved them),
        so that ``positions`` need not convert the list."""
        self._set_ids[id(record)] = (record.sets, sets)

    def group_at(self, layer: str, channel: int) -> Group:
        return self.group_of[self.output_sets[layer][channel]]

    @property
    def set_of(self) -> Dict[Tuple[str, int], int]:
        """(writer layer, output channel) -> its set."""
        return {(layer, channel): s for layer, sets in self.output_sets.items()
                for channel, s in enumerate(sets)}

    def prunable(self, residual: bool = False) -> List[Group]:
        """Groups whose channels may be removed: never the input's or the output's; residual
        streams only when asked."""
        return [g for g in self.groups if not g.fixed and (residual or not g.residual)]

    def sets_of(self, use: TensorUse) -> List[int]:
        """The channel set of each index along ``use``'s dimension."""
        return use.sets


def refusal(model: nn.Module, node: torch.fx.Node, what: str, why: str = "") -> UnsupportedOperation:
    where = f"module {node.target}" if node.op == "call_module" else f"node {node.name}"
    return UnsupportedOperation(
        f"{type(model).__name__}: {what} at {where} is not in the dependency graph's table of "
        f"operations{': ' + why if why else ''}; structured pruning cannot tell which channels it "
        "couples, so it refuses the model rather than guess")


def ids_along(label: Label, dim: int, size: int) -> torch.Tensor:
    """The label's ids along ``dim`` as a (size, rest) matrix: row p holds every id found at
    position p (one column when the ids depend on that dimension alone)."""
    ids = label.ids
    if ids.shape[dim] == 1:
        ids = ids.expand(*[size if d == dim % ids.dim() else s for d, s in enumerate(ids.shape)])
    return ids.movedim(dim, 0).reshape(size, -1)
