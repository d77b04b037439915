"""Rerun, from nothing, every experiment behind the README's results tables; record each run as
one JSON line; regenerate the README's tables (and the plots) from those records alone.

    python benchmarks/reproduce.py                  # run all, then plots and report (15-30 min here)
    python benchmarks/reproduce.py run --quick      # smoke run, 1 epoch each, into results/quick/
    python benchmarks/reproduce.py run --only baseline_lenet_5_caffe fpgm_40_lenet_5_caffe
    python benchmarks/reproduce.py report           # README.md tables from results/runs.jsonl
    python benchmarks/reproduce.py report --output -    # the same tables on stdout
    python benchmarks/reproduce.py plots            # PNGs under results/ (needs matplotlib)

Running and reporting are separate steps: `report` and `plots` read only the JSONL records (and,
for the weight histograms, the checkpoints the records name), so the README can be regenerated
without training anything. The report replaces only what lies between the README's
<!-- results:begin --> and <!-- results:end --> markers.

Epochs (full run; `--list` prints them) are chosen to fit well inside an hour on this 2-core
CPU: lenet_300_100 97 epochs at ~1 s, lenet_5 40 at 3-8 s, lenet_5_caffe 42 (20 baseline, 3x4
songhan, 10 fpgm) at 10-30 s, plus evaluation and timing: 15-30 minutes when the machine is idle.
Under heavy sharing an epoch can take 4x longer (the quick run here saw lenet_5_caffe at 110 s).
"""
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils import cli  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.flops import FLOP_CONVENTION, render_markdown  # noqa: E402
from utils.report import markdown_table  # noqa: E402

BEGIN_MARKER = "<!-- results:begin -->"
END_MARKER = "<!-- results:end -->"
RESULTS_DIR = ROOT / "results"
FULL_RECORDS = RESULTS_DIR / "runs.jsonl"
QUICK_DIR = RESULTS_DIR / "quick"
ACT_IMAGES = 1000            # test images over which Act% of a pruned model is measured
INFERENCE_BATCH = 256


# --- What is run --------------------------------------------------------------------------

@dataclass(frozen=True)
class Experiment:
    """One run. ``flags`` are the script's own flags for the full run, ``quick`` those for the
    smoke run; the runner adds the common ones (paths, seed, timing, no progress bars)."""
    id: str
    title: str
    script: str                       # "baseline" or "pruning"
    model: str
    flags: Tuple[str, ...]
    quick: Tuple[str, ...]
    parent: Optional[str] = None      # the experiment whose checkpoint is pruned
    reference: Optional[dict] = None  # the reference README's row
    paper: Optional[dict] = None      # the paper's figure
    in_results_table: bool = True     # False: sweep points, shown in the plot and kept table only


# Reference README: only its Top1 Acc figures are known here; every other cell is n/a.
# Han et al. 2015, Table 1 (error, parameters) and Tables 2-3 (total FLOP%); He et al. 2019.
HAN_LENET_300 = {"source": "Han et al. 2015", "dataset": "MNIST", "model": "LeNet-300-100"}
HAN_LENET_5 = {"source": "Han et al. 2015", "dataset": "MNIST", "model": "LeNet-5 (Caffe)"}

BASELINE = ("--dataset=mnist", "--learning_rate=0.001", "--batch_size=256")
LENET_5_BASELINE = ("--dataset=mnist", "--learning_rate=0.005", "--batch_size=256")
RETRAIN = ("--batch_size=256",)  # retraining rate: pruning.py's default, a tenth of the baseline's


def songhan(rate, rounds: int, epochs: int, *extra: str) -> Tuple[str, ...]:
    """pruning.py flags of a songhan run: --cut_rate, rounds, retraining epochs per round."""
    return ("--pruning_method=songhan", f"--cut_rate={rate}", f"--pruning_epochs={rounds}",
            f"--epochs={epochs}", *extra) + RETRAIN

EXPERIMENTS: List[Experiment] = [
    Experiment("baseline_lenet_300_100", "LeNet-300-100 baseline", "baseline", "lenet_300_100",
               BASELINE + ("--epochs=30",), BASELINE + ("--epochs=1",),
               reference={"top1": "98.13%"},
               paper={**HAN_LENET_300, "method": "none", "top1": "98.36% (1.64% error)",
                      "parameters": "267K"}),
    # The reference's tiny LeNet-5 (6 filters, dropout 0.5 twice) underfits at lr 0.001: 98.37%
    # after 30 epochs with train accuracy 94%; at 0.005 it reached 98.74%.
    Experiment("baseline_lenet_5", "LeNet-5 (reference's) baseline", "baseline", "lenet_5",
               LENET_5_BASELINE + ("--epochs=30",), LENET_5_BASELINE + ("--epochs=1",),
               reference={"top1": "98.12%"}),
    Experiment("baseline_lenet_5_caffe", "LeNet-5 (Caffe) baseline", "baseline", "lenet_5_caffe",
               BASELINE + ("--epochs=20",), BASELINE + ("--epochs=1",),
               paper={**HAN_LENET_5, "method": "none", "top1": "99.20% (0.80% error)",
                      "parameters": "431K"}),
    Experiment("songhan_50_lenet_300_100", "LeNet-300-100 songhan 50%", "pruning", "lenet_300_100",
               songhan(0.5, 1, 10), songhan(0.5, 1, 1),
               parent="baseline_lenet_300_100", reference={"method": "songhan, cut 0.5", "top1": "92.72%"}),
    Experiment("songhan_50_lenet_5", "LeNet-5 (reference's) songhan 50%", "pruning", "lenet_5",
               songhan(0.5, 1, 10), songhan(0.5, 1, 1),
               parent="baseline_lenet_5", reference={"method": "songhan, cut 0.5", "top1": "76.07%"}),
    Experiment("songhan_12x_lenet_300_100", "LeNet-300-100 songhan 12x", "pruning", "lenet_300_100",
               songhan(0.92, 4, 10, "--learning_rate=0.0003"), songhan(0.92, 2, 1),
               parent="baseline_lenet_300_100",
               paper={**HAN_LENET_300, "method": "magnitude, 12x", "top1": "98.41% (1.59% error)",
                      "parameters": "267K", "nonzero": "22K (8%)", "flops": "8% (Table 2)"}),
    Experiment("songhan_12x_lenet_5_caffe", "LeNet-5 (Caffe) songhan 12x", "pruning", "lenet_5_caffe",
               songhan(0.92, 3, 8), songhan(0.92, 2, 1),
               parent="baseline_lenet_5_caffe",
               paper={**HAN_LENET_5, "method": "magnitude, 12x", "top1": "99.23% (0.77% error)",
                      "parameters": "431K", "nonzero": "36K (8%)", "flops": "16% (Table 3)"}),
    Experiment("fpgm_40_lenet_5_caffe", "LeNet-5 (Caffe) fpgm 40%", "pruning", "lenet_5_caffe",
               ("--pruning_method=fpgm", "--cut_rate=0.4", "--epochs=10") + RETRAIN,
               ("--pruning_method=fpgm", "--cut_rate=0.4", "--epochs=1") + RETRAIN,
               parent="baseline_lenet_5_caffe",
               paper={"source": "He et al. 2019", "dataset": "CIFAR-10", "model": "ResNet-56",
                      "method": "FPGM", "top1": "-0.10 points", "flops": "-52.6%"}),
] + [
    # Accuracy against the fraction of weights kept: single-round songhan at a range of rates.
    Experiment(f"songhan_sweep_{round(rate * 100)}_lenet_300_100",
               f"LeNet-300-100 songhan {round(rate * 100)}%", "pruning", "lenet_300_100",
               songhan(rate, 1, 5), songhan(rate, 1, 1),
               parent="baseline_lenet_300_100", in_results_table=False)
    for rate in (0.7, 0.8, 0.9, 0.95, 0.97)
]

GROUPS = {
    "baselines": [e.id for e in EXPERIMENTS if e.script == "baseline"],
    "songhan": [e.id for e in EXPERIMENTS if "--pruning_method=songhan" in e.flags],
    "fpgm": [e.id for e in EXPERIMENTS if "--pruning_method=fpgm" in e.flags],
    "sweep": [e.id for e in EXPERIMENTS if not e.in_results_table],
}
BY_ID: Dict[str, Experiment] = {e.id: e for e in EXPERIMENTS}


def select(names: Optional[Sequence[str]]) -> List[Experiment]:
    """Experiments by id or group name, in the table's order (parents before children)."""
    if not names:
        return list(EXPERIMENTS)
    wanted = set()
    for name in names:
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in BY_ID:
            wanted.add(name)
        else:
            raise UserError(f"unknown experiment {name!r}; choose from groups "
                            f"{', '.join(GROUPS)} or: {', '.join(BY_ID)}")
    return [e for e in EXPERIMENTS if e.id in wanted]


# --- Records --------------------------------------------------------------------------------

def machine() -> dict:
    """What the timings were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version()}


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def relative(path) -> str:
    """Paths inside the repository as repository-relative, so records read the same anywhere."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def load_records(path: Path) -> List[dict]:
    if not Path(path).is_file():
        raise UserError(f"no records at {relative(path)}; run `python benchmarks/reproduce.py run` first")
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{relative(path)} line {number} is not JSON ({exc.msg}); "
                            "delete that line or rerun the experiment")
    return records


def latest(records: Sequence[dict]) -> Dict[str, dict]:
    """The last record of each experiment: a rerun supersedes, the history stays in the file."""
    found = {}
    for record in records:
        found[record["experiment"]] = record
    return found


def append_record(path: Path, record: dict):
    """One line per run, flushed to disk at once, so an interrupted run keeps earlier records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --- Running ---------------------------------------------------------------------------------

def experiment_argv(experiment: Experiment, quick: bool, data_dir: Path, checkpoint_dir: Path,
                    parent_path: Optional[str]) -> List[str]:
    argv = list(experiment.quick if quick else experiment.flags)
    if experiment.script == "baseline":
        argv = [f"--model={experiment.model}"] + argv
    else:
        argv = [f"--load_folder_model={parent_path}"] + argv
    return argv + [f"--data_dir={relative(data_dir)}", f"--checkpoint_dir={relative(checkpoint_dir)}",
                   "--seed=0", f"--inference_batch_size={INFERENCE_BATCH}",
                   f"--inference_sampling={10 if quick else 100}", "--device=cpu",
                   "--no_download", "--no_progress"]


def run_experiment(experiment: Experiment, argv: List[str], quick: bool, test_images) -> dict:
    """Run one script's main() in this process and turn what it returns into a record."""
    import baseline
    import pruning
    from utils.checkpoint import build_model, load_checkpoint
    from utils.flops import model_table

    script = {"baseline": baseline, "pruning": pruning}[experiment.script]
    print(f"\n=== {experiment.id}: python {experiment.script}.py {shlex.join(argv)}", flush=True)
    started = datetime.now(timezone.utc)
    wall = time.perf_counter()
    result = script.main(argv)
    wall = time.perf_counter() - wall

    loaded = load_checkpoint(result["path"])
    model = build_model(loaded)
    table = model_table(model, test_images)
    record = {
        "experiment": experiment.id,
        "quick": quick,
        "command": f"python {experiment.script}.py {shlex.join(argv)}",
        "script": f"{experiment.script}.py",
        "argv": argv,
        "flags": loaded["flags"],
        "model": loaded["config"]["model"],
        "widths": loaded["config"]["widths"],
        "dataset": loaded["dataset"],
        "method": (loaded.get("pruning") or {}).get("method"),
        "pruning": loaded.get("pruning"),
        "checkpoint": relative(loaded["path"]),
        "checkpoint_bytes": os.path.getsize(loaded["path"]),
        "parent": loaded.get("parent"),
        "parameters": table["total"]["weights"],
        "nonzero": table["total"]["nonzero"],
        "flops": table["total"]["flops"],
        "nonzero_flops": table["total"]["nonzero_flops"],
        "layers": table,
        "wall_seconds": wall,
        "machine": machine(),
        "torch_version": loaded.get("torch_version"),
        "git": git_commit(),
        "date": started.isoformat(timespec="seconds"),
    }
    if experiment.script == "baseline":
        record.update(top1_acc=result["top1_acc"], train_seconds=result["train_seconds"],
                      inference=result["inference"])
    else:  # pruning.py times the parent and the pruned model in the same process
        before, after = result["before"], result["after"]
        record.update(top1_acc=after["top1_acc"], train_seconds=result["train_seconds"],
                      inference=after["throughput"], latency=after["latency"],
                      parent_top1_acc=before["top1_acc"], parent_parameters=before["parameters"],
                      parent_flops=before["flops"], parent_inference=before["throughput"],
                      parent_latency=before["latency"], parent_checkpoint_bytes=result["sizes"]["before"],
                      speedup=before["throughput"]["median_ms"] / after["throughput"]["median_ms"])
    return record


@contextlib.contextmanager
def working_directory(path: Path):
    """The scripts read their path flags relative to the working directory, and the recorded
    commands are meant to be pasted at the repository root: run them from there."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run(args):
    import pruners
    import torch
    from utils.data import load_dataset

    chosen = select(args.only)
    missing = sorted({flag.split("=", 1)[1] for e in chosen for flag in e.flags
                      if flag.startswith("--pruning_method=")} - set(pruners.pruner_names()))
    if missing:
        raise UserError(f"pruning method(s) {', '.join(missing)} not available in this checkout; "
                        "run --only baselines, or wait for them to land")
    records_path = Path(args.records)
    known = latest(load_records(records_path)) if records_path.is_file() else {}
    _, test, _ = load_dataset("mnist", args.data_dir, download=False)
    test_images = test.images[:ACT_IMAGES]
    torch.set_num_threads(args.threads or torch.get_num_threads())

    print(f"{len(chosen)} experiments -> {relative(records_path)}"
          f"{' (quick smoke run)' if args.quick else ''}")
    with working_directory(ROOT):
        run_all(chosen, args, records_path, known, test_images)


def run_all(chosen, args, records_path, known, test_images):
    for experiment in chosen:
        parent_path = None
        if experiment.parent:
            parent = known.get(experiment.parent)
            if parent is None or not (ROOT / parent["checkpoint"]).is_file():
                raise UserError(f"{experiment.id} prunes {experiment.parent}'s checkpoint, which "
                                f"{relative(records_path)} does not hold; run --only {experiment.parent}")
            parent_path = parent["checkpoint"]
        argv = experiment_argv(experiment, args.quick, Path(args.data_dir), Path(args.checkpoint_dir),
                               parent_path)
        record = run_experiment(experiment, argv, args.quick, test_images)
        append_record(records_path, record)
        known[experiment.id] = record
        print(f"recorded {experiment.id}: top-1 {record['top1_acc']:.2%}, "
              f"{record['wall_seconds']:.0f} s", flush=True)


# --- Reporting -------------------------------------------------------------------------------

NA = "n/a"
RESULT_HEADERS = ["Experiment", "Source", "Dataset", "Model", "Prune Method", "Top1 Acc",
                  "Parameters", "training time", "inference time", "Nonzero", "FLOPs", "File size",
                  "Speed-up"]


def _kb(size: int) -> str:
    return f"{size / 1024:,.1f} KB"


def _epochs(count: int) -> str:
    return f"{count} epoch" + ("" if count == 1 else "s")


def method_label(record: dict) -> str:
    """What was done, from the flags the checkpoint recorded."""
    flags = record["flags"]
    if not record.get("method"):
        return f"none, {_epochs(flags['epochs'])}"
    rounds = flags.get("pruning_epochs", 1)
    schedule = (f"{rounds} rounds x {_epochs(flags['epochs'])}" if rounds > 1
                else _epochs(flags["epochs"]))
    if record["method"] == "fpgm":
        return f"fpgm, {flags['cut_rate']:.0%} of filters, {schedule}"
    return f"{record['method']}, cut {flags['cut_rate']}, {schedule}"


def ours_row(experiment: Experiment, record: Optional[dict]) -> list:
    if record is None:
        return [experiment.title, "ours", "mnist", experiment.model, "not run yet"] + [NA] * 8
    pruned = record.get("method") is not None
    nonzero = f"{record['nonzero']:,} ({record['nonzero'] / record['parameters']:.1%})"
    flops = f"{record['nonzero_flops']:,}"
    size = _kb(record["checkpoint_bytes"])
    speedup = "1.00x"
    if pruned:
        flops += f" ({record['nonzero_flops'] / record['parent_flops'] - 1:+.1%})"
        size += f" ({record['parent_checkpoint_bytes'] / record['checkpoint_bytes']:.1f}x smaller)"
        speedup = f"{record['speedup']:.2f}x"
    timing = record["inference"]
    return [experiment.title, "ours", record["dataset"], record["model"], method_label(record),
            f"{record['top1_acc']:.2%}", f"{record['parameters']:,}",
            f"{record['train_seconds']:.1f} s", f"{timing['median_ms']:.2f} ms",
            nonzero, flops, size, speedup]


def reference_row(experiment: Experiment) -> list:
    ref = experiment.reference
    return [experiment.title, "reference", "mnist", experiment.model, ref.get("method", "none"),
            ref["top1"]] + [NA] * 7


def paper_row(experiment: Experiment) -> list:
    paper = experiment.paper
    return [experiment.title, paper["source"], paper["dataset"], paper["model"], paper["method"],
            paper["top1"], paper.get("parameters", NA), NA, NA, paper.get("nonzero", NA),
            paper.get("flops", NA), NA, NA]


def kept_rows(found: Dict[str, dict]) -> list:
    """(model, weights kept, accuracy, record) of every songhan run and of its baseline."""
    rows = []
    for experiment in EXPERIMENTS:
        record = found.get(experiment.id)
        if record is None or record.get("method") not in (None, "songhan"):
            continue
        rows.append((record["model"], record["nonzero"] / record["parameters"], record["top1_acc"],
                     experiment, record))
    return sorted(rows, key=lambda r: (r[0], -r[1]))


def describe_machines(records: Sequence[dict]) -> str:
    seen = []
    for record in records:
        m = record["machine"]
        text = (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
                f"torch {record['torch_version']}")
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def render_report(records: Sequence[dict], plots: Sequence[str] = (),
                  source: str = "results/runs.jsonl") -> str:
    """The README's results section, from records alone. ``plots``: image paths to show;
    ``source``: the records file, named in the text."""
    found = latest(records)
    used = [found[e.id] for e in EXPERIMENTS if e.id in found]
    lines = []
    if any(r.get("quick") for r in used):
        lines += ["**Quick smoke run (an epoch or two each): these figures only show that the "
                  "pipeline runs, not what the methods reach.**", ""]
    if used:
        dates = sorted(r["date"][:10] for r in used)
        lines += [f"Measured by `python benchmarks/reproduce.py` on {describe_machines(used)}, "
                  f"{dates[0]}{' to ' + dates[-1] if dates[-1] != dates[0] else ''}. Each *ours* "
                  f"row is one record of `{source}`; *reference* rows are the reference "
                  f"README's, paper rows the papers' own figures; n/a: not reported.", ""]

    rows = []
    for experiment in EXPERIMENTS:
        if not experiment.in_results_table:
            continue
        if experiment.reference:
            rows.append(reference_row(experiment))
        if experiment.paper:
            rows.append(paper_row(experiment))
        rows.append(ours_row(experiment, found.get(experiment.id)))
    numeric = {"Top1 Acc", "Parameters", "training time", "inference time", "Nonzero", "FLOPs",
               "File size", "Speed-up"}
    lines += [markdown_table(RESULT_HEADERS, rows,
                             align=["right" if h in numeric else "left" for h in RESULT_HEADERS]), ""]
    lines += [f"Parameters and Nonzero count weights and biases. FLOPs: those of the nonzero "
              f"weights (songhan) or of the smaller model (fpgm) for one image; in parentheses, "
              f"against the unpruned model. {FLOP_CONVENTION}. training time: the baseline's "
              f"training, or pruning plus retraining. inference time: median of timed forward "
              f"passes of a batch of {INFERENCE_BATCH} test images after warm-up (eval mode, "
              f"inference_mode); speed-up: the unpruned model's median over the pruned one's, "
              f"both timed in the same pruning.py process. File size: the checkpoint on disk "
              f"(pruned tensors stored as bitmask + values).", ""]

    kept = kept_rows(found)
    if kept:
        lines += ["#### Accuracy against the fraction of weights kept (songhan)", ""]
        lines += [markdown_table(
            ["Model", "Weights kept", "Top1 Acc", "Prune Method"],
            [[model, f"{fraction:.1%}", f"{acc:.2%}", method_label(record)]
             for model, fraction, acc, _, record in kept],
            align=["left", "right", "right", "left"]), ""]

    for path in plots:
        lines += [f"![{Path(path).stem.replace('_', ' ')}]({path})", ""]

    if used:
        lines += ["#### Layer tables (calFLOP.py)", ""]
        for experiment in EXPERIMENTS:
            record = found.get(experiment.id)
            if record is None or not experiment.in_results_table:
                continue
            lines += [f"**{experiment.title}**: `{Path(record['checkpoint']).name}`, "
                      f"top-1 {record['top1_acc']:.2%}", "", render_markdown(record["layers"]).rstrip(), ""]

        lines += ["#### Commands behind each row", "", "```"]
        lines += [record["command"] for record in used]
        lines += ["```", ""]
    return "\n".join(lines).rstrip() + "\n"


def replace_between_markers(text: str, block: str) -> str:
    """``text`` with what lies between the results markers replaced by ``block``; everything
    outside them untouched."""
    begins, ends = text.count(BEGIN_MARKER), text.count(END_MARKER)
    if begins != 1 or ends != 1:
        raise UserError(f"the README needs exactly one {BEGIN_MARKER} and one {END_MARKER} "
                        f"(found {begins} and {ends}); put them where the results go")
    start = text.index(BEGIN_MARKER) + len(BEGIN_MARKER)
    end = text.index(END_MARKER)
    if end < start:
        raise UserError(f"{END_MARKER} comes before {BEGIN_MARKER} in the README")
    return text[:start] + "\n" + block.rstrip("\n") + "\n" + text[end:]


def write_atomically(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def existing_plots(out_dir: Path, shown_in: Path) -> List[str]:
    """Plot files already made, as paths relative to the markdown file that shows them."""
    return [os.path.relpath(out_dir / name, shown_in.resolve().parent)
            for name in PLOT_FILES if (out_dir / name).is_file()]


def report(args):
    records = load_records(Path(args.records))
    target = Path(args.readme)
    shown_in = Path(args.output) if args.output and args.output != "-" else target
    block = render_report(records, existing_plots(Path(args.plots_dir), shown_in),
                          source=relative(args.records))
    if args.output == "-":
        sys.stdout.write(block)
    elif args.output:
        write_atomically(Path(args.output), block)
        print(f"wrote {args.output}")
    else:
        if not target.is_file():
            raise UserError(f"no {target}; give --output FILE (or - for stdout) instead")
        write_atomically(target, replace_between_markers(target.read_text(), block))
        print(f"updated the results section of {relative(target)}")


# --- Plots (matplotlib is optional) -----------------------------------------------------------

PLOT_FILES = ("weight_histogram.png", "accuracy_vs_weights_kept.png")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("the plots need matplotlib, an optional dependency: "
                        "pip install matplotlib (everything else works without it)")
    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt
    return plt


def plot_weight_histogram(before, after, layer: str, title: str, path: Path):
    """Han et al. 2015, Figure 4's shape: the layer's weights before pruning, and its surviving
    (nonzero) weights after pruning and retraining, which leave a gap around zero."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    survivors = after[after != 0]
    for ax, values, label in ((axes[0], before.flatten(), f"before pruning ({before.numel():,} weights)"),
                              (axes[1], survivors, f"after pruning + retraining "
                                                   f"({survivors.numel():,} nonzero)")):
        ax.hist(values.numpy(), bins=120, color="tab:blue")
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        ax.set_title(label, fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_kept(kept, path: Path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for model in sorted({row[0] for row in kept}):
        points = sorted((fraction, acc) for m, fraction, acc, _, _ in kept if m == model)
        ax.plot([100 * f for f, _ in points], [100 * a for _, a in points], marker="o", label=model)
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100) if t >= 100 * min(row[1] for row in kept) / 2]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("weights kept (%, log scale)")
    ax.set_ylabel("top-1 test accuracy (%)")
    ax.set_title("songhan magnitude pruning on MNIST")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plots(args) -> List[Path]:
    from utils.checkpoint import load_checkpoint
    _pyplot()  # fail early, before reading any checkpoint
    found = latest(load_records(Path(args.records)))
    out_dir = Path(args.plots_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    if args.hist_experiment not in BY_ID or not BY_ID[args.hist_experiment].parent:
        raise UserError(f"--hist_experiment must be a pruning experiment: "
                        f"{', '.join(e.id for e in EXPERIMENTS if e.parent)}")
    pruned = found.get(args.hist_experiment)
    parent = found.get(BY_ID[args.hist_experiment].parent)
    files_there = pruned and parent and all((ROOT / r["checkpoint"]).is_file() for r in (parent, pruned))
    if files_there:
        weights = []
        for record in (parent, pruned):
            state = load_checkpoint(str(ROOT / record["checkpoint"]))["state_dict"]
            key = f"{args.hist_layer}.weight"
            if key not in state:
                raise UserError(f"{record['model']} has no layer {args.hist_layer!r}")
            weights.append(state[key].float())
        path = out_dir / PLOT_FILES[0]
        plot_weight_histogram(*weights, args.hist_layer,
                              f"{pruned['model']} {args.hist_layer}: {method_label(pruned)}", path)
        made.append(path)
    else:
        print(f"no weight histogram: {args.hist_experiment} and its baseline are not both "
              f"recorded with their checkpoints on disk")
    kept = kept_rows(found)
    if kept:
        path = out_dir / PLOT_FILES[1]
        plot_accuracy_vs_kept(kept, path)
        made.append(path)
    for path in made:
        print(f"wrote {relative(path)}")
    return made


# --- Command line -------------------------------------------------------------------------------

def get_args_parser():
    parser = cli.new_parser(__doc__.splitlines()[0])
    parser.add_argument("step", nargs="?", choices=("all", "run", "report", "plots"), default="all",
                        help="all = run, then plots, then report")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: an epoch or two each, records, checkpoints and report "
                             "under results/quick/ instead of the README's")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help=f"experiments or groups ({', '.join(GROUPS)}) to run; default all")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--records", default=None,
                        help="JSONL of runs (default results/runs.jsonl, quick: results/quick/runs.jsonl)")
    parser.add_argument("--data_dir", default=str(ROOT / "data"), help="where MNIST is")
    parser.add_argument("--checkpoint_dir", default=None,
                        help="where checkpoints go (default checkpoints/, quick: results/quick/checkpoints)")
    parser.add_argument("--threads", type=cli.positive_int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--readme", default=str(ROOT / "README.md"),
                        help="file whose results markers the report replaces")
    parser.add_argument("--output", default=None,
                        help="write the report here instead of into --readme; - for stdout")
    parser.add_argument("--plots_dir", default=None, help="where PNGs go (default results/, quick: results/quick/)")
    parser.add_argument("--hist_experiment", default="songhan_12x_lenet_300_100",
                        help="pruned experiment whose layer the weight histogram shows")
    parser.add_argument("--hist_layer", default="fc1", help="layer of the weight histogram")
    return parser


def resolve_defaults(args):
    base = QUICK_DIR if args.quick else RESULTS_DIR
    args.records = args.records or str(base / "runs.jsonl")
    args.checkpoint_dir = args.checkpoint_dir or str(QUICK_DIR / "checkpoints" if args.quick
                                                     else ROOT / "checkpoints")
    args.plots_dir = args.plots_dir or str(base)
    if args.quick and args.output is None and args.step in ("all", "report"):
        args.output = str(QUICK_DIR / "report.md")  # a smoke run never rewrites the README
    return args


def main(argv=None):
    args = resolve_defaults(get_args_parser().parse_args(argv))
    if args.list:
        epochs = {}
        for experiment in EXPERIMENTS:
            flags = experiment.quick if args.quick else experiment.flags
            print(f"{experiment.id:<32} python {experiment.script}.py {' '.join(flags)}")
            values = dict(f.split("=", 1) for f in flags if "=" in f)
            count = int(values["--epochs"]) * int(values.get("--pruning_epochs", 1))
            epochs[experiment.model] = epochs.get(experiment.model, 0) + count
        print("training epochs in all: " + ", ".join(f"{m} {n}" for m, n in epochs.items()))
        return None
    if args.step in ("all", "run"):
        run(args)
    if args.step in ("all", "plots"):
        try:
            plots(args)
        except UserError as exc:
            if args.step == "plots":
                raise
            print(f"plots skipped: {exc}")
    if args.step in ("all", "report"):
        report(args)
    return args


if __name__ == "__main__":
    cli.run(main)
