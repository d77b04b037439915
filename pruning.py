"""Load a trained checkpoint, prune it (songhan, or the filter methods fpgm, l1norm, sfp),
retrain, save, and report what pruning bought: accuracy, parameters, FLOPs, file size and
measured speed, before and after.

    python pruning.py --load_folder_model=lenet_300_100_mnist_acc_0.9838_epoch_30 \
        --pruning_method=songhan --cut_rate=0.5 --epochs=10

A checkpoint pruned before keeps its masks: pruning it again prunes further, never less. Under
torchrun --nproc_per_node=N every process computes the same selection from the synchronised
weights and retrains its share of each batch; --save_every and --resume make a run resumable.
"""
from utils.interrupts import quiet_interrupt

with quiet_interrupt():
    import os
    from functools import partial
    from pathlib import Path

    import pruners
    from models.inference import differs_for_deployment, for_deployment
    from pruners.quantization import (CompressionSettings, add_compression_args,
                                      compress_and_export)
    from pruners.base import DEFAULT_CUT_RATE, parse_layer_rates
    import script_setup
    from utils import checkpoints, cli, distributed
    from utils.data import held_out
    from utils.errors import UserError
    from utils.masks import detached_copy, make_permanent
    from utils.reporting.console import format_timing, print_rows
    from utils.reporting.counting import FLOP_CONVENTION, count_parameters, layer_stats
    from utils.timing import compare_inference, inference_batch, speedup
    from utils.training import TrainingSettings, evaluate, seed_everything
    from utils.training.runlog import check_tensorboard

# A retraining rate a tenth of the baseline's, as Han et al. do for LeNet.
RETRAIN_RATE_FACTOR = 0.1


def get_args_parser():
    parser = cli.new_parser(__doc__)
    script_setup.add_model_args(parser, from_checkpoint=True)
    parser.add_argument("--pruning_method", choices=pruners.pruner_names(), default="songhan",
                        help="songhan: Han et al. 2015 magnitude pruning of weights; filter "
                             "pruning, physically removed: fpgm (geometric median, He et al. "
                             "2019, soft), l1norm (smallest L1 norm, Li et al. 2017, pruned once), "
                             "sfp (smallest L2 norm, soft filter pruning, He et al. 2018)")
    parser.add_argument("--cut_rate", type=cli.fraction, default=DEFAULT_CUT_RATE,
                        help="songhan: fraction of the prunable weights removed in all; filter "
                             "methods: fraction of filters removed in each channel group. In [0, 1)")
    script_setup.add_training_args(parser, epochs=10, learning_rate=None,
                          learning_rate_help="retraining learning rate (default: a tenth of the "
                                             "learning rate of the baseline at the root of the "
                                             "checkpoint's chain, as Han et al. do for LeNet)")
    parser.add_argument("--layer_rates", type=parse_layer_rates, default=None,
                        metavar="NAME=RATE,...|FILE",
                        help="per-layer rates overriding --cut_rate: songhan, the fraction of "
                             "that layer's weights; filter methods, of that layer's (or channel "
                             "group's) filters. NAME=RATE pairs, or a .json (or .yaml) file of "
                             "them, as sensitivity.py writes")
    parser.method_groups = {}  # title -> (its flags' defaults, methods that read it)
    for pruner_class in pruners.pruner_classes():
        for title, add_flags in pruner_class.argument_groups():
            if title not in parser.method_groups:
                add_flags(parser.add_argument_group(title))
                parser.method_groups[title] = (script_setup.flag_defaults(add_flags), set())
            parser.method_groups[title][1].add(pruner_class.name)
    add_compression_args(parser)  # --quantize*, --export: pruners/quantization.py
    script_setup.add_run_args(parser)
    script_setup.add_runtime_args(parser)
    return parser


def parse_args(argv=None):
    """Flags, checked together: another method's flags given to this one are an error, not
    silently ignored."""
    parser = get_args_parser()
    args, run_flags, resumed = script_setup.parse_resumable(parser, argv, "pruning")
    if not args.load_folder_model:
        raise UserError("--load_folder_model is required: name the trained checkpoint to prune "
                        "(see checkpoints/)")
    foreign = script_setup.foreign_flags(args, args.pruning_method, parser.method_groups)
    if foreign:
        raise UserError(f"{', '.join(foreign)} do not apply to --pruning_method="
                        f"{args.pruning_method}; leave them out or choose the method they belong to")
    if args.tensorboard:
        check_tensorboard()
    return args, run_flags, resumed


def measure(model, test, input_shape) -> dict:
    """Accuracy, parameters and FLOPs of one model."""
    counts = count_parameters(model)
    stats = layer_stats(model, input_shape)
    return {
        "top1_acc": evaluate(model, test)["acc"],
        "parameters": counts["total"],
        "nonzero": counts["nonzero"],
        "flops": sum(s.flops for s in stats),
        "nonzero_flops": sum(s.nonzero_flops for s in stats),
        "layers": {s.name: {"weights": s.weights, "nonzero": s.nonzero, "flops": s.flops,
                            "nonzero_flops": s.nonzero_flops} for s in stats},
    }


def measure_speed(original, pruned, test, args, deployed: bool = False) -> dict:
    """Latency (batch 1) and throughput (--inference_batch_size) of the model before and after,
    timed in alternating rounds in this one process so the ratio is like for like. ``deployed``:
    also time both as a deployment runtime runs them (BatchNorm folded, channels_last:
    models/inference.py), in the same rounds."""
    timed_models = {"before": original, "after": pruned}
    if deployed:
        timed_models.update(before_deployed=for_deployment(original),
                            after_deployed=for_deployment(pruned))
    speed = {"before": {}, "after": {}}
    for key, batch in (("latency", 1), ("throughput", args.inference_batch_size)):
        timed = compare_inference(timed_models, inference_batch(test, batch), args.inference_sampling)
        for name, timing in timed.items():
            when, _, form = name.partition("_")
            speed[when][f"{form}_{key}" if form else key] = timing
    return speed


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _speed_ups(before: dict, after: dict, form: str = "") -> str:
    """'batch 1: 1.20x, batch 256: 1.50x' from the timings measure_speed stored under ``form``."""
    ratio = lambda key: f"{speedup(before[form + key], after[form + key]):.2f}x"  # noqa: E731
    return f"batch 1: {ratio('latency')}, batch {after['throughput']['batch_size']}: {ratio('throughput')}"


def print_report(before: dict, after: dict, train_seconds: float, sizes: dict, saved,
                 structured: bool, claimed_flops=None):
    print("\nper layer            weights    nonzero before    nonzero after   kept")
    for name, layer in after["layers"].items():
        old = before["layers"].get(name, {"weights": layer["weights"], "nonzero": layer["nonzero"]})
        print(f"{name:<16} {old['weights']:>11,} {old['nonzero']:>17,} {layer['nonzero']:>16,}"
              f"  {layer['nonzero'] / max(old['weights'], 1):6.1%}")
    print()
    if structured:  # a smaller dense model: what shrank is the parameter count itself
        size_rows = [("parameters", f"{before['parameters']:,} before, {after['parameters']:,} "
                                    f"after ({1 - after['parameters'] / before['parameters']:.1%} "
                                    f"fewer, {_ratio(before['parameters'], after['parameters'])} "
                                    "smaller model)")]
    else:
        size_rows = [
            ("parameters", f"{before['parameters']:,} before, {after['parameters']:,} after"),
            ("nonzero parameters", f"{before['nonzero']:,} before, {after['nonzero']:,} after "
                                   f"({1 - after['nonzero'] / after['parameters']:.1%} sparsity, "
                                   f"compression {_ratio(after['parameters'], after['nonzero'])})")]
    print_rows([
        ("top-1 accuracy", f"{before['top1_acc']:.2%} before, {after['top1_acc']:.2%} after"),
        *size_rows,
        ("FLOPs (dense)", f"{before['flops']:,} before, {after['flops']:,} after "
                          f"({_ratio(before['flops'], after['flops'])} fewer)"),
        ("FLOPs (nonzero weights)", f"{before['nonzero_flops']:,} before, "
                                    f"{after['nonzero_flops']:,} after "
                                    f"({_ratio(before['nonzero_flops'], after['nonzero_flops'])} fewer)"),
        *([("FLOPs (paper's counting)",
            f"{claimed_flops:,} claimed ({1 - claimed_flops / before['flops']:.1%} fewer; counts each "
            "pruned conv at (1-r), or (1-r)^2 after a pruned conv, as the FPGM code does; the "
            "compact model's FLOPs above are what runs)")] if claimed_flops else []),
        ("retraining time", f"{train_seconds:.1f} s"),
        ("latency, batch 1", f"before {format_timing(before['latency'])}"),
        ("", f"after  {format_timing(after['latency'])}"),
        ("throughput", f"before {format_timing(before['throughput'])}"),
        ("", f"after  {format_timing(after['throughput'])}"),
        ("speed-up (median)", _speed_ups(before, after)),
        *([("speed-up, deployed", _speed_ups(before, after, "deployed_")
            + " (BatchNorm folded, channels_last: as a deployment runtime runs them)")]
          if "deployed_throughput" in after else []),
        ("checkpoint size", f"{sizes['before']:,} bytes before, {sizes['after']:,} after "
                            f"({_ratio(sizes['before'], sizes['after'])} smaller)"),
        ("checkpoint", str(saved)),
    ])
    print(f"({FLOP_CONVENTION})")


def main(argv=None):
    args, run_flags, resumed = parse_args(argv)
    pruner = pruners.create_pruner(args.pruning_method, args)  # checks the method's own flags
    device = script_setup.start_runtime(args)

    parent = checkpoints.load_checkpoint(args.load_folder_model, args.checkpoint_dir,
                                         expect_model=args.model, expect_dataset=args.dataset)
    dataset, model_name = parent["dataset"], parent["config"]["model"]
    script_setup.check_dirs(args, dataset)
    root_rate = checkpoints.root_learning_rate(parent)
    if args.learning_rate is None:
        args.learning_rate = (root_rate or 0.001) * RETRAIN_RATE_FACTOR
    settings = TrainingSettings.from_args(args)
    model = checkpoints.build_model(parent, device)  # a pruned model keeps its masks
    try:
        pruner.check_model(model)  # rates, layer names, masks: refused before any training
    except UserError as exc:
        raise cli.in_flag_words(exc, ("layer_rates", "exclude")) from None
    generator = seed_everything(args.seed)
    input_shape = tuple(parent["config"]["input_shape"])
    train, test, spec = script_setup.load_data(args, dataset, device, input_shape)
    # The parent's validation images stay out of retraining too.
    train, val = held_out(train, parent.get("validation"))
    print(f"pruning {parent['path']} with {args.pruning_method} "
          f"(retraining learning rate {args.learning_rate:g})")

    before = measure(model, test, input_shape)
    original = make_permanent(detached_copy(model))  # pruning works in place; kept to time against
    run = script_setup.open_run("pruning", args, run_flags,
                       f"{model_name}_{dataset}_{args.pruning_method}", resumed)
    context = pruners.PruneContext(train=train, test=test, settings=settings,
                                   augment=spec.augment, generator=generator, val=val, run=run)
    model = pruner.prune(model, context)
    train_seconds = run.elapsed()
    after = measure(model, test, input_shape)

    # Saved before timing: a Ctrl-C while timing must not cost the retrained model.
    metrics = {"before": before, "after": after, "train_seconds": train_seconds}
    name = checkpoints.checkpoint_name(model_name, dataset, after["top1_acc"], args.epochs,
                                       method=args.pruning_method)
    checkpoint = checkpoints.make_checkpoint(
        model, dataset, metrics, vars(args), parent=Path(parent["path"]).name,
        sparse=pruner.sparse_checkpoint, root_learning_rate=root_rate,
        validation=parent.get("validation"), pruning=pruner.metadata())
    saved = distributed.on_main(lambda: save_once(run, checkpoint, Path(args.checkpoint_dir) / name))
    run.track("pruned_checkpoint", lambda: str(saved), lambda _: None)
    distributed.check_same_weights(model)

    # Deployed too where filters were removed from a conv net: BatchNorm's passes and contiguous
    # convs' layout reorders shrink with the width only, so eager timing understates the gain.
    # Timed on a copy: the compression step below needs the model with its masks.
    timed = make_permanent(detached_copy(model))
    deployed = pruner.structured and differs_for_deployment(timed)
    speed = distributed.on_main(partial(measure_speed, original, pruner.inference_model(timed),
                                        test, args, deployed))
    del original, timed
    before.update(speed["before"])
    after.update(speed["after"])
    # The checkpoint's last write: every size printed or recorded from here on is this file's.
    # (The compression figures below stay out of it: written in, they would change the size
    # they report.)
    distributed.on_main(lambda: checkpoints.update_metrics(checkpoint, saved, metrics))
    sizes = distributed.on_main(lambda: {"before": os.path.getsize(parent["path"]),
                                         "after": os.path.getsize(saved)})

    # Weight sharing, the compressed file and --export (pruners/quantization.py), on a copy;
    # under torchrun rank 0 does them alone.
    metrics.update(distributed.on_main(lambda: compress_and_export(
        model, checkpoint, saved, context, CompressionSettings.from_args(args), args.export or ())))
    metrics_file = run.finish(saved)
    if metrics_file:
        print(f"per-epoch figures: {metrics_file}")
    make_permanent(model)
    claimed = (pruner.metadata().get("flops") or {}).get("paper_counting")
    print_report(before, after, train_seconds, sizes, saved, pruner.structured, claimed)
    return {**metrics, "sizes": sizes, "path": str(saved)}


def save_once(run, checkpoint: dict, path: Path) -> Path:
    """Save the pruned checkpoint, unless this run is resumed from a state saved after it was
    (inside --quantize's fine-tuning): the resumed run rebuilt the same weights, so the file
    already on disk is this checkpoint, not a second one to save beside it."""
    earlier = run.resumed_value("pruned_checkpoint")
    if earlier and Path(earlier).is_file():
        print(f"kept {earlier} (saved before the interruption)")
        return Path(earlier)
    saved = checkpoints.save_checkpoint(checkpoint, path)
    print(f"saved {saved}")
    return saved


if __name__ == "__main__":
    cli.run(main)
