"""Training curves from a run's metrics file: loss, accuracies and learning rate against the
run's global epoch, with a vertical line where each phase (training, a pruning round, soft
pruning, fine-tuning) begins, so what a pruning step cost and what retraining won back are
visible at a glance. matplotlib is optional; nothing else needs it.

    python -m utils.reporting.curves checkpoints/run.metrics.jsonl [--out curves.png]
"""
from pathlib import Path
from typing import List, Optional

from utils import cli
from utils.errors import UserError
from utils.files import PathLike, atomic_write
from utils.training.runlog import read_rows

PANELS = (
    ("loss", ("loss", "val_loss", "test_loss"), 1.0),
    ("accuracy (%)", ("train_acc", "val_acc", "test_acc"), 100.0),
    ("learning rate", ("learning_rate",), 1.0),
)
LABELS = {"loss": "train loss", "val_loss": "validation loss", "test_loss": "test loss",
          "train_acc": "train", "val_acc": "validation", "test_acc": "test",
          "learning_rate": "learning rate"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("the training-curves plot needs matplotlib, an optional dependency: "
                        "pip install matplotlib") from None
    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt
    return plt


def _series(rows: List[dict], key: str, scale: float):
    """(steps, values) for a metric; None (a non-finite value as logged) becomes a gap."""
    steps, values = [], []
    for row in rows:
        if key in row:
            value = row[key]
            steps.append(row["step"])
            values.append(float("nan") if value is None else float(value) * scale)
    return steps, values


def _phase_starts(rows: List[dict]):
    starts, previous = [], None
    for row in rows:
        if row["phase"] != previous:
            starts.append((row["step"], row["phase"]))
            previous = row["phase"]
    return starts


def plot_curves(metrics_path: PathLike, out_path: Optional[PathLike] = None) -> Path:
    """Writes the PNG (default: the metrics file's name with ``.png``) whole or not at all and
    returns its path."""
    metrics_path = Path(metrics_path)
    out_path = metrics_path.with_suffix(".png") if out_path is None else Path(out_path)
    if out_path.is_dir():
        raise UserError(f"{out_path} is a folder; give a .png file name to write the plot to")
    rows = read_rows(metrics_path)
    if not rows:
        raise UserError(f"{metrics_path} has no rows yet; the run has not finished an epoch")
    for key in (key for _, keys, _ in PANELS for key in keys):
        for row in rows:
            value = row.get(key)
            if value is not None and not isinstance(value, (int, float)):
                raise UserError(f"{metrics_path}: {key} at step {row['step']} is not a number "
                                f"({value!r})")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(PANELS), 1, sharex=True, figsize=(8, 8.5))
    few = len(rows) <= 20  # markers show single epochs on short runs, clutter on long ones
    for ax, (title, keys, scale) in zip(axes, PANELS, strict=True):
        drawn = False
        for key in keys:
            steps, values = _series(rows, key, scale)
            if steps:
                ax.plot(steps, values, marker="o" if few else None, markersize=3,
                        label=LABELS[key])
                drawn = True
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, f"no {' / '.join(keys)} logged", transform=ax.transAxes,
                    ha="center", va="center", color="gray")
        elif len(keys) > 1:
            ax.legend(loc="best", fontsize=8)
    axes[-1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[-1].set_xlabel("epoch (over the whole run)")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))

    for index, (step, phase) in enumerate(_phase_starts(rows)):
        if index:  # the first phase starts at the left edge; a line there marks nothing
            for ax in axes:
                ax.axvline(step - 0.5, color="gray", linestyle="--", linewidth=0.8)
        # Upright names beside each line: many short pruning rounds would overlap side by side.
        axes[0].annotate(phase, xy=(step - 0.5, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(2, -3), textcoords="offset points", fontsize=8, ha="left",
                         va="top", rotation=90, color="dimgray")
    fig.suptitle(metrics_path.name, y=0.995)
    fig.tight_layout()
    try:
        with atomic_write(out_path) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out_path


def get_args_parser():
    parser = cli.new_parser(__doc__)
    parser.add_argument("metrics", help="a run's .jsonl metrics file")
    parser.add_argument("--out", default=None,
                        help="PNG to write (default: the metrics file's name with .png)")
    return parser


def main(argv=None) -> Path:
    args = get_args_parser().parse_args(argv)
    path = plot_curves(args.metrics, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    cli.run(main)
