"""Sensitivity analysis (Han et al. 2015, Figure 6; Li et al. 2017, Figure 2): prune one layer
(or channel group) alone at each rate of a grid, evaluate without retraining on the validation
split, and propose per-layer rates from the curves.

Each point changes one layer's tensors in place and puts them back: no copy of the whole model
per point. Per layer, each validation batch runs once through the part of the network the
layer does not reach; only the rest runs again for each rate.
"""
import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from models.base import weight_layers
from pruners.compact import pruned_sets, writer_tensors
from utils.tracing import traced
from pruners.magnitude import smallest_k_masks
from utils.errors import UserError
from utils.training import evaluate

MAGNITUDE = "magnitude"


@dataclass
class Unit:
    """One thing pruned alone: a layer's weight (magnitude) or a channel group (filters)."""
    name: str
    size: int        # weights (magnitude) or channels (filters)
    weights: int     # weights it holds, for the overall compression of a proposal


def default_rates(step: float = 0.05, top: float = 0.95) -> List[float]:
    return [round(i * step, 10) for i in range(int(round(top / step)) + 1)]


class Sensitivity:
    """``method``: "magnitude" (Han et al.'s element-wise pruning of each conv/linear weight) or
    a filter pruner's name (each prunable channel group, its filters chosen by that pruner's
    criterion)."""

    def __init__(self, model: nn.Module, method: str = MAGNITUDE, pruner=None):
        self.model = model.eval()
        self.method = method
        self.pruner = pruner
        if method == MAGNITUDE:
            self.layers = dict(weight_layers(model))
            self.units = [Unit(name, m.weight.numel(), m.weight.numel())
                          for name, m in self.layers.items()]
        else:
            self.groups = {g.name: g for g in pruner.prunable_groups(model)}
            self.graph = pruner.graph
            self.units = [Unit(g.name, len(g), self._group_weights(g)) for g in self.groups.values()]

    def _group_weights(self, group) -> int:
        """Weights that go with the group's channels: its writers' rows and readers' columns."""
        total = 0
        for use in self.graph.uses:
            if not use.key.endswith("weight"):  # in_proj_weight too (attention)
                continue
            sets = self.graph.sets_of(use)
            if any(s in group.sets for s in sets):
                tensor = self.model.state_dict()[use.key]
                total += tensor.numel() * sum(s in group.sets for s in sets) // len(sets)
        return total

    def _pruned_values(self, unit: Unit, rate: float) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(tensor, its values with ``unit`` pruned at ``rate``) for each tensor that changes."""
        with torch.no_grad():
            if self.method == MAGNITUDE:
                weight = self.layers[unit.name].weight
                (mask,) = smallest_k_masks([weight], round(rate * weight.numel()))
                return [(weight, weight.detach() * mask)]
            group = self.groups[unit.name]
            index = self.pruner.select_at(self.model, group, rate)
            sets = pruned_sets(self.graph, {group.name: index.tolist()})
            values = []
            for _, tensor, dim, positions in writer_tensors(self.model, self.graph, sets):
                values.append((tensor, tensor.detach().index_fill(dim, positions, 0.0)))
            return values

    def _changed_modules(self, unit: Unit) -> Set[str]:
        """Names of the modules whose tensors pruning ``unit`` changes (at any rate)."""
        if self.method == MAGNITUDE:
            return {unit.name}
        sets = set(self.groups[unit.name].sets)
        return {key.rpartition(".")[0] for key, _, _, _ in writer_tensors(self.model, self.graph, sets)}

    @contextlib.contextmanager
    def pruned(self, unit: Unit, rate: float,
               values: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None) -> Iterator[None]:
        """``unit`` pruned at ``rate`` in place for the block (``values``: from _pruned_values,
        when already computed); its tensors restored after."""
        values = self._pruned_values(unit, rate) if values is None else values
        saved = [(tensor, tensor.detach().clone()) for tensor, _ in values]
        with torch.no_grad():
            for tensor, value in values:
                tensor.copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for tensor, original in saved:
                    tensor.copy_(original)

    @torch.inference_mode()
    def run(self, val, rates: Sequence[float], progress: bool = True,
            batch_size: int = 1000) -> List[dict]:
        """Rows of (layer, rate, top1, loss) for every unit and rate; rate 0 is the unpruned
        model's figure. Per unit, each batch runs once through the part of the network its
        tensors do not reach, and only the rest runs again for each rate (PartialForward)."""
        base = evaluate(self.model, val, batch_size)
        forward = PartialForward(self.model)
        pruned_rates = [rate for rate in rates if rate != 0]
        rows = []
        bar = tqdm(total=len(self.units) * len(rates), desc="sensitivity", unit="point",
                   disable=None if progress else True)
        for unit in self.units:
            plan = forward.plan(self._changed_modules(unit))
            values = {rate: self._pruned_values(unit, rate) for rate in pruned_rates}
            sums = {rate: torch.zeros(3, dtype=torch.float64) for rate in pruned_rates}
            for images, labels in val.batches(batch_size):
                cache = forward.prefix(images, plan)
                for rate in pruned_rates:
                    with self.pruned(unit, rate, values[rate]):
                        logits = forward.rest(cache, plan)
                    sums[rate] += torch.stack([
                        F.cross_entropy(logits, labels, reduction="sum").double().cpu(),
                        (logits.argmax(1) == labels).sum().double().cpu(),
                        torch.tensor(float(len(labels)), dtype=torch.float64)])
            for rate in rates:
                if rate == 0:
                    result = base
                else:
                    loss, correct, count = sums[rate].tolist()
                    result = {"acc": correct / count, "loss": loss / count}
                rows.append({"layer": unit.name, "rate": rate, "top1": result["acc"],
                             "loss": result["loss"], "size": unit.size, "weights": unit.weights})
            bar.update(len(rates))
        bar.close()
        return rows


class PartialForward:
    """The model's torch.fx graph, run in two parts for a given set of changed modules: the
    nodes they do not reach (once per batch: ``prefix``) and the nodes they do (once per rate:
    ``rest``, from the prefix's values). Values are freed after their last use, except the
    prefix values the rest reads, so memory stays that of one forward pass."""

    def __init__(self, model: nn.Module):
        self.module = traced(model)
        self.nodes = list(self.module.graph.nodes)

    def plan(self, changed: Set[str]) -> dict:
        dirty = set()
        for node in self.nodes:
            owner = (node.target if node.op == "call_module" else
                     node.target.rpartition(".")[0] if node.op == "get_attr" else None)
            if owner in changed or any(n in dirty for n in node.all_input_nodes):
                dirty.add(node)
        clean = [n for n in self.nodes if n not in dirty]
        rest = [n for n in self.nodes if n in dirty]
        frontier = {arg for node in rest for arg in node.all_input_nodes if arg not in dirty}
        return {"clean": clean, "rest": rest, "frontier": frontier}

    def _run(self, nodes, env: dict, keep: Set, images=None) -> dict:
        interpreter = torch.fx.Interpreter(self.module, garbage_collect_values=False)
        interpreter.env = env
        interpreter.args_iter = iter([] if images is None else [images])
        last_use = {}
        for position, node in enumerate(nodes):
            for arg in node.all_input_nodes:
                last_use[arg] = position
        for position, node in enumerate(nodes):
            env[node] = interpreter.run_node(node)
            for arg in node.all_input_nodes:
                if last_use.get(arg) == position and arg not in keep and arg in env:
                    del env[arg]
        return env

    def prefix(self, images: torch.Tensor, plan: dict) -> dict:
        env = self._run(plan["clean"], {}, plan["frontier"], images)
        return {node: env[node] for node in plan["frontier"]}

    def rest(self, cache: dict, plan: dict) -> torch.Tensor:
        env = self._run(plan["rest"], dict(cache), set(cache))
        return env[plan["rest"][-1]]  # the output node's value


def propose(rows: List[dict], max_drop: Optional[float] = None,
            target_compression: Optional[float] = None) -> Tuple[Dict[str, float], dict]:
    """Per-layer rates from the curves: for each layer the highest rate whose accuracy stays
    within ``max_drop`` of the unpruned one (and every rate below it too: a curve that dips and
    recovers is not trusted past the dip). With ``target_compression`` (weights before / after,
    over the analysed layers), the smallest drop that reaches it."""
    by_layer: Dict[str, List[dict]] = {}
    for row in rows:
        by_layer.setdefault(row["layer"], []).append(row)
    base = {name: next(r["top1"] for r in layer if r["rate"] == 0) if any(r["rate"] == 0 for r in layer)
            else max(r["top1"] for r in layer) for name, layer in by_layer.items()}

    def rates_for(drop: float) -> Dict[str, float]:
        chosen = {}
        for name, layer in by_layer.items():
            best = 0.0
            for row in sorted(layer, key=lambda r: r["rate"]):
                if row["top1"] < base[name] - drop - 1e-12:
                    break
                best = row["rate"]
            chosen[name] = best
        return chosen

    def compression(chosen: Dict[str, float]) -> float:
        weights = {name: layer[0]["weights"] for name, layer in by_layer.items()}
        kept = sum(weights[n] * (1 - chosen[n]) for n in weights)
        return sum(weights.values()) / kept if kept else math.inf

    if target_compression is not None:
        drops = sorted({max(0.0, base[r["layer"]] - r["top1"]) for r in rows})
        for drop in drops:
            chosen = rates_for(drop)
            if compression(chosen) >= target_compression:
                return chosen, {"max_drop": drop, "compression": compression(chosen)}
        raise UserError(f"no accuracy drop on the grid reaches {target_compression}x over the "
                        f"analysed layers (at most {compression(rates_for(drops[-1])):.2f}x); "
                        "extend the grid or aim lower")
    drop = 0.01 if max_drop is None else max_drop
    chosen = rates_for(drop)
    return chosen, {"max_drop": drop, "compression": compression(chosen)}


def format_rates(rates: Dict[str, float]) -> str:
    """The --layer_rates form: NAME=RATE,..."""
    return ",".join(f"{name}={rate:g}" for name, rate in rates.items())


def plot(rows: List[dict], path, title: str, pyplot: Callable):
    """Accuracy against rate, one line per layer (Han et al.'s Figure 6)."""
    figure, axes = pyplot.subplots(figsize=(6, 4))
    by_layer: Dict[str, List[dict]] = {}
    for row in rows:
        by_layer.setdefault(row["layer"], []).append(row)
    for name, layer in by_layer.items():
        axes.plot([r["rate"] * 100 for r in layer], [r["top1"] * 100 for r in layer],
                  marker="o", markersize=3, label=name)
    axes.set_xlabel("parameters pruned away (%)")
    axes.set_ylabel("validation top-1 (%) without retraining")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure
