"""What FPGM's physical removal buys in measured CPU speed: dense vs compact, and AlexNet end to end.

    python benchmarks/fpgm_speed.py --load_folder_model=lenet_5_caffe_mnist_acc_0.9915_epoch_30
    python benchmarks/fpgm_speed.py                      # random lenet_5_caffe weights

1. lenet_5_caffe. From a dense checkpoint (or random weights when none is given) FPGM's criterion
   picks --cut_rate of every layer's filters and the compact model is built; a checkpoint that
   pruning.py already compacted is timed against a model of its original widths instead. Speed
   depends on the widths only, so no retraining is needed to time it. Printed: FLOPs (2 x MAC,
   as calFLOP.py counts them), throughput at --batch_size and latency at batch 1 over --rounds
   rounds in which dense and compact run back to back, every round a median of --samples passes
   after warm-up, in eval mode under torch.inference_mode (utils.timing.compare_inference).
   Times are medians of the timed passes; a speed-up is the median of the rounds' own ratios (so load from other processes, which
   comes and goes between rounds, moves both sides of each ratio alike), printed with the
   middle half of those ratios. Conv nets are also timed as a deployment runtime runs them
   (--inference): BatchNorm folded into the conv before it, weights channels_last. BatchNorm's
   passes and the layout reorders of contiguous convs cost in proportion to the width, a conv's
   arithmetic to input x output width, so eager PyTorch understates what a compact model buys
   where it is deployed.
2. alexnet end to end on a small MNIST subset (--alexnet_images training images, one epoch):
   train the dense model, prune it with fpgm through the same pruner and shared training loop
   pruning.py uses (one soft-pruning epoch), compact it, and print accuracy, FLOPs and speed-up.
   Reads MNIST from --data_dir; never downloads.
3. --architectures: the paper's networks (resnet56 at 40%: block-internal, --prune_residual,
   and --prune_residual --channel_multiple=8; resnet50 at 30%) on random weights, batch
   --arch_batch_size. A pass takes a tenth of a second or more here, so every round is one
   untimed and one timed pass of each model in turn (--arch_rounds rounds): the timed passes
   of dense and compact lie a second apart, close enough that a burst of load from other
   processes falls on both; many passes per turn let a burst decide a round's ratio.

--conv_rates prints what explains the rest: the FLOP rate of single convs at the widths
resnet56 has before and after pruning.
"""
import copy
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import NamedTuple, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from pruners.compact import compact_model  # noqa: E402
from models.inference import differs_for_deployment, for_deployment  # noqa: E402
from pruners import PruneContext, create_pruner  # noqa: E402
from benchmarks.experiments import VIT_TINY, VIT_TINY_KWARGS  # noqa: E402
from pruners.structured import paper_counted_flops  # noqa: E402
from utils import checkpoints, cli  # noqa: E402
from utils.data import get_spec, load_dataset  # noqa: E402
from utils.reporting.counting import FLOP_CONVENTION, layer_stats  # noqa: E402
from utils.timing import (alternate_calls, compare_inference, keep_freed_memory, speedup,  # noqa: E402
                          speedup_quartiles)
from utils.training import TrainingSettings, evaluate, fit, seed_everything  # noqa: E402


def get_args_parser():
    parser = cli.new_parser(__doc__)
    parser.add_argument("--load_folder_model", default=None,
                        help="lenet_5_caffe checkpoint (dense baseline or fpgm-compacted) in "
                             "--checkpoint_dir, or a path; random weights when not given")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="where checkpoints are read")
    parser.add_argument("--data_dir", default="./data", help="where MNIST lives (never downloaded)")
    parser.add_argument("--no_verify_data", action="store_true",
                        help="accept MNIST files that differ from the official ones")
    parser.add_argument("--cut_rate", type=cli.fraction, default=0.4,
                        help="fraction of filters FPGM removes per layer")
    cli.add_comparison_timing_args(parser, batch_size=256, samples=30, warmup=10)
    parser.add_argument("--alexnet_images", type=cli.non_negative_int, default=512,
                        help="MNIST training images for the alexnet run (0 skips it)")
    parser.add_argument("--alexnet_samples", type=cli.positive_int, default=5,
                        help="timed passes per round for alexnet (a batch of 256 is ~13 GFLOP)")
    parser.add_argument("--architectures", nargs="*", choices=sorted(ARCHITECTURES),
                        default=sorted(ARCHITECTURES),
                        help="the paper's networks to time dense against compact (none: skip)")
    parser.add_argument("--arch_batch_size", type=cli.positive_int, default=64,
                        help="images per pass for the architectures' throughput")
    parser.add_argument("--arch_rounds", type=cli.positive_int, default=30,
                        help="rounds for the architectures; in each, every model (dense, compact, "
                             "each inference form) runs one untimed then one timed pass in turn")
    parser.add_argument("--resnet50_rounds", type=cli.positive_int, default=5,
                        help="rounds for resnet50 and mobilenet_v2 (a batch of 64 at 224x224 is about 530 GFLOP "
                             "for resnet50: "
                             "seconds per pass on a CPU)")
    parser.add_argument("--inference", choices=("eager", "deployed", "both"), default="both",
                        help="time models as trained (eager), as a deployment runtime runs them "
                             "(BatchNorm folded into the layer before it, channels_last), or both")
    parser.add_argument("--conv_rates", action="store_true",
                        help="only print the FLOP rate of single 3x3 convs at the widths resnet56 "
                             "has before and after pruning, contiguous and channels_last, and exit")
    parser.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0,
                        help="seed for weights, order and dropout")
    cli.add_threads_arg(parser)
    return parser


def prune_untrained(model, cut_rate: float, prune_residual: bool = False, channel_multiple: int = 1,
                    attention: str = "heads"):
    """FPGM's selection on the current weights, zeroed, then removed: the compact model (and
    the pruner, whose graph the paper's counting needs)."""
    masked = copy.deepcopy(model)
    pruner = create_pruner("fpgm", cut_rate=cut_rate, prune_residual=prune_residual,
                           channel_multiple=channel_multiple, attention=attention)
    pruner.soft_step(masked, pruner.prunable_groups(masked), epoch=0)
    selection = {name: index.tolist() for name, index in pruner.selection.items()}
    return compact_model(masked, selection, pruner.graph), pruner


def flops(model) -> int:
    return sum(s.flops for s in layer_stats(model, model.input_shape))


def inference_forms(dense, compact, inference: str) -> dict:
    """The (dense, compact) pairs to time: as trained (eager PyTorch, contiguous) and as a
    deployment runtime runs them: BatchNorm folded into the layer before it, conv weights
    channels_last (models/inference.py). Models without BatchNorm or convs have one form."""
    forms = {}
    deployable = differs_for_deployment(dense)
    if inference in ("eager", "both") or not deployable:
        forms["eager"] = (dense, compact)
    if inference in ("deployed", "both") and deployable:
        forms["deployed"] = (for_deployment(dense), for_deployment(compact))
    return forms


FORM_LABELS = {"eager": "as trained", "deployed": "deployed (BatchNorm folded, channels_last)"}


def compare(dense, compact, args, label, rounds, samples, warmup, batch_size=None, claimed_flops=None):
    """Print FLOPs, throughput and latency of dense vs compact, in each inference form (all
    timed in the same alternating rounds); return the figures (top level: the first form)."""
    torch.manual_seed(args.seed)
    batch_size = batch_size or args.batch_size
    batch = torch.randn(batch_size, *dense.input_shape)
    single = batch[:1].clone()
    f_dense, f_compact = flops(dense), flops(compact)
    flop_ratio = f_dense / f_compact
    forms = inference_forms(dense, compact, args.inference)
    timed = {f"{form} {which}": model for form, pair in forms.items()
             for which, model in zip(("dense", "compact"), pair)}
    throughput = compare_inference(timed, batch, rounds * samples, rounds, warmup)
    latency = compare_inference(timed, single, rounds * samples, rounds, warmup)
    print(f"\n{label}")
    if getattr(dense, "widths", None) is not None:
        print(f"  widths              {list(dense.widths)} -> {list(compact.widths)}")
    print(f"  parameters          {sum(p.numel() for p in dense.parameters()):,} -> "
          f"{sum(p.numel() for p in compact.parameters()):,}")
    print(f"  FLOPs per image     {f_dense:,} -> {f_compact:,}  ({1 - f_compact / f_dense:.1%} fewer, "
          f"ratio {flop_ratio:.2f}x)")
    if claimed_flops is not None:
        print(f"  paper's counting    {f_dense:,} -> {claimed_flops:,}  ({1 - claimed_flops / f_dense:.1%} "
              "fewer: each pruned conv at (1-r), (1-r)^2 after a pruned conv)")
    results = {}
    for form in forms:
        if len(forms) > 1:
            print(f"  {FORM_LABELS[form]}:")
        speedups = {}
        for name, timing, size in (("throughput", throughput, batch_size), ("latency", latency, 1)):
            dense_timing, compact_timing = timing[f"{form} dense"], timing[f"{form} compact"]
            before, after = dense_timing["median_ms"], compact_timing["median_ms"]
            speedups[name] = speedup(dense_timing, compact_timing)
            low, high = speedup_quartiles(dense_timing, compact_timing)
            print(f"  {name:<10} batch {size:<4} {before:.3f} ms -> {after:.3f} ms"
                  f"  ({size * 1000 / before:,.0f} -> {size * 1000 / after:,.0f} img/s, "
                  f"speed-up {speedups[name]:.2f}x, middle half of rounds {low:.2f}-{high:.2f}x)")
        print(f"  throughput speed-up / FLOP ratio = {speedups['throughput'] / flop_ratio:.2f}")
        results[form] = {"throughput_speedup": speedups["throughput"],
                         "latency_speedup": speedups["latency"],
                         "throughput_ms": {"dense": throughput[f"{form} dense"]["median_ms"],
                                           "compact": throughput[f"{form} compact"]["median_ms"]}}
    first = results[next(iter(forms))]
    return {"flop_ratio": flop_ratio, **first, "forms": results,
            "flops": {"dense": f_dense, "compact": f_compact, "paper_counting": claimed_flops}}


class Architecture(NamedTuple):
    """A dense/compact pair to time: the paper's architectures, torchvision's MobileNetV2 and a
    small ViT, random weights (speed depends on the widths only)."""
    label: str
    model: str
    rate: float
    prune_residual: bool
    channel_multiple: int
    input_shape: Tuple[int, int, int]
    options: dict = {}  # create_model's keyword arguments (builder_kwargs of a class)
    attention: str = "heads"  # what attention loses: whole heads, or every head's width


# resnet50 resizes its 32x32 input to 224x224 itself; mobilenet_v2 is torchvision's own model
# (--model=torchvision.mobilenet_v2), given 224x224 inputs.
ARCHITECTURES = {
    "resnet56": Architecture("resnet56, fpgm 40%, block-internal channels", "resnet56", 0.4, False,
                             1, (3, 32, 32)),
    "resnet56_residual": Architecture("resnet56, fpgm 40%, with --prune_residual", "resnet56", 0.4,
                                      True, 1, (3, 32, 32)),
    "resnet56_residual_aligned": Architecture(
        "resnet56, fpgm 40%, --prune_residual --channel_multiple=8", "resnet56", 0.4, True, 8,
        (3, 32, 32)),
    "resnet50": Architecture("resnet50 (224x224), fpgm 30%, block-internal channels", "resnet50",
                             0.3, False, 1, (3, 32, 32)),
    "mobilenet_v2": Architecture("torchvision mobilenet_v2 (224x224), fpgm 30%, block-internal "
                                 "channels", "torchvision.mobilenet_v2", 0.3, False, 1, (3, 224, 224)),
    # Heads and MLP width of every block (the embedding stream stays): the README's small ViT
    # (benchmarks/experiments.py, Fashion-MNIST-shaped input). (ViT-B/16 at batch 64 takes about
    # a minute a pass on one core here: too slow for paired rounds.)
    "vit_tiny": Architecture("ViT 6 layers, 6 heads, width 192, patch 7 (28x28), fpgm 40%, heads "
                             "and MLP", VIT_TINY, 0.4, False, 1, (1, 28, 28),
                             {"builder_kwargs": VIT_TINY_KWARGS}),
    # The same ViT with every head kept and 40% of every head's query/key and value width gone
    # (--attention=head_width), and 40% of the MLP width.
    "vit_tiny_head_width": Architecture("ViT 6 layers, 6 heads, width 192, patch 7 (28x28), fpgm "
                                        "40%, every head's width and MLP", VIT_TINY, 0.4, False, 1,
                                        (1, 28, 28), {"builder_kwargs": VIT_TINY_KWARGS},
                                        attention="head_width"),
}
LARGE = ("resnet50", "torchvision.mobilenet_v2")  # timed for --resnet50_rounds rounds


# (channels in = out, height = width): resnet56's stages dense (16, 32, 64) and at 40% with
# --prune_residual --channel_multiple=8 (8, 24, 40), and unaligned (10, 20, 39).
CONV_SHAPES = [(16, 32), (8, 32), (10, 32), (32, 16), (24, 16), (20, 16), (64, 8), (40, 8), (39, 8)]


def conv_rates(args) -> dict:
    """GFLOP/s of one 3x3 conv per shape, batch --arch_batch_size, both layouts: why a compact
    model's speed-up falls short of its FLOP ratio where widths get small."""
    rates = {}
    print(f"\n3x3 conv, batch {args.arch_batch_size}, median of {args.rounds} rounds of "
          f"{args.samples} passes: GFLOP/s contiguous (NCHW) | channels_last (NHWC)")
    for channels, size in CONV_SHAPES:
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
        images = torch.randn(args.arch_batch_size, channels, size, size)
        flop = 2 * args.arch_batch_size * channels * channels * 9 * size * size
        calls = {layout: partial(copy.deepcopy(conv).to(memory_format=fmt),
                                 images.contiguous(memory_format=fmt))
                 for layout, fmt in (("contiguous", torch.contiguous_format),
                                     ("channels_last", torch.channels_last))}
        with torch.inference_mode():  # the layouts take turns in every round
            times = alternate_calls(calls, args.rounds, args.samples, args.warmup)
        row = {layout: flop / statistics.median(statistics.median(r) for r in per_round) / 1e6
               for layout, per_round in times.items()}
        rates[(channels, size)] = row
        print(f"  {channels:3d} channels at {size:2d}x{size:<2d}  {row['contiguous']:6.1f} | "
              f"{row['channels_last']:6.1f}")
    return rates


def architectures(args):
    """The paper's networks, dense against compact, on CIFAR-shaped (ImageNet-shaped for
    resnet50) inputs."""
    results = {}
    for key in args.architectures:
        spec = ARCHITECTURES[key]
        torch.manual_seed(args.seed)
        model = models.create_model(spec.model, spec.input_shape, 10, **spec.options).eval()
        compact, pruner = prune_untrained(model, spec.rate, spec.prune_residual, spec.channel_multiple,
                                          spec.attention)
        claimed = paper_counted_flops(pruner.graph, layer_stats(model, model.input_shape), spec.rate)
        rounds = args.resnet50_rounds if spec.model in LARGE else args.arch_rounds
        results[key] = compare(model, compact.eval(), args, spec.label, rounds, samples=1, warmup=1,
                               batch_size=args.arch_batch_size, claimed_flops=claimed)
    return results


def lenet_5_caffe(args):
    spec = get_spec("mnist")
    if args.load_folder_model:
        loaded = checkpoints.load_checkpoint(args.load_folder_model, args.checkpoint_dir,
                                            expect_model="lenet_5_caffe")
        model = checkpoints.build_model(loaded)
        original = (loaded.get("pruning") or {}).get("original_widths")
        if original and list(original) != list(model.widths):  # already compacted by pruning.py
            dense = models.create_model("lenet_5_caffe", model.input_shape, model.num_classes, original)
            return compare(dense, model, args,
                           f"lenet_5_caffe: {Path(loaded['path']).name} vs its original widths",
                           args.rounds, args.samples, args.warmup)
        source = Path(loaded["path"]).name
    else:
        torch.manual_seed(args.seed)
        model = models.create_model("lenet_5_caffe", spec.input_shape, spec.num_classes)
        source = "random weights"
    compact, _ = prune_untrained(model, args.cut_rate)
    return compare(model, compact, args, f"lenet_5_caffe ({source}), fpgm at cut_rate {args.cut_rate}",
                   args.rounds, args.samples, args.warmup)


def alexnet_end_to_end(args):
    """Train alexnet one epoch on a subset, fpgm-prune with one retraining epoch, compact."""
    generator = seed_everything(args.seed)
    train, test, spec = load_dataset("mnist", args.data_dir, download=False,
                                     verify=not args.no_verify_data)
    train, test = train.subset(args.alexnet_images), test.subset(max(args.alexnet_images // 2, 1))
    model = models.create_model("alexnet", spec.input_shape, spec.num_classes)
    settings = TrainingSettings(epochs=1, batch_size=64, learning_rate=1e-3,
                                lr_schedule="constant", progress=False)
    print(f"\nalexnet on {len(train)} MNIST training images, {len(test)} test images")
    fit(model, train, test, settings, generator=generator,
        print_fn=lambda line: print(f"  dense   {line}"))
    dense_acc = evaluate(model, test)["acc"]
    pruner = create_pruner("fpgm", cut_rate=args.cut_rate)
    context = PruneContext(train=train, test=test,
                           settings=settings.replace(learning_rate=1e-4, lr_schedule="cosine"),
                           generator=generator, print_fn=lambda line: print(f"  fpgm    {line}"))
    dense = copy.deepcopy(model)  # prune() zeroes filters in the model it is given
    compact = pruner.prune(model, context)
    print(f"  accuracy on the subset: dense {dense_acc:.2%}, compact {evaluate(compact, test)['acc']:.2%}"
          " (one epoch on a few hundred images: a smoke figure, not a result)")
    # a dense pass over 256 images takes a sizeable fraction of a second: fewer warm-up passes
    return compare(dense, compact, args, f"alexnet, fpgm at cut_rate {args.cut_rate}",
                   args.rounds, args.alexnet_samples, min(args.warmup, 2))


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cli.apply_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; freed memory "
          f"{'kept in the process' if keep_freed_memory() else 'returned as malloc decides'} "
          "(utils.timing.keep_freed_memory)")
    if args.conv_rates:
        return {"conv_rates": conv_rates(args)}
    results = {"lenet_5_caffe": lenet_5_caffe(args)}
    if args.alexnet_images > 0:
        results["alexnet"] = alexnet_end_to_end(args)
    results.update(architectures(args))
    print(f"\n({FLOP_CONVENTION})")
    return results


if __name__ == "__main__":
    cli.run(main)
