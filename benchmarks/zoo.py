"""Structured pruning of every torchvision classification model, beside Torch-Pruning's.

    python benchmarks/zoo.py --cnn_only --output results/zoo.md     # the 68 CNNs
    python benchmarks/zoo.py --models resnet50 mobilenet_v3_small --no_torch_pruning

For every model of torchvision.models.list_models(module=torchvision.models) (or --models), with
random weights (weights=None: nothing is downloaded), BatchNorm's running statistics and affine
parameters set to random values (so a zeroed filter followed by BatchNorm cannot hide an error)
and parameters initialised to exactly zero made random (ViT's zero classifier would make the
check 0 = 0, a zero bias would hide a removal that forgot it), on one random image of --image_size (299 for inception_v3; --small_input_for names models run at
--small_size instead, and the table's input column says which size each model ran at):

- the channel-dependency graph is built (pruners.graph through ChannelPruner), or the refusal's
  one line is recorded; its groups and prunable groups are counted;
- twice, block-internal (prune_residual=False) and with prune_residual=True, every prunable group
  loses --rate of its channels by the l1norm criterion (ChannelPruner.step: masked in place) and
  the model is compacted by surgery (ChannelPruner.compact). Printed: parameters and FLOPs before
  and after, the largest |masked - compact| relative to the largest |masked output|
  (ChannelPruner.compact_difference; above 1e-4 it is a CompactionMismatch), seconds to build the
  graph (ChannelPruner construction) and to step + compact (compaction includes its own check:
  two forward passes);
- with torch-pruning installed (an optional benchmark dependency, never a requirement) and without
  --no_torch_pruning, the same model through its MetaPruner (MagnitudeImportance(p=1), the same
  ratio, local pruning, the final classifier ignored) on a copy, in a subprocess killed after
  --timeout seconds (it is known to hang or crash on some models): pruned / failed / timed out,
  seconds for its DependencyGraph build + pruner.step(), parameters after, and its own
  exactness: its pruned model's output against a copy with the same channels zeroed, where
  every pruned writer is a conv, linear or BatchNorm (n/a otherwise).

The last line is "N/M pruned, K refused, X mismatched" (plus failures of any other kind). FLOPs:
2 x multiply-accumulate for one image, as torch.utils.flop_counter.FlopCounterMode counts them.
Times are wall-clock seconds on this machine with --threads torch threads, both sides alike.
"""
import copy
import csv
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pruners.channel import ChannelPruner, CompactionMismatch  # noqa: E402
from pruners.graph import ATTENTION_UNITS  # noqa: E402
from utils import cli  # noqa: E402
from utils.errors import UnsupportedOperation, UserError  # noqa: E402
from utils.files import write_text  # noqa: E402
from utils.reporting.tables import markdown_table  # noqa: E402
from utils.transformers import explicit_attention  # noqa: E402

TRANSFORMER_PREFIXES = ("vit_", "swin_", "maxvit_")
NATIVE_SIZES = {"inception_v3": 299}
SEED = 0
NUM_CLASSES = 1000
WORKER_FLAG = "--_torch_pruning_worker"


def zoo_names() -> List[str]:
    import torchvision
    return list(torchvision.models.list_models(module=torchvision.models))


def is_transformer(name: str) -> bool:
    return name.startswith(TRANSFORMER_PREFIXES)


def get_args_parser():
    parser = cli.new_parser(__doc__)
    parser.add_argument("--models", nargs="*", default=None,
                        help="torchvision model names (default: every classification model, CNNs "
                             "first)")
    parser.add_argument("--cnn_only", action="store_true",
                        help="skip the transformers (vit_*, swin_*, maxvit_t)")
    parser.add_argument("--rate", type=cli.fraction, default=0.3,
                        help="fraction of every prunable group's channels removed (both sides)")
    parser.add_argument("--image_size", type=cli.positive_int, default=224,
                        help="input height and width (inception_v3 runs at 299 unless it is in "
                             "--small_input_for)")
    parser.add_argument("--small_input_for", nargs="*", default=[],
                        help="models run at --small_size instead, to save time on the largest "
                             "(the table's input column says so)")
    parser.add_argument("--small_size", type=cli.positive_int, default=128,
                        help="input height and width for the --small_input_for models")
    parser.add_argument("--criterion", default="l1norm", help="our side's criterion")
    parser.add_argument("--attention", choices=ATTENTION_UNITS, default="heads",
                        help="what our side prunes in the transformers' attention: whole heads, "
                             "or the width of every head (Torch-Pruning's side is unchanged)")
    parser.add_argument("--no_torch_pruning", action="store_true",
                        help="do not run torch-pruning beside (it is skipped anyway when not "
                             "installed)")
    parser.add_argument("--timeout", type=cli.positive_float, default=180.0,
                        help="seconds torch-pruning may take per model (subprocess) before it is "
                             "recorded as timed out")
    parser.add_argument("--repeats", type=cli.positive_int, default=1,
                        help="time each side this many times per model, on fresh copies, and "
                             "report the run of median time (results are the same every time; "
                             "--timeout covers all of torch-pruning's runs of a model)")
    parser.add_argument("--threads", type=cli.positive_int, default=1,
                        help="torch CPU threads, for both sides (few threads give steadier "
                             "timings on a shared machine)")
    parser.add_argument("--output", default=None,
                        help="write the markdown table to this path (.md) and the CSV beside it "
                             "(same stem, .csv)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing --output files (refused otherwise)")
    return parser


# ---- models ------------------------------------------------------------------------------------

def input_size(name: str, args) -> int:
    if name in args.small_input_for:
        return args.small_size
    return NATIVE_SIZES.get(name, args.image_size)


@torch.no_grad()
def randomize_normalization(model: nn.Module, generator: torch.Generator) -> None:
    """Random BatchNorm statistics and affine parameters (and random GroupNorm/LayerNorm affine
    parameters): with torchvision's init (scale 1, shift 0, mean 0, var 1) a zeroed filter
    before BatchNorm stays zero whatever the BatchNorm does, which would hide a missed one."""
    def fill(tensor, low, high):
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is not None:
                fill(module.running_mean, -1.0, 1.0)
                fill(module.running_var, 0.5, 2.0)
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                fill(module.weight, 0.5, 1.5)
            if getattr(module, "bias", None) is not None:
                fill(module.bias, -1.0, 1.0)


@torch.no_grad()
def randomize_zero_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Every parameter initialised to exactly zero gets small random values: ViT's classifier is
    zero-initialised (every output 0, so compact == masked would hold vacuously, 0 against 0),
    and a zero bias (the attention projections', a class token) would hide a removal that
    forgot it."""
    for parameter in model.parameters():
        if parameter.numel() and not bool(parameter.any()):
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(noise * (0.02 if parameter.dim() > 1 else 0.1))


def size_kwargs(name: str, size: int) -> dict:
    """ViT and MaxViT are built for one input size (ViT's position embedding, MaxViT's partition
    grids): built for the size the model runs at; the other models take any size."""
    if name.startswith("vit_"):
        return {"image_size": size}
    if name.startswith("maxvit_"):
        return {"input_size": (size, size)}
    return {}


def build_model(name: str, size: int):
    """The model (random weights, seeded) and its example input, the same in every process."""
    import torchvision
    torch.manual_seed(SEED)
    model = torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES,
                                         **size_kwargs(name, size))
    randomize_normalization(model, torch.Generator().manual_seed(SEED + 1))
    randomize_zero_parameters(model, torch.Generator().manual_seed(SEED + 3))
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(SEED + 2))
    return model, image


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops(model: nn.Module, image: torch.Tensor) -> int:
    was = model.training
    model.eval()
    try:
        # attention explicit: FlopCounterMode does not see nn.MultiheadAttention's fused kernel
        with torch.no_grad(), explicit_attention(model), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was)
    return counter.get_total_flops()


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ---- our side ----------------------------------------------------------------------------------

def prune_ours(model: nn.Module, image: torch.Tensor, rate: float, residual: bool,
               criterion: str, attention: str = "heads", repeats: int = 1) -> dict:
    """One variant, ``repeats`` times on fresh copies: the run whose time is the median's (the
    results are the same every time; only the seconds vary on a shared machine). Never
    raises."""
    runs = []
    for _ in range(repeats):
        runs.append(_prune_ours_once(model, image, rate, residual, criterion, attention))
        if runs[-1]["status"] != "pruned":
            return runs[-1]
    return median_run(runs, ours_total)


def _prune_ours_once(model: nn.Module, image: torch.Tensor, rate: float, residual: bool,
                     criterion: str, attention: str) -> dict:
    """Build, step + compact, check, on a copy."""
    model = copy.deepcopy(model)
    out = {"status": "pruned"}
    try:
        start = time.perf_counter()
        pruner = ChannelPruner(model, (image,), criterion=criterion, rate=rate,
                               prune_residual=residual, attention=attention)
        out["build_s"] = time.perf_counter() - start
        out["groups"] = len(pruner.groups)
        out["prunable"] = len(pruner.prunable)
        start = time.perf_counter()
        pruner.step()
        small = pruner.compact()
        out["compact_s"] = time.perf_counter() - start
        out["check_s"] = pruner.check_seconds
        out["diff"] = pruner.compact_difference
        out["params_after"] = parameters(small)
        out["flops_after"] = flops(small, image)
    except UnsupportedOperation as exc:
        out.update(status="refused", reason=one_line(exc))
    except CompactionMismatch as exc:
        out.update(status="mismatched", reason=one_line(exc))
    except Exception as exc:  # noqa: BLE001 - a benchmark row, the run goes on
        out.update(status="failed", reason=one_line(exc))
    return out


def median_run(runs: List[dict], total) -> dict:
    """The run whose total seconds are the median (the upper one of an even count), with the
    count of runs."""
    chosen = sorted(runs, key=total)[len(runs) // 2]
    return {**chosen, "repeats": len(runs)}


# ---- torch-pruning's side ----------------------------------------------------------------------

def torch_pruning_available() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken: the benchmark runs without it
        return False
    return True


def classifiers(model: nn.Module) -> List[nn.Module]:
    """The layers that write class scores (the final classifier, and auxiliary ones)."""
    return [m for m in model.modules()
            if (isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES)
            or (isinstance(m, nn.Conv2d) and m.out_channels == NUM_CLASSES)]


def warm_up_model():
    """A tiny residual conv net: one untimed pass through either side first, so that neither
    side's figures for the first model include one-time costs (imports, lazy initialisation)."""
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                       nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
            self.fc = nn.Linear(8, NUM_CLASSES)

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.block(x))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(SEED)
    return Tiny(), torch.randn(1, 3, 16, 16)


def run_torch_pruning(name: str, size: int, rate: float, repeats: int = 1) -> dict:
    """In the worker process: torch-pruning's MetaPruner on a copy of the same model,
    ``repeats`` times on fresh copies (the run of median time)."""
    import torch_pruning as tp
    tiny, tiny_image = warm_up_model()
    tp.pruner.MetaPruner(tiny, tiny_image, importance=tp.importance.MagnitudeImportance(p=1),
                         pruning_ratio=rate, ignored_layers=classifiers(tiny)).step()
    model, image = build_model(name, size)
    model.eval()
    # One untimed forward pass, as our side's model gets from the FLOP count before it is
    # pruned: neither side's timing includes the first pass's one-time costs at these shapes
    # (oneDNN builds its convolution kernels per shape on first use).
    with torch.no_grad():
        model(image)
    runs = [_torch_pruning_once(tp, model, image, rate) for _ in range(repeats)]
    return median_run(runs, tp_total)


def _torch_pruning_once(tp, model: nn.Module, image: torch.Tensor, rate: float) -> dict:
    """MetaPruner on a copy of ``model``, timed, and its removal checked against a zeroed copy."""
    pruned = copy.deepcopy(model)
    zeroed = copy.deepcopy(model)
    out = {"status": "pruned"}
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(pruned, image, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=rate, global_pruning=False,
                                  ignored_layers=classifiers(pruned))
    out["build_s"] = time.perf_counter() - start
    names = {id(m): n for n, m in pruned.named_modules()}
    zeroed_modules = dict(zeroed.named_modules())
    exact_possible = True
    # Per zeroed module, the original index of each channel torch-pruning's module still has:
    # its indices in a later group count the channels an earlier group left (a BatchNorm that
    # reads a DenseNet concatenation loses channels in many groups).
    kept: Dict[str, List[int]] = {}
    start = time.perf_counter()
    zero_time = 0.0
    for group in pruner.step(interactive=True):
        # Zero what this group removes in the copy before the removal (not timed).
        mark = time.perf_counter()
        removed: Dict[str, set] = {}
        for dep, idxs in group:
            module = dep.target.module
            norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            if not norm and not pruner.DG.is_out_channel_pruning_fn(dep.handler):
                continue  # a reader's input columns: zero already arrives there
            if isinstance(module, nn.Parameter) or (
                    isinstance(module, nn.Module) and not isinstance(
                        module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))
                    and any(True for _ in module.parameters(recurse=False))):
                exact_possible = False  # a layer scale, LayerNorm, PReLU...: not zeroed here
                continue
            if not isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                continue  # torch-pruning's placeholders for add, concat, split: no tensors
            removed.setdefault(names[id(module)], set()).update(int(i) for i in idxs)
        for name, positions in removed.items():
            target = zeroed_modules[name]
            current = kept.setdefault(name, list(range(target.weight.shape[0])))
            index = torch.tensor([current[i] for i in sorted(positions)], dtype=torch.long)
            kept[name] = [c for i, c in enumerate(current) if i not in positions]
            with torch.no_grad():
                target.weight[index] = 0
                if target.bias is not None:
                    target.bias[index] = 0
        zero_time += time.perf_counter() - mark
        group.prune()
    out["prune_s"] = time.perf_counter() - start - zero_time
    out["params_after"] = parameters(pruned)
    with torch.no_grad():
        a = zeroed(image)
        with FlopCounterMode(display=False) as counter:
            b = pruned(image)
    out["flops_after"] = counter.get_total_flops()
    if exact_possible:
        out["diff"] = float((a - b).abs().max()) / (float(a.abs().max()) or 1.0)
    return out


def torch_pruning_worker(argv: List[str]) -> None:
    name, size, rate, threads = argv[0], int(argv[1]), float(argv[2]), int(argv[3])
    repeats = int(argv[4]) if len(argv) > 4 else 1
    torch.set_num_threads(threads)
    try:
        out = run_torch_pruning(name, size, rate, repeats)
    except Exception as exc:  # noqa: BLE001 - its failure is a row
        out = {"status": "failed", "reason": one_line(exc)}
    print("ZOO_RESULT " + json.dumps(out), flush=True)


def torch_pruning_side(name: str, size: int, rate: float, threads: int, timeout: float,
                       repeats: int = 1) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), WORKER_FLAG, name, str(size),
               repr(rate), str(threads), str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "reason": f"no result within {timeout:g} s"}
    for line in done.stdout.splitlines():
        if line.startswith("ZOO_RESULT "):
            return json.loads(line[len("ZOO_RESULT "):])
    last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return {"status": "crashed", "reason": f"exit code {done.returncode}: {last[:200]}"}


# ---- one model, the table ----------------------------------------------------------------------

def run_model(name: str, args, with_tp: bool) -> dict:
    size = input_size(name, args)
    row = {"model": name, "input": size, "small_input": name in args.small_input_for}
    try:
        model, image = build_model(name, size)
    except Exception as exc:  # noqa: BLE001
        row.update(status="failed", reason=one_line(exc), ours={}, residual={}, tp={})
        return row
    row["params"] = parameters(model)
    row["flops"] = flops(model, image)
    row["ours"] = prune_ours(model, image, args.rate, False, args.criterion, args.attention,
                             args.repeats)
    if row["ours"]["status"] == "refused":
        row["residual"] = dict(row["ours"])  # the same graph: refused alike, not built twice
    else:
        row["residual"] = prune_ours(model, image, args.rate, True, args.criterion, args.attention,
                                     args.repeats)
        row["prunable_residual"] = row["residual"].get("prunable")
    del model
    statuses = {row["ours"]["status"], row["residual"]["status"]}
    for status in ("refused", "mismatched", "failed"):
        if status in statuses:
            row["status"] = status
            row["reason"] = next(v["reason"] for v in (row["ours"], row["residual"])
                                 if v["status"] == status)
            break
    else:
        row["status"] = "pruned"
    row["tp"] = (torch_pruning_side(name, size, args.rate, args.threads, args.timeout, args.repeats)
                 if with_tp else {})
    return row


def _millions(value) -> str:
    return "" if value is None else f"{value / 1e6:.2f}M"


def _giga(value) -> str:
    return "" if value is None else f"{value / 1e9:.2f}G"


def _seconds(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _diff(value) -> str:
    return "" if value is None else f"{value:.1e}"


def ours_total(variant: dict) -> Optional[float]:
    if variant.get("build_s") is None or variant.get("compact_s") is None:
        return None
    return variant["build_s"] + variant["compact_s"]


def tp_total(tp: dict) -> Optional[float]:
    if tp.get("build_s") is None or tp.get("prune_s") is None:
        return None
    return tp["build_s"] + tp["prune_s"]


HEADERS = ["model", "input", "groups", "prunable (+res.)", "params", "FLOPs", "max rel. diff",
           "build s", "compact s", "residual: params", "residual: FLOPs", "residual: diff",
           "residual: s", "status", "torch-pruning", "tp params", "tp diff", "tp s"]


def table_cells(row: dict, with_tp: bool) -> List[str]:
    ours, res, tp = row.get("ours", {}), row.get("residual", {}), row.get("tp", {})
    size = f"{row['input']}" + (" (small)" if row.get("small_input") else "")
    before_p, before_f = row.get("params"), row.get("flops")

    def arrow(before, after, fmt):
        return f"{fmt(before)} -> {fmt(after)}" if after is not None else fmt(before)

    if ours.get("status") == "pruned":
        prunable = f"{ours.get('prunable')} (+{(row.get('prunable_residual') or 0) - ours['prunable']})" \
            if res.get("prunable") is not None else f"{ours.get('prunable')}"
    else:
        prunable = ""
    status = row["status"] if row["status"] == "pruned" else f"{row['status']}: {row['reason']}"
    if not with_tp:
        tp_status = "not run"
    elif tp.get("status") == "pruned":
        tp_status = "pruned"
    else:
        tp_status = f"{tp.get('status')}: {tp.get('reason', '')}"
    tp_diff = _diff(tp.get("diff")) if tp.get("status") == "pruned" and "diff" in tp else (
        "n/a" if tp.get("status") == "pruned" else "")
    return [row["model"], size, str(ours.get("groups", "")), prunable,
            arrow(before_p, ours.get("params_after"), _millions),
            arrow(before_f, ours.get("flops_after"), _giga), _diff(ours.get("diff")),
            _seconds(ours.get("build_s")), _seconds(ours.get("compact_s")),
            _millions(res.get("params_after")), _giga(res.get("flops_after")),
            _diff(res.get("diff")), _seconds(ours_total(res)), status, tp_status,
            _millions(tp.get("params_after")), tp_diff, _seconds(tp_total(tp))]


def summary(rows: List[dict]) -> str:
    count = {s: sum(r["status"] == s for r in rows) for s in ("pruned", "refused", "mismatched",
                                                              "failed")}
    line = (f"{count['pruned']}/{len(rows)} pruned, {count['refused']} refused, "
            f"{count['mismatched']} mismatched")
    if count["failed"]:
        line += f", {count['failed']} failed"
    return line


def ours_without_check(variant: dict) -> Optional[float]:
    """Ours without compact()'s check (its two forward passes), the work torch-pruning's figure
    covers: graph, selection, removal."""
    total = ours_total(variant)
    return None if total is None or variant.get("check_s") is None else total - variant["check_s"]


def speed_comparison(rows: List[dict]) -> List[str]:
    """Ours (graph build + step + compact, each variant; again without compact's check) against
    torch-pruning's (graph build + step), on the models both pruned."""
    lines = []
    for key, label in (("ours", "block-internal"), ("residual", "prune_residual")):
        for time_of, what in ((ours_total, "build + step + compact"),
                              (ours_without_check, "the same without compact's check")):
            ratios = [(time_of(r[key]) / tp_total(r["tp"]), r["model"]) for r in rows
                      if r.get(key, {}).get("status") == "pruned"
                      and r.get("tp", {}).get("status") == "pruned"
                      and time_of(r[key]) and tp_total(r["tp"])]
            if not ratios:
                continue
            faster = sum(q <= 1 for q, _ in ratios)
            worst, model = max(ratios)
            geo = math.exp(sum(math.log(q) for q, _ in ratios) / len(ratios))
            lines.append(f"Speed ({label}): ours ({what}) took no longer than torch-pruning "
                         f"(build + step) on {faster}/{len(ratios)} models; geometric mean ratio "
                         f"ours/tp {geo:.2f}, worst {worst:.2f} ({model})")
    return lines


def csv_text(rows: List[dict]) -> str:
    fields = ["model", "input", "status", "reason", "params", "flops"]
    variants = {"ours": ["status", "groups", "prunable", "params_after", "flops_after", "diff",
                         "build_s", "compact_s", "check_s", "reason"],
                "residual": ["status", "prunable", "params_after", "flops_after", "diff",
                             "build_s", "compact_s", "check_s", "reason"],
                "tp": ["status", "params_after", "flops_after", "diff", "build_s", "prune_s",
                       "reason"]}
    header = fields + [f"{v}_{k}" for v, keys in variants.items() for k in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(f, "") for f in fields]
                        + [row.get(v, {}).get(k, "") for v, keys in variants.items() for k in keys])
    return buffer.getvalue()


def output_paths(output: Optional[str], overwrite: bool):
    if output is None:
        return None
    path = Path(output)
    paths = (path.with_suffix(".md"), path.with_suffix(".csv"))
    if not overwrite:
        existing = [str(p) for p in paths if p.exists()]
        if existing:
            raise UserError(f"--output would overwrite {', '.join(existing)}; give another path "
                            "or --overwrite")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"--output's folder {parent} is a file")
    return paths


def main(argv=None) -> List[dict]:
    args = get_args_parser().parse_args(argv)
    known = zoo_names()
    if args.models:
        unknown = [n for n in args.models if n not in known]
        if unknown:
            raise UserError(f"--models: no torchvision classification model named "
                            f"{', '.join(unknown)}; choose from {', '.join(known)}")
        names = list(args.models)
    else:
        # CNNs first: the transformers are the slowest, and torch-pruning may hang on them.
        names = [n for n in known if not is_transformer(n)] + [n for n in known if is_transformer(n)]
    if args.cnn_only:
        names = [n for n in names if not is_transformer(n)]
    unknown = [n for n in args.small_input_for if n not in known]
    if unknown:
        raise UserError(f"--small_input_for: no torchvision model named {', '.join(unknown)}")
    paths = output_paths(args.output, args.overwrite)
    torch.set_num_threads(args.threads)
    with_tp = not args.no_torch_pruning and torch_pruning_available()

    tiny, tiny_image = warm_up_model()
    prune_ours(tiny, tiny_image, args.rate, True, args.criterion)
    rows = []
    for name in names:
        start = time.perf_counter()
        row = run_model(name, args, with_tp)
        rows.append(row)
        cells = table_cells(row, with_tp)
        print(f"[{len(rows)}/{len(names)}] {name} {time.perf_counter() - start:.1f}s: "
              + " | ".join(c for c in cells[1:] if c), file=sys.stderr, flush=True)

    notes = [f"Random weights, BatchNorm statistics and affine parameters random, zero-initialised "
             f"parameters random; batch 1; rate "
             f"{args.rate} by {args.criterion} on every prunable group; {args.threads} torch "
             f"thread(s). FLOPs: 2 x multiply-accumulate, torch.utils.flop_counter.FlopCounterMode. "
             "Max rel. diff: max |masked - compact| / max |masked output|. Build s: ChannelPruner "
             "construction (graph build); compact s: step() + compact() (which runs its check: two "
             "forward passes, torch-pruning checks nothing; the CSV's check_s is its share). "
             "prunable (+res.): groups pruned block-internal (+ residual streams added by "
             "--prune_residual). torch-pruning: MetaPruner, MagnitudeImportance(p=1), the same "
             "ratio, classifier ignored; tp s = its DependencyGraph build + step (in a process of its "
             "own; each side has run the dense model once, untimed, before it is timed); tp diff = its "
             "pruned output against the same channels zeroed (n/a where it prunes other layer "
             "types)."]
    if args.repeats > 1:
        notes.append(f"Times: each side ran {args.repeats} times per model on fresh copies (ours "
                     "in this process, torch-pruning's in its worker); the run of median time is "
                     "shown.")
    if args.attention != "heads":
        notes.append("Attention: the per-head width pruned on our side (--attention=head_width: "
                     "query/key pairs and value dimensions, as many from every head; the heads "
                     "stay).")
    if args.small_input_for:
        notes.append(f"Models marked (small) ran at {args.small_size}x{args.small_size} to save "
                     f"time: {', '.join(n for n in names if n in args.small_input_for)}.")
    if not with_tp:
        notes.append("torch-pruning not run (" + ("--no_torch_pruning" if args.no_torch_pruning
                                                  else "not installed") + ").")
    table = markdown_table(HEADERS, [table_cells(r, with_tp) for r in rows])
    text = "\n\n".join(notes + [table] + (speed_comparison(rows) if with_tp else [])
                       + [summary(rows)]) + "\n"
    print(text, end="")
    if paths:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        write_text(paths[0], text)
        write_text(paths[1], csv_text(rows))
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER_FLAG:
        torch_pruning_worker(sys.argv[2:])
    else:
        cli.run(main)
