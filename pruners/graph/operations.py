"""The explicit table of operations: how channels flow through each one, and what it records.

One handler per operation (a module class, a function, a tensor method), registered with
``@module_handler``, ``@function_handler`` or ``@method_handler``. A handler receives the node's
``Call`` (the labels of its arguments, their concrete values from the run, the module) and
returns the label of its result, after recording which of the module's tensors are indexed by
which channel ids. How a module *shrinks* follows from those records (pruners/compact.py sets
its attributes from the new tensor shapes). Adding an operation is one handler plus its test.

Anything not in the table that receives a labelled tensor is refused, naming the operation and
where it is: an unknown operation is never assumed to keep channels as they are.
"""
import builtins
import operator
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import maxvit, swin_transformer

from models.layers import ZeroPadShortcut
from pruners.graph.core import (Attr, DependencyGraph, Group, Label, Normalization, SizeUse,
                                TensorUse, UnionFind, ids_along, refusal)
from pruners.graph.shapes import shape_only_output
from utils.transformers import attention_widths

try:  # torchvision's stochastic depth (EfficientNet, ConvNeXt, Swin): drops whole samples
    from torchvision.ops import stochastic_depth as _stochastic_depth
except ImportError:  # pragma: no cover - torchvision is a requirement
    _stochastic_depth = None

_MODULE_HANDLERS: List[Tuple[type, Callable]] = []
_FUNCTION_HANDLERS: Dict[Any, Callable] = {}
_METHOD_HANDLERS: Dict[str, Callable] = {}


def module_handler(*classes):
    def register(handler):
        _MODULE_HANDLERS.extend((cls, handler) for cls in classes)
        return handler
    return register


def function_handler(*functions):
    def register(handler):
        _FUNCTION_HANDLERS.update((f, handler) for f in functions if f is not None)
        return handler
    return register


def method_handler(*names):
    def register(handler):
        _METHOD_HANDLERS.update((name, handler) for name in names)
        return handler
    return register


@dataclass
class Call:
    """One node of the run: ``labels`` mirror ``args`` (a Label, an Attr, a list of them, or
    None for values without channels); ``values`` are the concrete arguments."""
    walk: "Walk"
    node: torch.fx.Node
    args: tuple
    kwargs: dict
    labels: tuple
    kwarg_labels: dict
    value: Any
    module: Optional[nn.Module] = None

    @property
    def name(self) -> str:
        return str(self.node.target) if self.node.op == "call_module" else self.node.name

    def refuse(self, what: str, why: str = ""):
        raise refusal(self.walk.model, self.node, what, why)

    def arg(self, position: int, keyword: str, default=None):
        if len(self.args) > position:
            return self.args[position]
        return self.kwargs.get(keyword, default)

    def label(self, position: int = 0, keyword: str = "input"):
        if len(self.labels) > position:
            return self.labels[position]
        return self.kwarg_labels.get(keyword)

    def tensor_labels(self) -> List[Label]:
        found = []
        for label in list(self.labels) + list(self.kwarg_labels.values()):
            found.extend(_flat_labels(label))
        return found


def _flat_labels(label) -> List[Label]:
    if isinstance(label, Label):
        return [label]
    if isinstance(label, (list, tuple)):
        return [inner for item in label for inner in _flat_labels(item)]
    return []


def _has_attr(label) -> bool:
    if isinstance(label, Attr):
        return True
    if isinstance(label, (list, tuple)):
        return any(_has_attr(item) for item in label)
    return False


class Walk(torch.fx.Interpreter):
    """Runs the traced model once and labels every tensor (see pruners/graph/core.py)."""

    def __init__(self, graph: torch.fx.Graph, model: nn.Module, attention: str = "heads"):
        # The model itself runs the graph's nodes (its targets name the model's modules): a
        # GraphModule would only generate and compile code the walk never calls.
        super().__init__(model, graph=graph)
        self.extra_traceback = False  # a refusal stays the one line it is
        self.model = model
        self.modules = dict(model.named_modules())
        self.uf = UnionFind()
        self.labels: Dict[torch.fx.Node, Any] = {}
        self.uses: List[TensorUse] = []
        self.fixed: Dict[int, str] = {}           # id -> why its channel cannot be removed
        self.added: List[torch.Tensor] = []       # ids merged by a residual add
        self.outputs: Dict[str, torch.Tensor] = {}  # writer layer -> the ids of its output channels
        self.units: List[torch.Tensor] = []       # ids that must leave together
        self.attention = attention                # core.ATTENTION_UNITS: what attention prunes
        # (suffix, (blocks, ids per block)): sets a layer writes that form a group of their own,
        # named after the layer's group plus "[suffix]", whose blocks lose as many units each
        self.divisions: List[Tuple[str, torch.Tensor]] = []
        self.normalizations: List[Normalization] = []
        self.recorded: Dict[Tuple[str, int], torch.Tensor] = {}
        self.sizes: List[SizeUse] = []

    # -- the run -------------------------------------------------------------------------------

    def call_module(self, target, args, kwargs):
        # Convolutions and linear layers are not computed: no label depends on their values
        # (see shapes.py), and they are nearly all of the pass's arithmetic.
        value = shape_only_output(self.modules[target], args, kwargs)
        return value if value is not None else super().call_module(target, args, kwargs)

    def run_node(self, node: torch.fx.Node):
        # torch.fx's run_node, with the arguments fetched once for the run and the label, and
        # without its per-node debug logging and traceback context (a refusal names the node).
        args, kwargs = self.fetch_args_kwargs_from_env(node)
        value = getattr(self, node.op)(node.target, args, kwargs)
        self.labels[node] = self._label(node, value, args, kwargs)
        return value

    def _label_of(self, arg):
        if isinstance(arg, torch.fx.Node):
            return self.labels.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._label_of(a) for a in arg) if not hasattr(arg, "_fields") else \
                tuple(self._label_of(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self._label_of(v) for k, v in arg.items()}
        return None

    def _label(self, node: torch.fx.Node, value, args: tuple, kwargs: dict):
        if node.op == "placeholder":
            if not isinstance(value, torch.Tensor):
                return None
            label = self.fresh(value, min(1, value.dim() - 1))
            self.fix(label.ids, "the model's inputs")
            return label
        if node.op == "get_attr":
            return Attr(str(node.target)) if isinstance(value, torch.Tensor) else None
        if node.op == "output":
            for label in _flat_labels(self._label_of(node.args)):
                self.fix(label.ids, "the model's outputs")
            return None
        call = Call(self, node, args, kwargs, tuple(self._label_of(a) for a in node.args),
                    {k: self._label_of(v) for k, v in node.kwargs.items()}, value)
        if not call.tensor_labels():
            if _has_attr(call.labels) or _has_attr(tuple(call.kwarg_labels.values())):
                return self._from_parameters(call)
            return None  # shapes, constants, tensors that carry no channel of the model
        if node.op == "call_module":
            call.module = self.modules[node.target]
            for cls, handler in _MODULE_HANDLERS:
                if isinstance(call.module, cls):
                    return handler(call)
            call.refuse(type(call.module).__name__)
        if node.op == "call_function":
            handler = _FUNCTION_HANDLERS.get(node.target)
            if handler is None and isinstance(node.target, type) and issubclass(node.target, tuple):
                handler = _output_container
            if handler is None:
                call.refuse(f"function {getattr(node.target, '__name__', node.target)}")
            return handler(call)
        if node.op == "call_method":
            handler = _METHOD_HANDLERS.get(node.target)
            if handler is None:
                call.refuse(f"method {node.target}")
            return handler(call)
        call.refuse(f"operation {node.op}")

    def _from_parameters(self, call: Call):
        """A value computed from parameters alone (an expand of a class token, a bias table):
        it carries no channel ids yet. The parameters it reads must not meet a labelled tensor
        unrecorded: that is checked where they meet (``elementwise``, ``_cat``). An expand of
        one parameter (a class token broadcast over the batch) is still that parameter, aligned
        from the right as broadcasting aligns it, so where it meets labelled tensors its own
        dimensions are recorded; anything else computed from parameters is a new tensor."""
        node = call.node
        if node.op == "call_method" and node.target == "expand" and isinstance(call.labels[0], Attr):
            return call.labels[0]
        return None

    def parameter(self, attr: Attr) -> torch.Tensor:
        """The parameter or buffer an ``Attr`` names, in its own shape."""
        return self.fetch_attr(attr.key)

    # -- what handlers call --------------------------------------------------------------------

    def fresh(self, value: torch.Tensor, dim: int) -> Label:
        """New ids along ``dim`` of ``value``."""
        shape = [1] * value.dim()
        shape[dim] = value.shape[dim]
        return Label(self.uf.new(value.shape[dim]).reshape(shape))

    def fix(self, ids: torch.Tensor, reason: str) -> None:
        for i in torch.unique(ids).tolist():
            self.fixed.setdefault(i, reason)

    def read(self, label: Label, dim: int, size: int) -> torch.Tensor:
        """The id at each position of ``dim`` (size ``size``), merging whatever ids a position
        holds across the other dimensions: a layer that reads dimension ``dim`` treats all of
        them as one channel."""
        rows = ids_along(label, dim, size)
        if rows.shape[1] > 1:
            self.uf.union(rows[:, :1].expand_as(rows), rows)
        return rows[:, 0].clone()

    def record(self, layer: str, tensor: str, dim: int, ids: torch.Tensor, writes: bool) -> None:
        self.record_key(f"{layer}.{tensor}" if layer else tensor, dim, ids, writes)

    def record_key(self, key: str, dim: int, ids: torch.Tensor, writes: bool) -> None:
        """Dimension ``dim`` of ``key`` is indexed by ``ids``. A tensor met twice (a module
        called twice, a parameter read in two places) is indexed by both: their ids merge."""
        earlier = self.recorded.get((key, dim))
        if earlier is not None:
            self.merge(earlier, ids, residual=False)
            return
        self.recorded[(key, dim)] = ids = ids.reshape(-1).clone()
        self.uses.append(TensorUse(key, dim, ids, writes, key.rpartition(".")[0]))

    def write(self, layer: str, ids: torch.Tensor) -> None:
        """``layer`` (a conv or linear layer) computes the channels ``ids``, in order."""
        self.outputs[layer] = ids.clone()

    def merge(self, a: torch.Tensor, b: torch.Tensor, residual: bool) -> None:
        self.uf.union(a, b)
        if residual:
            self.added.append(torch.unique(torch.cat([a.reshape(-1), b.reshape(-1)])))

    def along(self, ids: torch.Tensor, value: torch.Tensor, dim: int) -> Label:
        """A label holding ``ids`` along ``dim`` of ``value``."""
        shape = [1] * value.dim()
        shape[dim] = len(ids)
        return Label(ids.reshape(shape))

    def compress(self, ids: torch.Tensor) -> Label:
        """A label from ids laid out like the tensor: roots, and size 1 along every dimension
        they do not vary on. Dimensions the raw ids already do not vary on (broadcasts) are
        dropped before the roots are looked up, so a label laid out like a whole feature map
        costs a lookup per channel, not per entry."""
        ids = _without_constant_dims(ids)
        if ids.numel():
            ids = _without_constant_dims(self.uf.roots(ids))
        return Label(ids.contiguous())

    # -- groups ----------------------------------------------------------------------------------

    def run(self, *inputs) -> DependencyGraph:
        super().run(*inputs)
        return self.groups()

    def groups(self) -> DependencyGraph:
        roots = self.uf.roots
        fixed: Dict[int, str] = {}  # a set's reason: that of its first id fixed
        if self.fixed:
            fixed_roots = roots(torch.tensor(list(self.fixed), dtype=torch.long)).tolist()
            for root, reason in zip(fixed_roots, self.fixed.values()):
                fixed.setdefault(root, reason)
        added = set(roots(torch.cat(self.added)).tolist()) if self.added else set()
        order = {name: position for position, name in enumerate(self.modules)}  # module order
        layers = sorted(self.outputs, key=order.get)
        if layers:
            written = roots(torch.cat([self.outputs[layer] for layer in layers]))
            flat = written.tolist()
            output_sets, start = {}, 0
            for layer in layers:
                output_sets[layer] = flat[start:start + len(self.outputs[layer])]
                start += len(self.outputs[layer])
            signatures = _sets_by_writers(written, [len(self.outputs[layer]) for layer in layers])
        else:
            output_sets, signatures = {}, []
        unit_of = self._units()
        division_of = self._divisions()
        groups = []
        for writer_positions, sets in signatures:
            signature = tuple(layers[k] for k in writer_positions)
            first = signature[0]
            start = output_sets[first].index(sets[0])
            name = first if start == 0 else f"{first}[{start}:]"
            for suffix, part in _divided(sets, division_of):
                reasons = [fixed[s] for s in part if s in fixed] if fixed else []
                units, why = _group_units(part, unit_of)
                if why:
                    reasons.append(why)
                groups.append(Group(name=name + suffix, sets=part, writers=signature,
                                    residual=not added.isdisjoint(part), fixed=bool(reasons),
                                    reason=reasons[0] if reasons else "", units=units,
                                    blocks=_blocks(part, units, division_of) if suffix else []))
        groups = _merge_groups_sharing_units(groups, unit_of, order)
        resolved = self._resolve_sets()
        graph = DependencyGraph(getattr(self.model, "registry_name", type(self.model).__name__),
                                self.uses, groups, output_sets, self.normalizations, self.sizes)
        for record, sets in resolved:
            graph.know_sets(record, sets)
        graph.set_count = self.uf.count  # every set is a root, hence a smaller id
        return graph

    def _resolve_sets(self) -> List[Tuple[Any, torch.Tensor]]:
        """Every record's ``sets``: its ids' roots, now that every merge is done (one lookup for
        all records). Returns each record with its sets as a tensor."""
        records = self.uses + self.normalizations + self.sizes
        ids = [r.ids.reshape(-1) if isinstance(r, TensorUse) else torch.tensor(r.ids, dtype=torch.long)
               for r in records]
        if not records:
            return []
        sets = self.uf.roots(torch.cat(ids))
        as_list = sets.tolist()
        resolved, start = [], 0
        for record, record_ids in zip(records, ids):
            record.sets = as_list[start:start + len(record_ids)]
            resolved.append((record, sets[start:start + len(record_ids)]))
            start += len(record_ids)
        return resolved

    def _divisions(self) -> Dict[int, Tuple[str, int]]:
        """Set -> ("[suffix]", block) for every set a division holds."""
        division_of: Dict[int, Tuple[str, int]] = {}
        for suffix, ids in self.divisions:
            for block, sets in enumerate(self.uf.roots(ids).tolist()):
                for s in sets:
                    division_of[s] = (f"[{suffix}]", block)
        return division_of

    def _units(self) -> Dict[int, int]:
        """Set -> the smallest set it must leave with, for every set coupled to another (a set
        absent from the result leaves alone)."""
        if not self.units:
            return {}
        sets = torch.nonzero(self.uf.parent == torch.arange(self.uf.count)).flatten()
        coupling = UnionFind()
        coupling.new(self.uf.count)
        members = torch.cat([unit.reshape(-1) for unit in self.units])
        firsts = torch.cat([unit.reshape(-1)[:1].expand(unit.numel()) for unit in self.units])
        coupling.union(self.uf.roots(firsts), self.uf.roots(members))
        unit = coupling.roots(sets)
        coupled = torch.bincount(unit, minlength=self.uf.count)[unit] > 1
        return dict(zip(sets[coupled].tolist(), unit[coupled].tolist()))


def _divided(sets: List[int], division_of: Dict[int, Tuple[str, int]]
             ) -> List[Tuple[str, List[int]]]:
    """``sets`` (of one writer signature) as (suffix, sets) per group: those no division holds
    under the signature's own name (suffix ""), each division's under "[suffix]"."""
    if not division_of or division_of.keys().isdisjoint(sets):
        return [("", sets)]
    parts: Dict[str, List[int]] = {}
    for s in sets:
        parts.setdefault(division_of[s][0] if s in division_of else "", []).append(s)
    return list(parts.items())


def _blocks(sets: List[int], units: List[List[int]], division_of: Dict[int, Tuple[str, int]]
            ) -> List[List[int]]:
    """The indices of ``units`` in each block of a divided group (a unit lies in one block)."""
    blocks: Dict[int, List[int]] = {}
    for index, unit in enumerate(units):
        block = {division_of[sets[p]][1] for p in unit}
        if len(block) != 1:
            raise AssertionError(f"a unit spans blocks {sorted(block)} of a divided group")
        blocks.setdefault(block.pop(), []).append(index)
    return [blocks[b] for b in sorted(blocks)]


def _sets_by_writers(written: torch.Tensor, sizes: List[int]) -> List[Tuple[List[int], List[int]]]:
    """The channel sets grouped by the layers that write them. ``written``: the set of every
    output channel of every writer, writer after writer in module order (``sizes`` channels
    each). Returns (writer positions, sets) per group: groups in the order their first set is
    first written, sets in the order they are first written, as a Python pass over every
    channel would give them. Done on tensors, since a model has tens of thousands of channels:
    channels are bucketed by a sum of random 40-bit numbers, one per writer, and every bucket
    is then checked to hold one writer signature exactly (a collision falls back to the pass)."""
    count = len(written)
    writer = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    sets, where = torch.unique(written, return_inverse=True)
    first = torch.full((len(sets),), count, dtype=torch.long).scatter_reduce_(
        0, where, torch.arange(count), reduce="amin")
    pairs = torch.unique(where * len(sizes) + writer)  # (set, writer), sorted by set then writer
    pair_set, pair_writer = pairs // len(sizes), pairs % len(sizes)
    weights = torch.randint(0, 2 ** 40, (len(sizes),), generator=torch.Generator().manual_seed(0))
    signature = torch.zeros(len(sets), dtype=torch.long).index_add_(0, pair_set, weights[pair_writer])
    _, bucket = torch.unique(signature, return_inverse=True)
    buckets = int(bucket.max()) + 1
    writers_per_set = torch.bincount(pair_set, minlength=len(sets))
    in_bucket = torch.unique(bucket[pair_set] * len(sizes) + pair_writer) // len(sizes)
    exact = (torch.bincount(in_bucket, minlength=buckets)[bucket] == writers_per_set).all()
    if not bool(exact):
        return _sets_by_writers_in_python(written.tolist(), sizes)
    # Buckets in the order of their first set, sets within a bucket in first-written order.
    bucket_first = torch.full((buckets,), count, dtype=torch.long).scatter_reduce_(
        0, bucket, first, reduce="amin")
    rank = torch.empty(buckets, dtype=torch.long)
    rank[torch.argsort(bucket_first)] = torch.arange(buckets)
    by_order = torch.argsort(rank[bucket] * (count + 1) + first)
    per_bucket = torch.bincount(rank[bucket], minlength=buckets).tolist()
    ordered_sets = sets[by_order].tolist()
    starts = (torch.cumsum(writers_per_set, 0) - writers_per_set).tolist()
    counts, writer_list = writers_per_set.tolist(), pair_writer.tolist()
    result, start = [], 0
    for size in per_bucket:
        one = int(by_order[start])  # the first set of the bucket, by its index among ``sets``
        result.append((writer_list[starts[one]:starts[one] + counts[one]],
                       ordered_sets[start:start + size]))
        start += size
    return result


def _sets_by_writers_in_python(written: List[int], sizes: List[int]
                               ) -> List[Tuple[List[int], List[int]]]:
    """``_sets_by_writers`` one channel at a time."""
    writers: Dict[int, Set[int]] = {}
    start = 0
    for position, size in enumerate(sizes):
        for s in written[start:start + size]:
            writers.setdefault(s, set()).add(position)
        start += size
    by_signature: Dict[Tuple[int, ...], List[int]] = {}
    for s in dict.fromkeys(written):
        by_signature.setdefault(tuple(sorted(writers[s])), []).append(s)
    return [(list(signature), sets) for signature, sets in by_signature.items()]


def _without_constant_dims(ids: torch.Tensor) -> torch.Tensor:
    """``ids`` narrowed to size 1 along every dimension whose entries are all equal."""
    for dim in range(ids.dim()):
        if ids.shape[dim] > 1:
            first = ids.narrow(dim, 0, 1)
            if bool((ids == first).all()):
                ids = first
    return ids


def _group_units(sets: List[int], unit_of: Dict[int, int]) -> Tuple[List[List[int]], str]:
    """Positions of ``sets`` grouped into the units that leave together; a reason to keep the
    group whole when its units differ in size (a criterion compares units of one size)."""
    if unit_of.keys().isdisjoint(sets):
        return [[position] for position in range(len(sets))], ""
    by_unit: Dict[int, List[int]] = {}
    for position, s in enumerate(sets):
        by_unit.setdefault(unit_of.get(s, s), []).append(position)
    units = list(by_unit.values())
    if len({len(u) for u in units}) > 1:
        return units, "its channels are coupled in units of different sizes"
    return units, ""


def _merge_groups_sharing_units(groups: List[Group], unit_of: Dict[int, int],
                                order: Dict[str, int]) -> List[Group]:
    """A unit that spans two groups leaves from both at once, so they are one group: chunk(2)
    of a conv's output whose halves then flow to different layers (each keeps as many
    channels), a GroupNorm group over channels of a concatenation. The merged group keeps the
    first one's name; its units are the coupled channels."""
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: Dict[int, int] = {}
    for index, group in enumerate(groups):
        # A set leaves alone unless coupled, and belongs to one group: only coupled sets merge.
        for s in unit_of.keys() & group.sets:
            other = owner.setdefault(unit_of[s], index)
            if root(other) != root(index):
                parent[max(root(other), root(index))] = min(root(other), root(index))
    members: Dict[int, List[Group]] = {}
    for index, group in enumerate(groups):
        members.setdefault(root(index), []).append(group)
    merged = []
    for parts in members.values():
        if len(parts) == 1:
            merged.append(parts[0])
            continue
        sets = [s for g in parts for s in g.sets]
        writers = tuple(sorted({w for g in parts for w in g.writers}, key=order.get))
        reasons = [g.reason for g in parts if g.fixed]
        units, why = _group_units(sets, unit_of)
        if why:
            reasons.append(why)
        merged.append(Group(name=parts[0].name, sets=sets, writers=writers,
                            residual=any(g.residual for g in parts), fixed=bool(reasons),
                            reason=reasons[0] if reasons else "", units=units))
    return merged


# ==== handlers ===================================================================================

def _expand(label: Label, value: torch.Tensor) -> torch.Tensor:
    """The label's ids laid out like ``value`` (materialised: data-movement ops may need a
    contiguous tensor)."""
    return label.ids.expand(value.shape).contiguous()


def _substitute(call: Call, arg, label):
    """``arg`` with every labelled tensor replaced by its ids laid out like it."""
    if isinstance(label, Label) and isinstance(arg, torch.Tensor):
        return _expand(label, arg)
    if isinstance(arg, (list, tuple)) and isinstance(label, (list, tuple)):
        return type(arg)(_substitute(call, a, l) for a, l in zip(arg, label))
    if isinstance(arg, torch.Tensor):
        call.refuse(f"{_what(call)} mixing channel-labelled tensors with other tensors")
    return arg


def _what(call: Call) -> str:
    if call.node.op == "call_method":
        return f"method {call.node.target}"
    return f"function {getattr(call.node.target, '__name__', call.node.target)}"


def _from_ids(call: Call, result):
    if isinstance(result, torch.Tensor):
        return call.walk.compress(result)
    if isinstance(result, (list, tuple)):
        return tuple(_from_ids(call, r) for r in result)
    return None


# -- values without channels, containers ----------------------------------------------------------

def _nothing(call: Call):
    return None


@method_handler("size", "dim", "numel", "nelement", "element_size", "get_device", "is_contiguous")
def _shape_query(call: Call):
    return None


@function_handler(builtins.getattr)
def _getattr(call: Call):
    if call.arg(1, "name") in ("shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"):
        return None
    call.refuse(f"getattr(..., {call.arg(1, 'name')!r})")


def _output_container(call: Call):
    """A namedtuple of outputs (GoogLeNet's and Inception's auxiliary logits in training): every
    tensor in it is an output of the model."""
    for label in call.tensor_labels():
        call.walk.fix(label.ids, "the model's outputs")
    return None


# -- elementwise ----------------------------------------------------------------------------------

def _passthrough(call: Call):
    return call.tensor_labels()[0]


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus, nn.Dropout,
                nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
module_handler(*_ACTIVATIONS)(_passthrough)
function_handler(F.relu, F.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu, F.sigmoid, F.tanh,
                 F.hardswish, F.hardsigmoid, F.hardtanh, F.mish, F.softplus, F.elu, F.dropout,
                 F.dropout1d, F.dropout2d, F.dropout3d, torch.relu, torch.sigmoid, torch.tanh,
                 torch.exp, torch.neg, operator.neg, torch.abs, _stochastic_depth)(_passthrough)
method_handler("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone",
               "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as", "neg",
               "exp", "abs")(_passthrough)


def _operands(call: Call):
    """(label, value) of the two operands of a binary operation."""
    first = (call.label(0, "input"), call.arg(0, "input"))
    second = (call.label(1, "other"), call.arg(1, "other"))
    return [first, second]


def _elementwise(call: Call, residual: bool, divides: bool = False):
    """Binary elementwise operations with broadcasting: the channel ids of labelled operands meet
    entry by entry and are merged; a parameter operand is indexed by the channels it meets (a
    layer scale, a learned bias); any other tensor operand must not vary along a channel
    dimension, since nothing would shrink it."""
    walk, out = call.walk, call.value
    operands = _operands(call)
    labelled = [label for label, _ in operands if isinstance(label, Label)]
    if len(labelled) == 2:
        a, b = torch.broadcast_tensors(labelled[0].ids, labelled[1].ids)
        walk.merge(a, b, residual)
        ids = a
    else:
        ids = labelled[0].ids
    result = walk.compress(ids.reshape([1] * (out.dim() - ids.dim()) + list(ids.shape)))
    for position, (label, value) in enumerate(operands):
        if isinstance(label, Label) or not isinstance(value, torch.Tensor):
            continue
        if isinstance(label, Attr):  # the parameter itself, not an expanded view of it
            value = walk.parameter(label)
        offset = out.dim() - value.dim()
        for dim in range(value.dim()):
            if value.shape[dim] == 1 or result.ids.shape[offset + dim] == 1:
                continue  # broadcast over channels, or indexed along a dimension without them
            if not isinstance(label, Attr):
                call.refuse(f"{_what(call)} with a computed tensor indexed by channels",
                            "only parameters and buffers read in forward() are followed")
            ids = walk.read(result, offset + dim, value.shape[dim])
            # A divisor cannot be zeroed; it is indexed, not written.
            walk.record_key(label.key, dim, ids, writes=not (divides and position == 1))
    return result


@function_handler(operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub)
def _add(call: Call):
    return _elementwise(call, residual=True)


method_handler("add", "add_", "sub", "sub_")(_add)


@function_handler(operator.mul, operator.imul, torch.mul)
def _mul(call: Call):
    return _elementwise(call, residual=False)


method_handler("mul", "mul_")(_mul)


@function_handler(operator.truediv, operator.itruediv, torch.div)
def _div(call: Call):
    return _elementwise(call, residual=False, divides=True)


method_handler("div", "div_")(_div)


# -- layers -----------------------------------------------------------------------------------------

@module_handler(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(call: Call):
    """Output channels get new ids, input channels are the weight's columns. A depthwise
    convolution (one input and one output channel per group) keeps its input's ids: input and
    output channel c are one channel. A grouped convolution with as many outputs as inputs per
    group does the same, and its groups leave whole: removing whole groups keeps every kept
    group's width, so the layer keeps its kernel shape, its weight shrinks along one dimension
    and ``groups`` follows; taking equal numbers from every group would instead cut each
    group's columns differently. Other groupings are refused."""
    walk, conv, name, value = call.walk, call.module, call.name, call.value
    inputs = walk.read(call.tensor_labels()[0], 1, conv.in_channels)
    per_group_in = conv.in_channels // conv.groups
    per_group_out = conv.out_channels // conv.groups
    if conv.groups == 1:
        walk.record(name, "weight", 1, inputs, writes=False)
        out = walk.fresh(value, 1).ids.flatten()
    elif per_group_in == per_group_out:
        out = inputs
        if per_group_in > 1:
            walk.units.extend(inputs.reshape(conv.groups, per_group_in))
    else:
        call.refuse(f"grouped convolution (groups={conv.groups}, {per_group_in} input and "
                    f"{per_group_out} output channels per group)",
                    "only groups with as many outputs as inputs (depthwise, ResNeXt, RegNet)")
    walk.record(name, "weight", 0, out, writes=True)
    if conv.bias is not None:
        walk.record(name, "bias", 0, out, writes=True)
    walk.write(name, out)
    return walk.along(out, value, 1)


@module_handler(nn.Linear)
def _linear(call: Call):
    """Reads and writes the last dimension, whatever the tensor's rank ((N, C), (N, T, C))."""
    walk, linear, name, value = call.walk, call.module, call.name, call.value
    inputs = walk.read(call.tensor_labels()[0], -1, linear.in_features)
    walk.record(name, "weight", 1, inputs, writes=False)
    out = walk.fresh(value, value.dim() - 1).ids.flatten()
    walk.record(name, "weight", 0, out, writes=True)
    if linear.bias is not None:
        walk.record(name, "bias", 0, out, writes=True)
    walk.write(name, out)
    return walk.along(out, value, value.dim() - 1)


@module_handler(nn.modules.batchnorm._BatchNorm)
def _batchnorm(call: Call):
    """Per-channel statistics and affine map along dimension 1: every tensor follows the
    channels; the running statistics describe a channel, they do not compute it."""
    walk, bn, name = call.walk, call.module, call.name
    label = call.tensor_labels()[0]
    ids = walk.read(label, 1, bn.num_features)
    for tensor in ("weight", "bias", "running_mean", "running_var"):
        if getattr(bn, tensor, None) is not None:
            walk.record(name, tensor, 0, ids, writes=True)
    return walk.along(ids, call.value, 1)


@module_handler(nn.LayerNorm)
def _layernorm(call: Call):
    """Normalises one dimension: the last one for nn.LayerNorm; for a subclass, the dimension
    it is found to normalise (see ``_normalized_dim``). Its statistics span the channels, so the
    graph records it for the masked model's normalisation over kept channels."""
    walk, norm, name, value = call.walk, call.module, call.name, call.value
    if len(norm.normalized_shape) != 1:
        call.refuse(f"LayerNorm over {len(norm.normalized_shape)} dimensions",
                    "only LayerNorm over the channels")
    dim = _normalized_dim(call)
    label = call.tensor_labels()[0]
    ids = walk.read(label, dim, norm.normalized_shape[0])
    if norm.elementwise_affine:
        walk.record(name, "weight", 0, ids, writes=True)
        if norm.bias is not None:
            walk.record(name, "bias", 0, ids, writes=True)
    walk.normalizations.append(Normalization(name, dim % value.dim(), ids.tolist()))
    return walk.along(ids, value, dim % value.dim())


def _normalized_dim(call: Call) -> int:
    """nn.LayerNorm normalises the last dimension. A subclass may move it (torchvision's
    LayerNorm2d normalises dimension 1 of an image batch): its output on a random input is
    compared with layer_norm over each candidate dimension, and exactly one must match."""
    norm, x = call.module, call.args[0]
    if type(norm) is nn.LayerNorm:
        return x.dim() - 1
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x)
    with torch.no_grad():
        out = norm(probe)
        found = []
        for dim in sorted({x.dim() - 1, 1}):
            if probe.shape[dim] != norm.normalized_shape[0]:
                continue
            moved = F.layer_norm(probe.movedim(dim, -1), norm.normalized_shape, norm.weight,
                                 norm.bias, norm.eps).movedim(-1, dim)
            if torch.allclose(out, moved, atol=1e-5, rtol=1e-4):
                found.append(dim)
    if len(found) != 1:
        call.refuse(type(norm).__name__, "a LayerNorm subclass that normalises neither the "
                    "last dimension nor dimension 1 of its input")
    return found[0]


@module_handler(nn.GroupNorm)
def _groupnorm(call: Call):
    """Statistics per group of channels along dimension 1: whole groups leave, so a kept
    group's statistics are what they were, masked or removed; ``num_groups`` follows."""
    walk, norm, name = call.walk, call.module, call.name
    ids = walk.read(call.tensor_labels()[0], 1, norm.num_channels)
    per_group = norm.num_channels // norm.num_groups
    if per_group > 1:
        walk.units.extend(ids.reshape(norm.num_groups, per_group))
    if norm.affine:
        walk.record(name, "weight", 0, ids, writes=True)
        walk.record(name, "bias", 0, ids, writes=True)
    return walk.along(ids, call.value, 1)


# -- pooling and reductions -------------------------------------------------------------------------

def _pooling(call: Call, spatial_dims: int):
    label, value = call.tensor_labels()[0], call.value
    if any(size > 1 for size in label.ids.shape[-spatial_dims:]):
        call.refuse(type(call.module).__name__ if call.module is not None else _what(call),
                    "it pools over a dimension that holds channels")
    return Label(label.ids.reshape([1] * (value.dim() - label.ids.dim()) + list(label.ids.shape)))


@module_handler(nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
def _pool2d_module(call: Call):
    return _pooling(call, 2)


@module_handler(nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)
def _pool1d_module(call: Call):
    return _pooling(call, 1)


@function_handler(F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                  torch.max_pool2d, torch._C._nn.adaptive_avg_pool2d)
def _pool2d_function(call: Call):
    return _pooling(call, 2)


@function_handler(F.interpolate)
def _interpolate(call: Call):
    value = call.value
    return _pooling(call, value.dim() - 2)


@function_handler(torch.mean, torch.sum, torch.amax, torch.amin)
def _reduction(call: Call):
    """A reduction over dimensions without channels keeps them (global average pooling as
    x.mean([2, 3])); over channels it is refused (the mean of fewer channels is another mean)."""
    label = call.tensor_labels()[0]
    x = call.arg(0, "input")
    dims = call.arg(1, "dim")
    keepdim = bool(call.arg(2, "keepdim", False))
    if dims is None:
        call.refuse(_what(call), "it reduces over every dimension, channels included")
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [d % x.dim() for d in dims]
    if any(label.ids.shape[d] > 1 for d in dims):
        call.refuse(_what(call), "it reduces over a dimension that holds channels")
    return Label(label.ids.amax(dim=dims, keepdim=keepdim) if dims else label.ids)


method_handler("mean", "sum", "amax", "amin")(_reduction)


@function_handler(F.softmax, F.log_softmax, torch.softmax)
def _softmax(call: Call):
    label = call.tensor_labels()[0]
    dim = call.arg(1, "dim")
    if dim is None or label.ids.shape[dim] > 1:
        call.refuse(_what(call), "it normalises over a dimension that holds channels")
    return label


method_handler("softmax", "log_softmax")(_softmax)


# -- data movement: applied to the ids themselves ----------------------------------------------------

def _movement(call: Call):
    """View, reshape, permute, transpose, flatten, chunk, split, slicing, channel shuffle: the
    same operation is applied to the ids laid out like the tensor, so the result's label says
    where every channel went (a flatten repeats a channel's id over its H x W block; a shuffle
    permutes them). What the compact model's smaller tensor must still allow is constrained
    here too (``_positions_constraints``, ``_keep_rectangular``)."""
    _positions_constraints(call)
    result = _apply_to_ids(call)
    for label in _flat_labels(result):
        _keep_rectangular(call.walk, label)
    return result


def _apply_to_ids(call: Call):
    args = tuple(_substitute(call, a, l) for a, l in zip(call.args, call.labels + (None,) * len(call.args)))
    kwargs = {k: _substitute(call, v, call.kwarg_labels.get(k)) for k, v in call.kwargs.items()}
    if call.node.op == "call_method":
        self, *rest = args
        result = getattr(self, call.node.target)(*rest, **kwargs)
    else:
        result = call.node.target(*args, **kwargs)
    return _from_ids(call, result)


_SLICING_METHODS = {"split": (1, "split_size_or_sections", 2), "narrow": (0, "dim", 0),
                    "select": (0, "dim", 0), "unbind": (0, "dim", 0)}


def _positions_constraints(call: Call) -> None:
    """Operations that address channels by position must find them where the compact model
    has them. chunk(n) along channels splits at a size/n boundary that moves with the width, so
    position i of every chunk leaves together (each chunk keeps as many). Slicing, narrow, split
    and select take constant positions: the channels along that dimension are never removed."""
    walk, node = call.walk, call.node
    label = call.labels[0] if call.labels else None
    if not isinstance(label, Label):
        return
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    x = call.args[0]
    fixed_dims = []
    if name == "chunk":
        dim = call.arg(2, "dim", 0) % x.dim()
        chunks = call.arg(1, "chunks")
        if label.ids.shape[dim] > 1:
            size = x.shape[dim]
            ids = ids_along(label, dim, size)[:, 0]
            if size % chunks:
                fixed_dims.append(dim)
            else:
                walk.units.extend(ids.reshape(chunks, size // chunks).T)
    elif name in ("split", "narrow", "select", "unbind"):
        dim = call.arg(2 if name == "split" else 1, "dim", 0) if name != "unbind" else call.arg(1, "dim", 0)
        fixed_dims.append(dim % x.dim())
    elif name == "roll":  # a constant shift lands kept channels elsewhere once others are gone
        dims = call.arg(2, "dims")
        dims = [dims] if isinstance(dims, int) else list(dims or range(x.dim()))
        fixed_dims.extend(d % x.dim() for d in dims)
    elif name == "getitem":
        fixed_dims.extend(_indexed_dims(call.args[1], x.dim()))
    for dim in fixed_dims:
        if label.ids.shape[dim] > 1:
            walk.fix(label.ids, f"channels addressed by position ({name} at node {node.name})")


def _indexed_dims(index, rank: int) -> List[int]:
    """Dimensions an index expression selects from (ints and slices other than ':')."""
    index = index if isinstance(index, tuple) else (index,)
    dims, dim = [], 0
    for position, item in enumerate(index):
        if item is Ellipsis:
            dim = rank - sum(1 for i in index[position + 1:] if i is not None)
            continue
        if item is None:
            continue
        if isinstance(item, int) or (isinstance(item, slice) and item != slice(None)):
            dims.append(dim)
        dim += 1
    return dims


def _keep_rectangular(walk: "Walk", label: Label) -> None:
    """A tensor whose channels spread over two or more dimensions (a channel shuffle's
    (groups, channels per group) view) must stay a full block after removal: channels leave as
    whole slices along the largest of those dimensions, one position of it across all others
    (a shuffle's pairs), so every view computed from the width still lines up."""
    varying = label.varying()
    if len(varying) < 2:
        return
    free = max(varying, key=lambda d: label.ids.shape[d])
    size = label.ids.shape[free]
    rows = label.ids.movedim(free, 0).reshape(size, -1)
    walk.units.extend(rows)


method_handler("view", "reshape", "permute", "transpose", "flatten", "unflatten", "squeeze",
               "unsqueeze", "expand", "chunk", "split", "narrow", "movedim", "swapaxes", "t",
               "roll", "repeat", "select", "unbind")(_movement)
function_handler(torch.flatten, torch.permute, torch.transpose, torch.reshape, torch.squeeze,
                 torch.unsqueeze, torch.chunk, torch.split, torch.narrow, torch.movedim,
                 torch.swapaxes, torch.roll, torch.select, torch.unbind)(_movement)


@module_handler(nn.Flatten)
def _flatten_module(call: Call):
    flat = torch.flatten(_expand(call.tensor_labels()[0], call.args[0]), call.module.start_dim,
                         call.module.end_dim)
    return call.walk.compress(flat)


@function_handler(operator.getitem)
def _getitem(call: Call):
    container = call.labels[0]
    if isinstance(container, (list, tuple)):  # an element of chunk()'s or split()'s result
        return container[call.args[1]]
    if isinstance(call.args[1], torch.Tensor) or (isinstance(call.args[1], tuple) and any(
            isinstance(i, torch.Tensor) for i in call.args[1])):
        call.refuse("indexing with a tensor")
    return _movement(call)


@function_handler(torch.cat, torch.concat)
def _cat(call: Call):
    """Concatenation lays its operands' ids side by side; along channels, an operand without ids
    (zeros, a constant) brings channels of its own that no layer writes."""
    walk = call.walk
    tensors = call.arg(0, "tensors")
    labels = call.label(0, "tensors") or (None,) * len(tensors)
    dim = call.arg(1, "dim", 0) % call.value.dim()
    labelled = [l for l in labels if isinstance(l, Label)]
    rank = call.value.dim()
    if not any(_with_rank(l.ids, rank).shape[dim] > 1 for l in labelled):
        return _cat_along_positions(call, tensors, labels, dim)
    # The operands' ids are laid out only along the dimensions some operand's ids vary on (and
    # the one concatenated): a DenseNet block's H x W stays 1 x 1 instead of being materialised.
    varying = {d for l in labelled for d, size in enumerate(_with_rank(l.ids, rank).shape)
               if size > 1} | {dim}
    parts = []
    for tensor, label in zip(tensors, labels):
        shape = [size if d in varying else 1 for d, size in enumerate(tensor.shape)]
        if isinstance(label, Label):
            parts.append(_with_rank(label.ids, rank).expand(shape))
        elif not isinstance(label, Attr):
            parts.append(walk.fresh(tensor, dim).ids.expand(shape))
        else:
            call.refuse("torch.cat of a parameter along channels")
    return walk.compress(torch.cat(parts, dim))


def _with_rank(ids: torch.Tensor, rank: int) -> torch.Tensor:
    """``ids`` with leading dimensions of size 1 up to ``rank`` (as broadcasting would add)."""
    return ids.reshape([1] * (rank - ids.dim()) + list(ids.shape))


def _cat_along_positions(call: Call, tensors, labels, dim: int) -> Label:
    """Concatenation along a dimension without channels (tokens, the batch): channel c of every
    operand is channel c of the result, read as one by whatever reads the result, and the result
    stays rectangular only if every operand loses the same channels: their ids merge. A parameter
    operand (ViT's class token) is indexed by those channels and written, like a learned bias; a
    computed tensor without ids could not shrink, and is refused."""
    walk, value = call.walk, call.value
    labelled = [label for label in labels if isinstance(label, Label)]
    ids = labelled[0].ids
    for other in labelled[1:]:
        ids, others = torch.broadcast_tensors(ids, other.ids)
        walk.merge(ids, others, residual=False)
    result = walk.compress(ids)
    for tensor, label in zip(tensors, labels):
        if isinstance(label, Label):
            continue
        if not isinstance(label, Attr):
            call.refuse("torch.cat of a tensor without channel ids along a dimension that holds none")
        parameter = walk.parameter(label)
        offset = value.dim() - parameter.dim()
        for d in range(parameter.dim()):
            if offset + d == dim or result.ids.shape[offset + d] == 1:
                continue
            if parameter.shape[d] == 1:
                call.refuse("torch.cat of a parameter broadcast along channels")
            channel_ids = walk.read(result, offset + d, parameter.shape[d])
            walk.record_key(label.key, d, channel_ids, writes=True)
    return result


@function_handler(F.pad)
def _pad(call: Call):
    """Padding along a dimension with channels adds channels that no layer writes (new ids);
    along any other dimension it leaves the ids as they are."""
    walk, label, value = call.walk, call.tensor_labels()[0], call.value
    pad = list(call.arg(1, "pad"))
    if call.arg(2, "mode", "constant") != "constant":
        if any(label.ids.shape[-1 - i // 2] > 1 for i in range(0, len(pad), 2) if pad[i] or pad[i + 1]):
            call.refuse("F.pad (not constant) along channels")
    ids = label.ids
    for i in range(0, len(pad), 2):
        dim = ids.dim() - 1 - i // 2
        if ids.shape[dim] == 1 or not (pad[i] or pad[i + 1]):
            continue
        before = walk.uf.new(pad[i]).reshape([pad[i] if d == dim else 1 for d in range(ids.dim())])
        after = walk.uf.new(pad[i + 1]).reshape([pad[i + 1] if d == dim else 1 for d in range(ids.dim())])
        shape = list(ids.shape)
        ids = torch.cat([before.expand(*[s if d != dim else pad[i] for d, s in enumerate(shape)]), ids,
                         after.expand(*[s if d != dim else pad[i + 1] for d, s in enumerate(shape)])], dim)
    return walk.compress(ids)


# -- transformers ------------------------------------------------------------------------------------
#
# Attention modules are traced whole (utils/tracing.py) and handled here as one operation each.
# Every one computes q, k and v with one packed projection whose rows are [q | k | v], each
# heads x (its) head width in head order, and splits them the same way; its output projection
# reads v's channels. What leaves is chosen when the graph is built (``Walk.attention``):
# - "heads": a head's q, k and v rows, its columns of the output projection and its per-head
#   tensors (a relative position bias column, a logit scale) leave together, one unit of the
#   projection's group, which the criterion scores as one; the head count follows;
# - "head_width": query and key dimension i of a head leave together (they meet only in the
#   dot product q.k, so the pair's removal takes its whole term away), in a group "[qk]"; value
#   dimensions leave alone, with the output projection's columns that read them, in a group
#   "[v]"; each group has a block per head, and every head loses as many (the heads are one
#   tensor of one width). The heads and their per-head tensors stay.
# Either way the 1/sqrt(head width) scale stays what it was, so masked and compact compute the
# same; compaction gives the module its compact form (utils/transformers.py), whose forward
# reads the widths from its tensors and the scale's width as recorded.

def _attention_units(walk: "Walk", heads: int, qk_width: int, v_width: int):
    """New ids for the rows of a packed q, k, v projection, coupled as ``walk.attention`` says.
    Returns (the rows' ids in order, v's ids as the output projection reads them, one id per
    head for the per-head tensors: in "heads", the head's first q channel, which leaves with
    the whole head; in "head_width", an id no layer writes, which never leaves)."""
    q, k = walk.uf.new(heads * qk_width), walk.uf.new(heads * qk_width)
    v = walk.uf.new(heads * v_width)
    if walk.attention == "heads":
        for head in range(heads):
            walk.units.append(torch.cat([part.reshape(heads, -1)[head] for part in (q, k, v)]))
        return torch.cat([q, k, v]), v, q[::qk_width]
    walk.units.extend(torch.stack([q, k], dim=1))
    walk.divisions.append(("qk", torch.cat([q.reshape(heads, qk_width), k.reshape(heads, qk_width)], 1)))
    walk.divisions.append(("v", v.reshape(heads, v_width)))
    return torch.cat([q, k, v]), v, walk.uf.new(heads)


def _projection(walk: "Walk", layer: str, inputs: torch.Tensor, outputs: torch.Tensor,
                has_bias: bool, weight: str = "weight", bias: str = "bias") -> None:
    """A linear map inside an attention module (called functionally, so it has no node of its
    own): its columns read ``inputs``, its rows write ``outputs``."""
    walk.record(layer, weight, 1, inputs, writes=False)
    walk.record(layer, weight, 0, outputs, writes=True)
    if has_bias:
        walk.record(layer, bias, 0, outputs, writes=True)
    walk.write(layer, outputs)


def _tokens_in(call: Call, width: int) -> torch.Tensor:
    """The channel ids along the last dimension of an attention module's input (tokens)."""
    return call.walk.read(call.tensor_labels()[0], -1, width)


@module_handler(nn.MultiheadAttention)
def _multihead_attention(call: Call):
    """Self-attention only (one tensor as query, key and value, as ViT's encoder calls it):
    cross-attention would couple two streams the graph does not follow here. Packed in-projection
    (``in_proj_weight``), no bias_k / bias_v, no masks (a mask has no channels, but the compact
    form does not implement them). Returns (output, None): attention weights carry no channels."""
    walk, attention, name, node = call.walk, call.module, call.name, call.node
    operands = [node.args[i] if len(node.args) > i else node.kwargs.get(k)
                for i, k in enumerate(("query", "key", "value"))]
    if not (operands[0] is operands[1] is operands[2]):
        call.refuse("nn.MultiheadAttention with different query, key and value",
                    "only self-attention")
    if not attention._qkv_same_embed_dim or attention.bias_k is not None or attention.add_zero_attn:
        call.refuse("nn.MultiheadAttention with separate projections, bias_k/bias_v or add_zero_attn")
    if call.arg(3, "key_padding_mask") is not None or call.arg(5, "attn_mask") is not None \
            or call.arg(7, "is_causal", False):
        call.refuse("nn.MultiheadAttention with a mask")
    inputs = _tokens_in(call, attention.embed_dim)
    heads = attention.num_heads
    rows, values, per_head = _attention_units(walk, heads, *attention_widths(
        heads, attention.in_proj_weight.shape[0], attention.out_proj.weight.shape[1]))
    # no per-head tensor to count the heads by: compaction sets num_heads from these ids
    walk.sizes.append(SizeUse(name, "num_heads", per_head.tolist()))
    _projection(walk, name, inputs, rows, attention.in_proj_bias is not None,
                weight="in_proj_weight", bias="in_proj_bias")
    output = call.value[0]
    out = walk.uf.new(attention.out_proj.out_features)
    _projection(walk, f"{name}.out_proj", values, out, attention.out_proj.bias is not None)
    return walk.along(out, output, output.dim() - 1), None


@module_handler(swin_transformer.ShiftedWindowAttention)
def _shifted_window_attention(call: Call):
    """Swin's window attention, V1 and V2: padding, the cyclic shift, the window partition and
    their reversal move tokens, never channels. Per head: V1's relative position bias table has
    a column, V2's logit scale and the last layer of its bias MLP a row."""
    walk, attention, name, value = call.walk, call.module, call.name, call.value
    heads = attention.num_heads
    inputs = _tokens_in(call, attention.qkv.weight.shape[1])
    rows, values, per_head = _attention_units(walk, heads, *attention_widths(
        heads, attention.qkv.weight.shape[0], attention.proj.weight.shape[1]))
    _projection(walk, f"{name}.qkv", inputs, rows, attention.qkv.bias is not None)
    out = walk.uf.new(attention.proj.weight.shape[0])
    _projection(walk, f"{name}.proj", values, out, attention.proj.bias is not None)
    if isinstance(attention, swin_transformer.ShiftedWindowAttentionV2):
        walk.record(name, "logit_scale", 0, per_head, writes=True)
        bias_head = attention.cpb_mlp[-1]
        if not isinstance(bias_head, nn.Linear) or bias_head.out_features != heads:
            call.refuse(type(attention).__name__, "its bias MLP does not end in a per-head Linear")
        walk.record(f"{name}.cpb_mlp.{len(attention.cpb_mlp) - 1}", "weight", 0, per_head, writes=True)
        if bias_head.bias is not None:
            walk.record(f"{name}.cpb_mlp.{len(attention.cpb_mlp) - 1}", "bias", 0, per_head, writes=True)
    else:
        walk.record(name, "relative_position_bias_table", 1, per_head, writes=True)
    return walk.along(out, value, value.dim() - 1)


@module_handler(maxvit.RelativePositionalMultiHeadAttention)
def _relative_positional_attention(call: Call):
    """MaxViT's attention over the tokens of a window or grid partition: ``to_qkv`` (chunked
    into q, k, v), ``merge`` as the output projection, a relative position bias column per
    head."""
    walk, attention, name, value = call.walk, call.module, call.name, call.value
    inputs = _tokens_in(call, attention.to_qkv.in_features)
    heads = attention.n_heads
    rows, values, per_head = _attention_units(walk, heads, *attention_widths(
        heads, attention.to_qkv.weight.shape[0], attention.merge.weight.shape[1]))
    _projection(walk, f"{name}.to_qkv", inputs, rows, attention.to_qkv.bias is not None)
    out = walk.uf.new(attention.merge.out_features)
    _projection(walk, f"{name}.merge", values, out, attention.merge.bias is not None)
    walk.record(name, "relative_position_bias_table", 1, per_head, writes=True)
    return walk.along(out, value, value.dim() - 1)


@function_handler(swin_transformer._patch_merging_pad)
def _patch_merging_pad(call: Call):
    """Swin's patch merging: pad H and W to even sizes, then concatenate the 2 x 2 neighbours
    of every patch along the channels (the last dimension), so input channel c is found at c,
    C + c, 2C + c and 3C + c and leaves from all four (the next LayerNorm and Linear lose four
    entries per channel)."""
    walk, label, value = call.walk, call.tensor_labels()[0], call.value
    x = call.args[0]
    if any(size > 1 for size in label.ids.shape[:-1]):
        call.refuse("_patch_merging_pad of a tensor whose channels are not its last dimension")
    channels = walk.read(label, -1, x.shape[-1])
    return walk.along(channels.repeat(4), value, value.dim() - 1)


# -- the models' own parameter-free layers ----------------------------------------------------------

@module_handler(ZeroPadShortcut)
def _zero_pad_shortcut(call: Call):
    """Option A's shortcut: subsample, then zero channels after the input's: the input's
    channels keep their ids and positions; the appended ones have no writer of their own."""
    walk, label = call.walk, call.tensor_labels()[0]
    ids = walk.read(label, 1, call.args[0].shape[1])
    extra = walk.uf.new(call.module.extra_channels)
    walk.sizes.append(SizeUse(call.name, "extra_channels", extra.tolist()))
    return walk.along(torch.cat([ids, extra]), call.value, 1)


@module_handler(nn.Module)
def _leaf(call: Call):
    """An input adapter (a model's ``fx_leaf`` module) right after the input: its channels are
    the input's, never pruned. Any other leaf module is not in the table."""
    module = call.module
    if not getattr(type(module), "fx_leaf", False):
        call.refuse(type(module).__name__)
    walk = call.walk
    if not all(int(i) in walk.fixed for i in call.tensor_labels()[0].ids.flatten().tolist()):
        call.refuse(type(module).__name__, "an input adapter after the input")
    label = walk.fresh(call.value, 1)
    walk.fix(label.ids, "the model's inputs")
    return label
