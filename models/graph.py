"""The channel-dependency graph: which channels of a model must be pruned together.

The model is traced with torch.fx and every tensor's channel dimension is labelled, channel by
channel, with an id. A conv or linear layer gives its outputs new ids; operations that keep
channels as they are (BatchNorm, activations, pooling, dropout) pass the ids on; a flatten maps
each channel to its block of H x W features; a residual add merges its operands' ids channel by
channel (union-find), so a stage's residual stream becomes one set of ids per channel; a
concatenation lays its operands' ids side by side. Every parameter and buffer dimension that is
indexed by channels is recorded with the ids along it, so removing a channel means removing the
same index from every one of them.

A channel *set* is a union-find class: the channels that live and die together. A *group* is the
sets written by the same layers (a block-internal conv's outputs; a residual stream, written by
every block of the stage and its shortcut): the sets of a group are alike, so a pruning rate and
a criterion apply to a group.

Operations are understood through an explicit table (``CHANNEL_PRESERVING`` and the handlers
below). Anything else that receives a channel-labelled tensor is refused with an
``UnsupportedOperation`` naming the operation and the node: an unknown operation is never assumed
to keep channels as they are (Torch-Pruning's default, which silently mishandles zero-padding
shortcuts).
"""
import operator
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from models.layers import ZeroPadShortcut
from utils.errors import UserError


class UnsupportedOperation(UserError):
    """The model uses an operation on channels that the graph does not know."""


# Modules and functions that leave the channel dimension as it is (elementwise, spatial, or
# identity in eval mode). Anything not listed here or handled below is refused.
CHANNEL_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
CHANNEL_PRESERVING_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.sigmoid, F.tanh, F.dropout, F.max_pool2d,
    F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, torch.relu,
    torch.sigmoid, torch.tanh,
}
CHANNEL_PRESERVING_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach"}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
ADD_METHODS = {"add", "add_"}
FLATTEN_METHODS = {"flatten", "view", "reshape"}
SHAPE_QUERIES = {"size", "dim"}


class _Tracer(torch.fx.Tracer):
    """torch.nn modules are leaves as usual; so are the models' own ``fx_leaf`` modules (input
    adapters whose forward branches on the input's shape)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return getattr(type(module), "fx_leaf", False) or super().is_leaf_module(module, qualified_name)


@dataclass
class Label:
    """Ids of a tensor's channels (dim 1); ``block`` features per channel after a flatten."""
    ids: List[int]
    block: int = 1
    spatial: bool = True  # a 4-D (N, C, H, W) tensor, as opposed to (N, features)


@dataclass
class TensorUse:
    """Dimension ``dim`` of state_dict entry ``key`` is indexed by channels ``ids``, each owning
    ``block`` consecutive entries. ``writes``: the entry computes those channels (a layer's
    output rows, BatchNorm's per-channel tensors); else it reads them (a layer's input columns)."""
    key: str
    dim: int
    ids: List[int]
    block: int
    writes: bool
    layer: str
    sets: List[int] = field(default_factory=list)  # the ids' channel sets, once all are merged


@dataclass
class Group:
    """Channel sets written by the same layers. ``sets`` are union-find roots in the order of
    the first writer's output channels; ``residual``: merged by a residual add."""
    name: str
    sets: List[int]
    writers: Tuple[str, ...]
    residual: bool
    fixed: bool
    reason: str = ""

    def __len__(self):
        return len(self.sets)


class _UnionFind:
    def __init__(self):
        self.parent: List[int] = []

    def new(self, count: int) -> List[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return list(range(start, start + count))

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class DependencyGraph:
    """Built by ``build_graph``; see the module docstring."""
    model_name: str
    uses: List[TensorUse]
    groups: List[Group]
    set_of: Dict[Tuple[str, int], int]          # (layer, output channel) -> set
    group_of: Dict[int, Group] = field(default_factory=dict)

    def __post_init__(self):
        self.group_of = {s: g for g in self.groups for s in g.sets}

    def group(self, name: str) -> Group:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def group_at(self, layer: str, channel: int) -> Group:
        return self.group_of[self.set_of[(layer, channel)]]

    def prunable(self, residual: bool = False) -> List[Group]:
        """Groups whose channels may be removed: never the input's or the output's; residual
        streams only when asked."""
        return [g for g in self.groups if not g.fixed and (residual or not g.residual)]

    def sets_of(self, use: TensorUse) -> List[int]:
        """The channel set of each index along ``use``'s dimension (block by block)."""
        return use.sets


def _module_type_name(module: nn.Module) -> str:
    return type(module).__name__


def traced(model: nn.Module) -> torch.fx.GraphModule:
    """``model`` as a torch.fx GraphModule sharing its modules (so its tensors too)."""
    try:
        fx_graph = _Tracer().trace(model)
    except Exception as exc:  # data-dependent control flow and the like
        raise UnsupportedOperation(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); structured pruning needs a traceable "
            "forward()") from None
    return torch.fx.GraphModule(model, fx_graph)


def build_graph(model: nn.Module, input_shape: Sequence[int]) -> DependencyGraph:
    """Trace ``model`` on one zero image of ``input_shape`` and group its channels."""
    graph_module = traced(model)
    device = next(model.parameters()).device
    was_training = model.training
    graph_module.eval()
    try:
        with torch.no_grad():
            ShapeProp(graph_module).propagate(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return _Labeller(graph_module, model).run()


class _Labeller:
    def __init__(self, graph_module: torch.fx.GraphModule, model: nn.Module):
        self.gm = graph_module
        self.model = model
        self.modules = dict(model.named_modules())
        self.uf = _UnionFind()
        self.labels: Dict[torch.fx.Node, Optional[Label]] = {}
        self.uses: List[TensorUse] = []
        self.fixed: Set[int] = set()        # ids that touch the input or the output
        self.fixed_reason: Dict[int, str] = {}
        self.added: Set[int] = set()        # ids merged by a residual add
        self.outputs: Dict[str, List[int]] = {}  # layer -> its output ids

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _shape(node: torch.fx.Node) -> Optional[torch.Size]:
        meta = node.meta.get("tensor_meta")
        return getattr(meta, "shape", None)

    def _refuse(self, node: torch.fx.Node, what: str, why: str = "") -> None:
        where = f"module {node.target}" if node.op == "call_module" else f"node {node.name}"
        raise UnsupportedOperation(
            f"{type(self.model).__name__}: {what} at {where} is not in the dependency graph's "
            f"table of operations{': ' + why if why else ''}; structured pruning cannot tell which "
            "channels it couples, so it refuses the model rather than guess")

    def _input_labels(self, node: torch.fx.Node) -> List[Label]:
        """Labels of the channel-labelled tensors among a node's arguments, in order."""
        found = []
        stack = [node.args, node.kwargs]
        while stack:
            item = stack.pop()
            if isinstance(item, torch.fx.Node):
                if self.labels.get(item) is not None:
                    found.append(self.labels[item])
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
        return found

    def _record(self, layer: str, tensor: str, dim: int, ids: List[int], block: int, writes: bool):
        key = f"{layer}.{tensor}" if layer else tensor
        self.uses.append(TensorUse(key, dim, list(ids), block, writes, layer))

    def _fresh(self, count: int) -> List[int]:
        return self.uf.new(count)

    def _fix(self, ids: Iterable[int], reason: str) -> None:
        for i in ids:
            self.fixed.add(i)
            self.fixed_reason.setdefault(i, reason)

    # -- the walk ----------------------------------------------------------------------------

    def run(self) -> DependencyGraph:
        for node in self.gm.graph.nodes:
            self.labels[node] = self._label(node)
        return self._groups()

    def _label(self, node: torch.fx.Node) -> Optional[Label]:
        if node.op == "placeholder":
            shape = self._shape(node)
            ids = self._fresh(shape[1])
            self._fix(ids, "the input image's channels")
            return Label(ids)
        if node.op == "get_attr":
            return None
        if node.op == "output":
            for label in self._input_labels(node):
                self._fix(label.ids, "the model's outputs (the classes)")
            return None
        inputs = self._input_labels(node)
        if node.op == "call_module":
            return self._module(node, self.modules[node.target], inputs)
        if node.op == "call_function":
            return self._function(node, inputs)
        if node.op == "call_method":
            return self._method(node, inputs)
        self._refuse(node, f"operation {node.op}")

    def _module(self, node, module, inputs) -> Optional[Label]:
        name = node.target
        if not inputs:
            return None
        (label,) = inputs if len(inputs) == 1 else self._refuse(node, _module_type_name(module),
                                                                 "it takes several tensors")
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                self._refuse(node, f"grouped convolution (groups={module.groups})")
            self._record(name, "weight", 1, label.ids, 1, writes=False)
            out = self._fresh(module.out_channels)
            self._record(name, "weight", 0, out, 1, writes=True)
            if module.bias is not None:
                self._record(name, "bias", 0, out, 1, writes=True)
            self.outputs[name] = out
            return Label(out)
        if isinstance(module, nn.Linear):
            if label.spatial and len(self._shape(node.args[0])) != 2:
                self._refuse(node, "Linear on a tensor that is not (batch, features)")
            self._record(name, "weight", 1, label.ids, label.block, writes=False)
            out = self._fresh(module.out_features)
            self._record(name, "weight", 0, out, 1, writes=True)
            if module.bias is not None:
                self._record(name, "bias", 0, out, 1, writes=True)
            self.outputs[name] = out
            return Label(out, spatial=False)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if label.block != 1:
                self._refuse(node, "BatchNorm over flattened channels")
            for tensor in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, tensor, None) is not None:
                    self._record(name, tensor, 0, label.ids, 1, writes=True)
            return label
        if isinstance(module, nn.Flatten):
            return self._flatten(node, label, module.start_dim, module.end_dim)
        if isinstance(module, ZeroPadShortcut):
            # Subsample, then append constant-zero channels: the input's channels keep their ids
            # and positions; the appended ones have no writer of their own.
            return Label(label.ids + self._fresh(module.extra_channels))
        if getattr(type(module), "fx_leaf", False):
            if not all(i in self.fixed for i in label.ids):
                self._refuse(node, _module_type_name(module), "an input adapter after the input")
            ids = self._fresh(self._shape(node)[1])
            self._fix(ids, "the input image's channels")
            return Label(ids)
        if isinstance(module, CHANNEL_PRESERVING_MODULES):
            return label
        self._refuse(node, _module_type_name(module))

    def _flatten(self, node, label: Label, start: int, end: int = -1) -> Label:
        shape = self._shape(node.args[0])
        if start != 1 or end not in (-1, len(shape) - 1):
            self._refuse(node, f"flatten({start}, {end})", "only flatten(1) is understood")
        if len(shape) == 2:
            return label
        block = 1
        for size in shape[2:]:
            block *= int(size)
        return Label(label.ids, block=label.block * block, spatial=False)

    def _function(self, node, inputs) -> Optional[Label]:
        target = node.target
        if not inputs:
            return None
        if target in CHANNEL_PRESERVING_FUNCTIONS:
            return inputs[0]
        if target in ADD_FUNCTIONS:
            return self._add(node, inputs)
        if target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(node, inputs[0], start, end)
        if target is torch.cat:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim != 1 or any(label.block != 1 for label in inputs):
                self._refuse(node, f"torch.cat(dim={dim})", "only channel concatenation (dim=1)")
            return Label([i for label in inputs for i in label.ids],
                         spatial=all(label.spatial for label in inputs))
        if target is operator.getitem and isinstance(node.args[0], torch.fx.Node) \
                and self._shape(node.args[0]) is None:
            return None  # indexing a shape or a tuple, not a tensor
        self._refuse(node, f"function {getattr(target, '__name__', target)}")

    def _method(self, node, inputs) -> Optional[Label]:
        method = node.target
        if not inputs or method in SHAPE_QUERIES:
            return None
        if method in CHANNEL_PRESERVING_METHODS:
            return inputs[0]
        if method in ADD_METHODS:
            return self._add(node, inputs)
        if method == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return self._flatten(node, inputs[0], start)
        if method in FLATTEN_METHODS:  # view/reshape: only (batch, -1) is a flatten
            before, after = self._shape(node.args[0]), self._shape(node)
            if after is not None and len(after) == 2 and after[0] == before[0]:
                return self._flatten(node, inputs[0], 1)
            self._refuse(node, f"method {method}", "only a reshape to (batch, features)")
        self._refuse(node, f"method {method}")

    def _add(self, node, inputs) -> Label:
        if len(inputs) == 1:
            return inputs[0]  # a tensor plus a number keeps its channels
        first, second = inputs[:2]
        if len(first.ids) != len(second.ids) or first.block != second.block:
            self._refuse(node, "add", "its operands have different channels")
        for a, b in zip(first.ids, second.ids):
            self.uf.union(a, b)
            self.added.update((a, b))
        return first

    # -- sets and groups ---------------------------------------------------------------------

    def _groups(self) -> DependencyGraph:
        find = self.uf.find
        fixed = {find(i): self.fixed_reason[i] for i in self.fixed}
        added = {find(i) for i in self.added}
        writers: Dict[int, Set[str]] = {}
        for use in self.uses:
            if use.writes and use.key.endswith(".weight") and use.layer in self.outputs:
                for i in use.ids:
                    writers.setdefault(find(i), set()).add(use.layer)
        order = {name: position for position, name in enumerate(self.modules)}
        set_of = {}
        for layer, ids in self.outputs.items():
            for channel, i in enumerate(ids):
                set_of[(layer, channel)] = find(i)
        by_signature: Dict[Tuple[str, ...], List[int]] = {}
        seen = set()
        for layer in sorted(self.outputs, key=order.get):  # sets in their first writer's order
            for i in self.outputs[layer]:
                root = find(i)
                if root in seen:
                    continue
                seen.add(root)
                signature = tuple(sorted(writers.get(root, ()), key=order.get))
                by_signature.setdefault(signature, []).append(root)
        groups = []
        for signature, sets in by_signature.items():
            first = signature[0]
            start = next(c for c, i in enumerate(self.outputs[first]) if find(i) == sets[0])
            name = first if start == 0 else f"{first}[{start}:]"
            reasons = [fixed[s] for s in sets if s in fixed]
            groups.append(Group(name=name, sets=sets, writers=signature,
                                residual=any(s in added for s in sets), fixed=bool(reasons),
                                reason=reasons[0] if reasons else ""))
        for use in self.uses:
            use.sets = [find(i) for i in use.ids]
        return DependencyGraph(getattr(self.model, "registry_name", type(self.model).__name__),
                               self.uses, groups, set_of)
