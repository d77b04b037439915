"""Training speed per model and option: images/s of a whole training step (forward, cross-entropy,
backward, Adam step) with the default layout, channels_last, torch.compile and both, each with
its ratio to the default; torch.compile's compile time reported on its own.

    python benchmarks/train_speed.py                              # the default runs, all options
    python benchmarks/train_speed.py --runs lenet_5_caffe:mnist resnet20:cifar10 --rounds 7
    python benchmarks/train_speed.py --options default channels_last  # no compiling
    python benchmarks/train_speed.py --runs vgg16_bn:cifar10:32       # model:dataset[:batch]

Every option trains its own copy of the same initial weights through
utils.training.acceleration.TrainingAccelerator (the code the training loop uses) on a random
batch of the dataset's input shape (speed depends on the shapes, not on the pixels; no data is
read). The first step of each option is timed apart: with torch.compile it holds the compile,
which the steady figures exclude. Then --rounds rounds in which the options take turns (the
order rotating), each option running --warmup untimed and then --samples timed steps per round
(more for fast models, so a round lasts --min_round_s); the figures are medians over rounds of
each round's median, and the ratio to the default is the median of the per-round ratios (their
range printed beside it), so a burst of load on a shared machine hits every option alike.
torch.compile runs with dynamic=False, as the training loop uses it. --cold_compile turns off
inductor's on-disk caches so the compile time is a first run's.
"""
import argparse
import copy
import math
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
import script_setup  # noqa: E402
from utils import cli  # noqa: E402
from utils.data import dataset_names, get_spec  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.timing import alternate_calls, time_calls  # noqa: E402
from utils.training.acceleration import TrainingAccelerator, compile_unavailable_reason  # noqa: E402

# option name -> (channels_last, compile); --amp and --cpu_bf16 add autocast variants
OPTIONS = {
    "default": (False, False),
    "channels_last": (True, False),
    "compile": (False, True),
    "channels_last+compile": (True, True),
}
DEFAULT_RUNS = ("lenet_5_caffe:mnist", "lenet_5:mnist", "resnet20:cifar10",
                "resnet20:fashion_mnist", "resnet56:cifar10", "alexnet:cifar10:32",
                "vgg16_bn:cifar10:16")


def run_spec(text: str):
    """'model:dataset[:batch]' -> (model, dataset, batch or None)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected model:dataset[:batch], got {text!r}")
    name, dataset = parts[:2]
    if name not in models.model_names():
        raise argparse.ArgumentTypeError(f"unknown model {name!r} in {text!r}; choose from "
                                         f"{', '.join(models.model_names())}")
    if dataset not in dataset_names():
        raise argparse.ArgumentTypeError(f"unknown dataset {dataset!r} in {text!r}; choose from "
                                         f"{', '.join(dataset_names())}")
    batch = cli.positive_int(parts[2]) if len(parts) == 3 else None
    return name, dataset, batch


def get_args_parser():
    parser = cli.new_parser(__doc__)
    parser.add_argument("--runs", type=run_spec, nargs="+", default=None,
                        metavar="MODEL:DATASET[:BATCH]",
                        help="models on their datasets' input shapes, each at --batch_size "
                             "unless a batch is given (default: " + " ".join(DEFAULT_RUNS) + ")")
    parser.add_argument("--options", nargs="+", choices=list(OPTIONS), default=list(OPTIONS),
                        help="what to time; default is always timed too, the reference of the ratios")
    cli.add_comparison_timing_args(parser, batch_size=128, samples=3, warmup=1, rounds=5)
    parser.add_argument("--min_round_s", type=cli.non_negative_float, default=1.0,
                        help="more timed steps per round than --samples where a step is fast, "
                             "so each option's round lasts about this long")
    parser.add_argument("--learning_rate", type=cli.positive_float, default=1e-3,
                        help="Adam's learning rate (steps on random data: only speed matters)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto takes CUDA when present")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                        help="on CUDA, also time every option with this autocast (+amp)")
    parser.add_argument("--cpu_bf16", action="store_true",
                        help="on the CPU, also time bf16 autocast with the default layout and "
                             "with channels_last (the measurement behind --amp being refused on "
                             "a CPU)")
    parser.add_argument("--cold_compile", action="store_true",
                        help="disable inductor's on-disk caches, so the compile time is what a "
                             "first run on a fresh machine pays (by default a repeat run reuses "
                             "compiled kernels and reports less)")
    parser.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0,
                        help="seed for the weights and the random batch")
    cli.add_threads_arg(parser)
    return parser


def measure(name: str, dataset: str, batch_size: int, options, args, device) -> dict:
    """Per option: first-step seconds, steady ms per step (median of round medians), images/s,
    and the median per-round ratio of the default's step time to the option's."""
    spec = get_spec(dataset)
    torch.manual_seed(args.seed)
    base = models.create_model(name, spec.input_shape, spec.num_classes).to(device).train()
    images = torch.randn(batch_size, *spec.input_shape, device=device)
    labels = torch.randint(0, spec.num_classes, (batch_size,), device=device)
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()  # no graphs (or automatic dynamic shapes) carried over between runs
    steps, first = {}, {}
    for option, (channels_last, compile_, amp) in options.items():
        model = copy.deepcopy(base)
        if amp is not None and device.type == "cpu":  # --cpu_bf16: what --amp refuses on a CPU
            accelerator = TrainingAccelerator(channels_last, compile_, None, device)
            accelerator.amp = amp
        else:
            accelerator = TrainingAccelerator(channels_last, compile_, amp, device)
        train_model = accelerator.prepare(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
        steps[option] = (lambda a=accelerator, m=train_model, o=optimizer:
                         a.step(m, images, labels, o))
        first[option] = time_calls(steps[option], samples=1, device=device)[0] / 1000
    # Fast models take more steps per round, so a round outlasts the clock's and the load's noise.
    estimate_ms = statistics.median(time_calls(steps["default"], samples=3, device=device))
    samples = max(args.samples, math.ceil(args.min_round_s * 1000 / estimate_ms))
    times = alternate_calls(steps, args.rounds, samples, args.warmup, device)
    round_medians = {option: [statistics.median(r) for r in rounds] for option, rounds in times.items()}
    result = {}
    for option, medians in round_medians.items():
        ms = statistics.median(medians)
        ratios = [d / o for d, o in zip(round_medians["default"], medians)]
        result[option] = {"first_step_s": first[option], "ms": ms, "images_per_s": batch_size * 1000 / ms,
                          "ratio": statistics.median(ratios), "ratio_min": min(ratios),
                          "ratio_max": max(ratios), "samples": samples}
    return result


def compile_note(row: dict, reference: dict, reference_name: str, train_images: int,
                 batch_size: int) -> str:
    """Compile time (first step less a steady one) and the steps and epochs of the training set
    that win it back against ``reference``, the same option without compile."""
    compile_s = row["first_step_s"] - row["ms"] / 1000
    saved_s = (reference["ms"] - row["ms"]) / 1000
    if saved_s <= 0:
        return f"compile {compile_s:.1f} s; never won back (not faster than {reference_name})"
    steps = compile_s / saved_s
    epochs = steps / (train_images / batch_size)
    return (f"compile {compile_s:.1f} s; won back from {reference_name} after {steps:,.0f} "
            f"steps ({epochs:.1f} epochs)")


TRAIN_IMAGES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cli.apply_threads(args.threads)
    device = script_setup.resolve_device(args.device)
    if args.cold_compile:
        from torch._inductor import config as inductor_config
        inductor_config.force_disable_caches = True
        warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
    amps = [None] if args.amp is None else [None, args.amp]
    if args.amp is not None and device.type != "cuda":
        raise UserError(f"--amp={args.amp} needs CUDA (device here: {device.type})")
    chosen = ["default"] + [o for o in args.options if o != "default"]
    reason = compile_unavailable_reason(device)
    if reason is not None and any(OPTIONS[o][1] for o in chosen):
        print(f"skipping the compile options: {reason}")
        chosen = [o for o in chosen if not OPTIONS[o][1]]
    options = {o + ("+" + amp if amp else ""): (*OPTIONS[o], amp) for amp in amps for o in chosen}
    if args.cpu_bf16 and device.type == "cpu":
        options.update({"bf16_autocast": (False, False, "bf16"),
                        "channels_last+bf16_autocast": (True, False, "bf16")})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device.type}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; "
          f"Adam training steps; median of {args.rounds} alternating rounds (at least "
          f"{args.samples} steps, {args.min_round_s:g} s, after {args.warmup} warm-up); "
          f"first step timed apart")
    results = {}
    for name, dataset, batch in args.runs or [run_spec(r) for r in DEFAULT_RUNS]:
        batch_size = batch or args.batch_size
        shape = "x".join(map(str, get_spec(dataset).input_shape))
        label = f"{name} on {dataset} ({shape}), batch {batch_size}"
        rows = measure(name, dataset, batch_size, options, args, device)
        results[f"{name}:{dataset}:{batch_size}"] = rows
        print(f"\n{label}: {rows['default']['samples']} steps per option per round")
        print(f"  {'option':<28} {'ms/step':>9} {'images/s':>9} {'vs default':>11} "
              f"{'(round range)':>15}  first step")
        for option, row in rows.items():
            note = ""
            if options[option][1]:  # against the same option without compile, when timed
                plain = option.replace("channels_last+compile", "channels_last")
                plain = plain.replace("compile", "default")
                plain = plain if plain in rows else "default"
                note = "  " + compile_note(row, rows[plain], plain, TRAIN_IMAGES[dataset],
                                           batch_size)
            print(f"  {option:<28} {row['ms']:>9.1f} {row['images_per_s']:>9.0f} "
                  f"{row['ratio']:>10.2f}x {row['ratio_min']:>7.2f}-{row['ratio_max']:.2f}x "
                  f" {row['first_step_s']:6.2f} s{note}")
    print("\n(compile time = first step less a steady step; epochs = its training set at this "
          "batch size; a new batch shape, such as an epoch's last partial batch, compiles again)")
    return results


if __name__ == "__main__":
    cli.run(main)
