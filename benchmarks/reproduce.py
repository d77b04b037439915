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

This file is the command line only: what is run is benchmarks/experiments.py, running it
benchmarks/runner.py, the records benchmarks/records.py, the README section
benchmarks/results_report.py and the plots benchmarks/results_plots.py.

Epochs (full run; `--list` prints them) are chosen to fit in about an hour on this 2-core CPU:
lenet_300_100 105 epochs at ~1 s, lenet_5 40 at 3-8 s, lenet_5_caffe 54 at 10-30 s, plus
evaluation and timing: 15-30 minutes when the machine is idle; and resnet20 on Fashion-MNIST,
14 epochs at about 130 s: another 30 minutes (`--only baseline_resnet20_fashion fpgm` and so on
to run parts).
Under heavy sharing an epoch can take 4x longer (the quick run here saw lenet_5_caffe at 110 s).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.experiments import GROUPS, listing  # noqa: E402
from benchmarks.records import QUICK_DIR, RESULTS_DIR  # noqa: E402
from benchmarks.results_plots import plots  # noqa: E402
from benchmarks.results_report import report  # noqa: E402
from benchmarks.runner import run  # noqa: E402
from utils import cli  # noqa: E402
from utils.errors import UserError  # noqa: E402


def get_args_parser():
    parser = cli.new_parser(__doc__)
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
    parser.add_argument("--no_verify_data", action="store_true",
                        help="accept dataset files that differ from the official ones (passed on "
                             "to every run)")
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
        print("\n".join(listing(args.quick)))
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
