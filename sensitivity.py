"""Sensitivity of every layer to pruning, as Han et al. 2015 (Figure 6) and Li et al. 2017
(Figure 2) measure it: each layer (or channel group) pruned alone at a grid of rates, evaluated
without retraining on the validation split; writes a CSV and a plot, and proposes per-layer
rates in the --layer_rates form pruning.py takes.

    python sensitivity.py --load_folder_model='lenet_5_caffe_mnist_acc_*_epoch_20' --val_split=0.1
    python sensitivity.py --load_folder_model=... --method=fpgm --max_drop=0.005
    python sensitivity.py --load_folder_model=... --target_compression=12

The test split is never read: the validation split is the one the checkpoint recorded
(baseline.py --val_split), or else --val_split images taken from the training split.
"""
from utils.interrupts import quiet_interrupt

with quiet_interrupt():
    import csv
    import io
    import json
    from pathlib import Path

    import pruners
    from pruners.sensitivity import MAGNITUDE, Sensitivity, default_rates, format_rates, plot, propose
    import script_setup
    from utils import checkpoints, cli
    from utils.data import held_out, split_validation
    from utils.errors import UserError
    from utils.files import atomic_write, check_writable_dir, write_text

FILTER_METHODS = [name for name in pruners.pruner_names()
                  if getattr(pruners.pruner_class(name), "structured", False)]


def rate_grid(text: str):
    """START:STOP:STEP (inclusive) or a comma-separated list; every rate in [0, 1)."""
    import argparse
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            count = int(round((stop - start) / step)) + 1
            rates = [round(start + i * step, 10) for i in range(count)]
        else:
            rates = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:STEP or a list of rates, got {text!r}")
    if not rates or not all(0 <= r < 1 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be in [0, 1), got {text!r}")
    return sorted(set(rates))


def get_args_parser():
    parser = cli.new_parser(__doc__)
    script_setup.add_model_args(parser, from_checkpoint=True)
    parser.add_argument("--method", choices=[MAGNITUDE] + FILTER_METHODS, default=MAGNITUDE,
                        help="magnitude: Han et al.'s element-wise pruning of each conv/linear "
                             "weight; a filter method: each prunable channel group, filters "
                             "chosen by that method's criterion")
    parser.add_argument("--rates", type=rate_grid, default=default_rates(),
                        help="rates to try per layer: START:STOP:STEP or a list "
                             "(default 0:0.95:0.05)")
    parser.add_argument("--val_split", type=cli.float_in(0.0, 1.0, low_open=True, high_open=True),
                        default=None,
                        help="when the checkpoint recorded no validation split: this fraction of "
                             "the training images (chosen by --seed), on which the model trained, "
                             "so the curves are optimistic; train with baseline.py --val_split "
                             "to hold them out")
    parser.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0,
                        help="seed of the --val_split choice")
    parser.add_argument("--prune_residual", type=cli.str2bool, default=False,
                        help="filter methods: analyse the residual streams too")
    parser.add_argument("--max_drop", type=cli.float_in(0.0, 1.0), default=None,
                        help="propose, per layer, the highest rate whose validation accuracy "
                             "stays within this much (a fraction: 0.01 = one point) of the "
                             "unpruned model's (default 0.01)")
    parser.add_argument("--target_compression", type=cli.float_in(1.0, low_open=True), default=None,
                        help="instead: the smallest accuracy drop whose rates remove enough "
                             "weights for this compression (before / after) of the analysed layers")
    parser.add_argument("--output", default=None,
                        help="CSV of (layer, rate, top1, loss); default "
                             "results/sensitivity_<model>_<method>.csv, with the plot (.png) and "
                             "the proposed rates (.json) beside it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the CSV, plot and rates of an earlier analysis at --output; "
                             "by default a taken name gets the next free _2, _3, ... for all three")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    group = parser.add_argument_group("device and threads")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto takes CUDA when present")
    cli.add_threads_arg(group)
    return parser


def validation_split(args, loaded, train):
    """The checkpoint's validation images, or --val_split of the training ones; never test."""
    _, val = held_out(train, loaded.get("validation"))
    if val is not None:
        if args.val_split:
            raise UserError("the checkpoint holds its own validation split; leave --val_split out")
        return val, f"the checkpoint's validation split ({len(val):,} images)"
    if not args.val_split:
        raise UserError("the checkpoint recorded no validation split: pass --val_split (taken from "
                        "the training images, on which this model trained: optimistic), or train "
                        "with baseline.py --val_split to hold them out")
    _, val = split_validation(train, args.val_split, args.seed)
    return val, (f"{len(val):,} training images (--val_split={args.val_split}; the model trained "
                 "on them, so the curves are optimistic)")


OUTPUT_SUFFIXES = (".csv", ".json", ".png")  # the curves, the proposed rates, the plot


def output_path(requested: Path, overwrite: bool) -> Path:
    """The CSV path to write, its .json and .png beside it: ``requested`` unless one of the
    three is there already (a file this run did not create), then the first _2, _3, ... whose
    three are all free, as checkpoints are named; ``overwrite`` keeps ``requested``."""
    candidate, number = requested, 2
    while not overwrite and any(candidate.with_suffix(s).exists() for s in OUTPUT_SUFFIXES):
        candidate = requested.with_name(f"{requested.stem}_{number}{requested.suffix}")
        number += 1
    return candidate


def to_csv(rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["layer", "rate", "top1", "loss", "size", "weights"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.max_drop is not None and args.target_compression is not None:
        raise UserError("give --max_drop or --target_compression, not both")
    cli.apply_threads(args.threads)
    device = script_setup.resolve_device(args.device)
    loaded = checkpoints.load_checkpoint(args.load_folder_model, args.checkpoint_dir,
                                         expect_model=args.model, expect_dataset=args.dataset)
    model = checkpoints.build_model(loaded, device, masks=False)
    model_name = loaded["config"]["model"]
    output = Path(args.output or f"results/sensitivity_{model_name}_{args.method}.csv")
    check_writable_dir(output.parent, "--output")
    pruner = (None if args.method == MAGNITUDE
              else pruners.create_pruner(args.method, prune_residual=args.prune_residual))
    analysis = Sensitivity(model, args.method, pruner)  # refuses unknown operations before data
    train, _, _ = script_setup.load_data(args, loaded["dataset"], device, loaded["config"]["input_shape"])
    val, source = validation_split(args, loaded, train)
    print(f"{model_name} from {loaded['path']}: {len(analysis.units)} "
          f"{'layers' if args.method == MAGNITUDE else 'channel groups'} x {len(args.rates)} rates "
          f"({args.method}), evaluated on {source}")
    rows = analysis.run(val, args.rates, progress=not args.no_progress)

    # Everything is computed before the first file is written: a failure leaves none of them.
    rates, how = propose(rows, args.max_drop, args.target_compression)
    output = output_path(output, args.overwrite)
    rates_path, plot_path = output.with_suffix(".json"), output.with_suffix(".png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        plot_path = None
    figure = (plot(rows, plot_path, f"{model_name}, {args.method}, no retraining", pyplot)
              if plot_path is not None else None)
    write_text(output, to_csv(rows))
    write_text(rates_path, json.dumps(rates, indent=2) + "\n")
    if figure is not None:
        with atomic_write(plot_path) as f:
            figure.savefig(f, format="png", dpi=120)
        pyplot.close(figure)
    print(f"wrote {output}" + (f" and {plot_path}" if plot_path else " (pip install matplotlib "
                                                                      "for the plot)"))
    print(f"proposed rates (accuracy drop <= {how['max_drop']:.4f} per layer, "
          f"{how['compression']:.2f}x over the analysed weights), in {rates_path}:")
    print(f"--layer_rates={format_rates(rates)}")
    return {"rows": rows, "rates": rates, "proposal": how, "csv": str(output)}


if __name__ == "__main__":
    cli.run(main)
