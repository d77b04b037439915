"""Seconds to build the channel-dependency graph and to step + compact, before and after a change.

    python benchmarks/graph_speed.py --baseline 14b5e8d                  # the default models
    python benchmarks/graph_speed.py --baseline main --torch_pruning --rounds 5
    python benchmarks/graph_speed.py --baseline main --check_only --models resnet18 densenet121

Two worker processes hold the two versions of the toolkit: the working tree this script lives in
("new") and the commit --baseline, extracted with git archive into a temporary folder ("old");
with --torch_pruning a third runs Torch-Pruning's MetaPruner as benchmarks/zoo.py does. Every
round asks each worker in turn for the same model (the order of the sides alternates between
rounds), so load from other processes on a shared machine falls on every side alike; a worker
builds the model (untimed) and then times what benchmarks/zoo.py times: ChannelPruner
construction (graph build) and step() + compact() (l1norm, --rate, compaction's own check
included), block-internal and with prune_residual. Printed per model: the medians over rounds of
each side's total seconds, and the median of the rounds' own old/new ratios (a speed-up above 1
means the new code is faster); the last lines give the geometric means.

Each worker also reports a digest of the graph it built (group names, sets, writers, flags,
reasons and units; every recorded tensor use; set_of; normalisations and sizes) and of the
compact model (every tensor's bytes, every module's widths): the two versions must agree on
every model, or the script says which part differs and exits with code 1. --check_only does one
round and prints no speed-up.
Times are wall-clock seconds with --threads torch threads on every side.
"""
import hashlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
WORKER_FLAG = "--_graph_speed_worker"
RESULT = "GRAPH_SPEED "
DEFAULT_MODELS = ["mnasnet0_75", "mobilenet_v2", "resnet50", "efficientnet_b0", "densenet121",
                  "regnet_y_400mf"]


# ---- inside a worker: one toolkit version (or torch-pruning) ------------------------------------

def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _listed(ids) -> list:
    """Record ids as a list (a tensor since TensorUse.ids became one, a list before)."""
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def graph_digest(graph, small) -> Dict[str, str]:
    """Per part of the graph, a hash of everything a user of the graph can see."""
    return {
        "groups": _digest([[g.name, g.sets, list(g.writers), g.residual, g.fixed, g.reason,
                            g.units] for g in graph.groups]),
        "uses": _digest([[u.key, u.dim, _listed(u.ids), u.writes, u.layer, u.sets]
                         for u in graph.uses]),
        "set_of": _digest(sorted([list(k), v] for k, v in graph.set_of.items())),
        "normalizations": _digest([[n.module, n.dim, n.ids, n.sets] for n in graph.normalizations]),
        "sizes": _digest([[s.module, s.attribute, s.ids, s.sets] for s in graph.sizes]),
        "compact_model": _state_digest(small),
    }


def _state_digest(model) -> str:
    """Every state_dict entry's name, shape and bytes, and every module's class and integer
    attributes (the widths compaction sets)."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(f"{key}{list(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    for name, module in model.named_modules():
        widths = sorted((k, v) for k, v in vars(module).items() if type(v) in (int, tuple))
        digest.update(f"{name}{type(module).__name__}{widths}".encode())
    return digest.hexdigest()[:16]


def time_ours(name: str, size: int, rate: float, residual: bool) -> dict:
    from benchmarks.zoo import build_model
    from pruners.channel import ChannelPruner
    model, image = build_model(name, size)
    start = time.perf_counter()
    pruner = ChannelPruner(model, (image,), criterion="l1norm", rate=rate, prune_residual=residual)
    built = time.perf_counter()
    pruner.step()
    small = pruner.compact()
    done = time.perf_counter()
    return {"build_s": built - start, "compact_s": done - built,
            "digest": graph_digest(pruner.graph, small)}


def time_torch_pruning(name: str, size: int, rate: float) -> dict:
    from benchmarks.zoo import run_torch_pruning
    out = run_torch_pruning(name, size, rate)
    return {"build_s": out["build_s"], "compact_s": out["prune_s"]}


def worker(argv: List[str]) -> None:
    """Answers one JSON request per stdin line with one RESULT line on stdout."""
    tree, side, threads = argv[0], argv[1], int(argv[2])
    sys.path.insert(0, tree)
    import torch
    torch.set_num_threads(threads)
    from benchmarks.zoo import prune_ours, warm_up_model
    tiny, tiny_image = warm_up_model()
    prune_ours(tiny, tiny_image, 0.3, True, "l1norm")  # one-time costs out of the first figure
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if side == "tp":
                out = time_torch_pruning(request["model"], request["size"], request["rate"])
            else:
                out = time_ours(request["model"], request["size"], request["rate"],
                                request["residual"])
        except Exception as exc:  # noqa: BLE001 - reported as the row's failure
            out = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        print(RESULT + json.dumps(out), flush=True)


# ---- the driver ----------------------------------------------------------------------------------

class Worker:
    def __init__(self, tree: Path, side: str, threads: int):
        self.side = side
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), WORKER_FLAG, str(tree), side,
             str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(tree))

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
        raise RuntimeError(f"the {self.side} worker ended without an answer")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def extract(revision: str, folder: Path) -> None:
    """The tree of ``revision`` (a commit, branch or tag of this repository) under ``folder``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)


def get_args_parser():
    from utils import cli
    parser = cli.new_parser(__doc__)
    parser.add_argument("--baseline", default="main",
                        help="git revision of the old version (default: main)")
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS,
                        help=f"torchvision model names (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--image_size", type=cli.positive_int, default=224,
                        help="input height and width (default: 224; inception_v3 always 299)")
    parser.add_argument("--rate", type=cli.fraction, default=0.3,
                        help="fraction of every prunable group's channels removed (default: 0.3)")
    parser.add_argument("--rounds", type=cli.positive_int, default=3,
                        help="rounds over every model and side (default: 3)")
    parser.add_argument("--threads", type=cli.positive_int, default=1,
                        help="torch CPU threads of every worker (default: 1)")
    parser.add_argument("--torch_pruning", action="store_true",
                        help="also time Torch-Pruning's MetaPruner (build + step, as "
                             "benchmarks/zoo.py does) beside ours")
    parser.add_argument("--check_only", action="store_true",
                        help="one round: compare the two versions' graphs, print no speed-up")
    return parser


def input_size(name: str, args) -> int:
    """--image_size, or the size a model needs (benchmarks/zoo.py's: 299 for inception_v3)."""
    from benchmarks.zoo import NATIVE_SIZES
    return NATIVE_SIZES.get(name, args.image_size)


def geometric_mean(values: List[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    rounds = 1 if args.check_only else args.rounds
    with tempfile.TemporaryDirectory() as temporary:
        old_tree = Path(temporary)
        extract(args.baseline, old_tree)
        workers = [Worker(old_tree, "old", args.threads), Worker(ROOT, "new", args.threads)]
        if args.torch_pruning:
            workers.append(Worker(ROOT, "tp", args.threads))
        totals: Dict[tuple, List[float]] = {}
        mismatches = []
        try:
            for round_index in range(rounds):
                order = workers if round_index % 2 == 0 else workers[::-1]
                for name in args.models:
                    answers = {}
                    for w in order:
                        per_variant = []
                        for residual in ((False, True) if w.side != "tp" else (False,)):
                            answer = w.ask(model=name, size=input_size(name, args), rate=args.rate,
                                           residual=residual)
                            if "error" in answer:
                                raise SystemExit(f"{name} ({w.side}): {answer['error']}")
                            per_variant.append(answer)
                        answers[w.side] = per_variant
                        total = sum(a["build_s"] + a["compact_s"] for a in per_variant)
                        totals.setdefault((name, w.side), []).append(total)
                    for variant, (old, new) in enumerate(zip(answers["old"], answers["new"])):
                        differ = [k for k in old["digest"] if old["digest"][k] != new["digest"][k]]
                        if differ:
                            mismatches.append(f"{name} ({'residual' if variant else 'block'}): "
                                              f"{', '.join(differ)} differ")
                    print(f"round {round_index + 1}/{rounds} {name}: " + ", ".join(
                        f"{w.side} {totals[(name, w.side)][-1]:.3f}s" for w in workers),
                        file=sys.stderr, flush=True)
        finally:
            for w in workers:
                w.close()
    print(f"Graph build + step + compact (l1norm, rate {args.rate}, block-internal + "
          f"prune_residual), seconds, median of {rounds} round(s), {args.threads} thread(s), "
          f"input {args.image_size}; old = {args.baseline}, new = working tree"
          + ("; tp = Torch-Pruning MetaPruner build + step (one variant)" if args.torch_pruning
             else ""))
    header = ["model", "old s", "new s", "speed-up"]
    if args.torch_pruning:
        header += ["tp s", "new/tp"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    speedups, versus_tp = [], []
    for name in args.models:
        old, new = totals[(name, "old")], totals[(name, "new")]
        speedup = statistics.median(o / n for o, n in zip(old, new))
        speedups.append(speedup)
        cells = [name, f"{statistics.median(old):.3f}", f"{statistics.median(new):.3f}",
                 f"{speedup:.2f}x"]
        if args.torch_pruning:
            tp = totals[(name, "tp")]
            # Ours does two variants per round, Torch-Pruning one: compare ours per variant.
            ratio = statistics.median(n / 2 / t for n, t in zip(new, tp))
            versus_tp.append(ratio)
            cells += [f"{statistics.median(tp):.3f}", f"{ratio:.2f}"]
        print("| " + " | ".join(cells) + " |")
    if not args.check_only:
        print(f"Speed-up old/new: geometric mean {geometric_mean(speedups):.2f}x, "
              f"median {statistics.median(speedups):.2f}x over {len(speedups)} models")
    if versus_tp:
        print(f"Ours per variant / Torch-Pruning: geometric mean {geometric_mean(versus_tp):.2f}, "
              f"no slower on {sum(r <= 1 for r in versus_tp)}/{len(versus_tp)} models")
    if mismatches:
        print("GRAPHS DIFFER: " + "; ".join(mismatches))
        return 1
    print(f"Graphs and compact models identical on all {len(args.models)} models (both variants).")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER_FLAG:
        worker(sys.argv[2:])
    else:
        sys.path.insert(0, str(ROOT))
        sys.exit(main())
