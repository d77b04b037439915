"""The plots under results/, from the records (and, for the weight histogram, the checkpoints the
records name): Han et al. 2015 Figure 4's weight histogram before and after pruning, and accuracy
against the fraction of weights kept. matplotlib is optional; nothing else needs it."""
from pathlib import Path
from typing import List

from benchmarks.experiments import BY_ID, EXPERIMENTS
from benchmarks.records import ROOT, latest, load_records, relative
from benchmarks.results_report import PLOT_FILES, kept_rows, method_label
from utils.errors import UserError
from utils.files import atomic_write


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("the plots need matplotlib, an optional dependency: "
                        "pip install matplotlib (everything else works without it)")
    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path):
    """A PNG written whole or not at all, with the usual umask permissions."""
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)


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
    _save(fig, path)
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
    _save(fig, path)
    plt.close(fig)


def plots(args) -> List[Path]:
    from utils.checkpoints import load_checkpoint
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


