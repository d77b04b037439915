"""Load a trained checkpoint, prune it (songhan | fpgm), retrain, save, and report what pruning
bought: accuracy, parameters, FLOPs, file size and measured speed, before and after.

    python pruning.py --load_folder_model=lenet_300_100_mnist_acc_0.9838_epoch_30 \
        --pruning_method=songhan --cut_rate=0.5 --epochs=10
"""
import copy
import os
import time
from pathlib import Path

import pruners
from utils import checkpoint, cli
from utils.data import get_spec, load_dataset
from utils.errors import UserError
from utils.flops import FLOP_CONVENTION, layer_stats
from utils.report import count_parameters, format_timing, print_rows
from utils.timing import compare_inference, inference_batch
from utils.training import evaluate, seed_everything


def get_args_parser():
    parser = cli.new_parser(__doc__.splitlines()[0])
    cli.add_model_args(parser, from_checkpoint=True)
    parser.add_argument("--pruning_method", choices=pruners.pruner_names(), default="songhan",
                        help="songhan: Han et al. 2015 magnitude pruning; fpgm: filter pruning via "
                             "geometric median, He et al. 2019")
    parser.add_argument("--cut_rate", type=float, default=0.5,
                        help="songhan: fraction of weights removed; fpgm: fraction of filters "
                             "removed in each layer. In [0, 1)")
    parser.add_argument("--pruning_epochs", type=cli.positive_int, default=1,
                        help="pruning rounds; each prunes further along a schedule that reaches the "
                             "target at the last round, then retrains --epochs epochs")
    cli.add_training_args(parser, epochs=10, learning_rate=None,
                          learning_rate_help="retraining learning rate (default: a tenth of the "
                                             "baseline's, as Han et al. do for LeNet)")
    for pruner_class in pruners.pruner_classes():
        pruner_class.add_arguments(parser.add_argument_group(f"{pruner_class.name} options"))
    cli.add_runtime_args(parser)
    return parser


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


def measure_speed(original, pruned, test, args) -> dict:
    """Latency (batch 1) and throughput (--inference_batch_size) of the model before and after,
    timed in alternating rounds in this one process so the ratio is like for like."""
    speed = {"before": {}, "after": {}}
    for key, batch in (("latency", 1), ("throughput", args.inference_batch_size)):
        timed = compare_inference({"before": original, "after": pruned},
                                  inference_batch(test, batch), args.inference_sampling)
        for when in speed:
            speed[when][key] = timed[when]
    return speed


def print_report(before: dict, after: dict, train_seconds: float, sizes: dict, saved):
    ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"  # noqa: E731
    print("\nper layer            weights    nonzero before    nonzero after   kept")
    for name, layer in after["layers"].items():
        old = before["layers"].get(name, {"weights": layer["weights"], "nonzero": layer["nonzero"]})
        print(f"{name:<16} {old['weights']:>11,} {old['nonzero']:>17,} {layer['nonzero']:>16,}"
              f"  {layer['nonzero'] / max(old['weights'], 1):6.1%}")
    print()
    print_rows([
        ("top-1 accuracy", f"{before['top1_acc']:.2%} before, {after['top1_acc']:.2%} after"),
        ("parameters", f"{before['parameters']:,} before, {after['parameters']:,} after"),
        ("nonzero parameters", f"{before['nonzero']:,} before, {after['nonzero']:,} after "
                               f"({1 - after['nonzero'] / before['parameters']:.1%} sparsity, "
                               f"compression {ratio(before['parameters'], after['nonzero'])})"),
        ("FLOPs (dense)", f"{before['flops']:,} before, {after['flops']:,} after "
                          f"({ratio(before['flops'], after['flops'])} fewer)"),
        ("FLOPs (nonzero weights)", f"{before['nonzero_flops']:,} before, "
                                    f"{after['nonzero_flops']:,} after "
                                    f"({ratio(before['nonzero_flops'], after['nonzero_flops'])} fewer)"),
        ("retraining time", f"{train_seconds:.1f} s"),
        ("latency, batch 1", f"before {format_timing(before['latency'])}"),
        ("", f"after  {format_timing(after['latency'])}"),
        ("throughput", f"before {format_timing(before['throughput'])}"),
        ("", f"after  {format_timing(after['throughput'])}"),
        ("speed-up (median)", f"batch 1: {ratio(before['latency']['median_ms'], after['latency']['median_ms'])}, "
                              f"batch {after['throughput']['batch_size']}: "
                              f"{ratio(before['throughput']['median_ms'], after['throughput']['median_ms'])}"),
        ("checkpoint size", f"{sizes['before']:,} bytes before, {sizes['after']:,} after "
                            f"({ratio(sizes['before'], sizes['after'])} smaller)"),
        ("checkpoint", str(saved)),
    ])
    print(f"({FLOP_CONVENTION})")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if not args.load_folder_model:
        raise UserError("--load_folder_model is required: name the trained checkpoint to prune "
                        "(see checkpoints/)")
    pruner = pruners.create_pruner(args.pruning_method, args)  # checks --cut_rate and its own flags
    device = cli.resolve_device(args.device)
    generator = seed_everything(args.seed)

    parent = checkpoint.load_checkpoint(args.load_folder_model, args.checkpoint_dir,
                                        expect_model=args.model, expect_dataset=args.dataset)
    model = checkpoint.build_model(parent, device)
    dataset, model_name = parent["dataset"], parent["config"]["model"]
    spec = get_spec(dataset)
    if args.learning_rate is None:
        args.learning_rate = parent["flags"].get("learning_rate", 0.001) / 10
    train, test, spec = load_dataset(dataset, args.data_dir, device,
                                     download=not args.no_download)
    input_shape = tuple(parent["config"]["input_shape"])
    print(f"pruning {parent['path']} with {args.pruning_method}")

    before = measure(model, test, input_shape)
    original = copy.deepcopy(model)  # pruning works in place; kept to time against
    context = pruners.PruneContext(
        train=train, test=test, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, augment=spec.augment,
        generator=generator, progress=not args.no_progress)
    start = time.perf_counter()
    model = pruner.prune(model, context)
    train_seconds = time.perf_counter() - start
    after = measure(model, test, input_shape)
    speed = measure_speed(original, pruner.inference_model(model), test, args)
    del original
    before.update(speed["before"])
    after.update(speed["after"])

    name = checkpoint.checkpoint_name(model_name, dataset, after["top1_acc"], args.epochs,
                                      method=args.pruning_method)
    metrics = {"before": before, "after": after, "train_seconds": train_seconds}
    saved = checkpoint.save_checkpoint(
        checkpoint.make_checkpoint(model, dataset, metrics, vars(args),
                                   parent=Path(parent["path"]).name,
                                   sparse=pruner.sparse_checkpoint, pruning=pruner.metadata()),
        Path(args.checkpoint_dir) / name)
    sizes = {"before": os.path.getsize(parent["path"]), "after": os.path.getsize(saved)}
    print_report(before, after, train_seconds, sizes, saved)
    return {**metrics, "sizes": sizes, "path": str(saved)}


if __name__ == "__main__":
    cli.run(main)
