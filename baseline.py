"""Train (or only evaluate) a model, save a checkpoint, and time its inference.

    python baseline.py --model=lenet_300_100 --dataset=mnist
    python baseline.py --model=lenet_300_100 --dataset=mnist --do_training=False \
        --load_folder_model=lenet_300_100_mnist_acc_0.9838_epoch_30

With --load_folder_model it continues training that checkpoint (fine-tuning); a pruned one keeps
its masks, so its pruned weights stay zero. Under torchrun --nproc_per_node=N it trains on N
processes (DistributedDataParallel); --save_every and --resume make a long run resumable.
"""
from utils.interrupts import quiet_interrupt

with quiet_interrupt():
    import time
    from pathlib import Path

    import models
    import script_setup
    from utils import checkpoints, cli, distributed
    from utils.data import held_out
    from utils.errors import UserError
    from utils.masks import make_permanent
    from utils.reporting.console import format_timing, print_rows
    from utils.reporting.counting import count_parameters
    from utils.timing import inference_batch, time_inference
    from utils.training import TrainingSettings, evaluate, fit, seed_everything
    from utils.training.runlog import check_tensorboard


def get_args_parser():
    parser = cli.new_parser(__doc__)
    script_setup.add_model_args(parser)
    script_setup.add_training_args(parser, epochs=30, learning_rate=0.001)
    parser.add_argument("--do_training", type=cli.str2bool, default=True,
                        help="False: only evaluate and time --load_folder_model")
    script_setup.add_validation_arg(parser)
    script_setup.add_run_args(parser)
    parser.add_argument("--pretrained", action="store_true",
                        help="alexnet_imagenet only: start from torchvision's ImageNet weights")
    script_setup.add_runtime_args(parser)
    return parser


def check_flags(args) -> bool:
    """Whether this run trains; flag combinations that would do nothing, or ignore a flag, are
    refused here, before anything is loaded."""
    trains = args.do_training and args.epochs > 0
    if not trains and not args.load_folder_model:
        reason = "--do_training=False" if not args.do_training else "--epochs=0"
        raise UserError(f"{reason} needs --load_folder_model: there is nothing to train or evaluate")
    if args.pretrained and args.load_folder_model:
        raise UserError("--pretrained starts from torchvision's weights, --load_folder_model from a "
                        "checkpoint: give one of them")
    if not trains and (args.save_every or args.tensorboard):
        raise UserError("--save_every and --tensorboard log training; this run does not train")
    if args.tensorboard:
        check_tensorboard()
    return trains


def main(argv=None):
    args, run_flags, resumed = script_setup.parse_resumable(get_args_parser(), argv, "baseline")
    trains = check_flags(args)
    device = script_setup.start_runtime(args)

    loaded = None
    if args.load_folder_model:
        loaded = checkpoints.load_checkpoint(args.load_folder_model, args.checkpoint_dir,
                                             expect_model=args.model, expect_dataset=args.dataset)
    script_setup.check_dirs(args, args.dataset, write_checkpoints=trains)
    settings = TrainingSettings.from_args(args)
    generator = seed_everything(args.seed)
    train, test, spec = script_setup.load_data(args, args.dataset, device,
                                      loaded["config"]["input_shape"] if loaded else None)
    if loaded is not None:
        model = checkpoints.build_model(loaded, device)  # a pruned model keeps its masks
        print(f"loaded {loaded['path']} ({checkpoints.describe_structure(loaded)})")
    else:
        extra = {"pretrained": True} if args.pretrained else {}
        model = script_setup.fresh_model(args, spec, device, **extra)

    validation = ({"fraction": args.val_split, "seed": args.seed} if args.val_split
                  else (loaded or {}).get("validation"))
    train, val = held_out(train, validation)

    train_seconds, history, run = 0.0, [], None
    if trains:
        run = script_setup.open_run("baseline", args, run_flags, f"{args.model}_{args.dataset}", resumed)
        history = fit(model, train, val or test, settings, augment=spec.augment,
                      generator=generator, monitor_name="val" if val else "test", run=run)
        train_seconds = run.elapsed()

    accuracy = evaluate(model, test)["acc"]  # the test split, once
    params = count_parameters(model)
    metrics = {"top1_acc": accuracy, "parameters": params["total"], "nonzero": params["nonzero"],
               "train_seconds": train_seconds, "history": history}
    if val is not None:
        metrics["val_acc"] = evaluate(model, val)["acc"]

    saved = metrics_file = None
    if trains:  # saved before timing: a Ctrl-C while timing must not cost the trained model
        root_rate = checkpoints.root_learning_rate(loaded) if loaded else args.learning_rate
        checkpoint = checkpoints.make_checkpoint(
            model, args.dataset, metrics, vars(args),
            parent=Path(loaded["path"]).name if loaded else None,
            root_learning_rate=root_rate, validation=validation,
            **({"pruning": loaded["pruning"]} if loaded and loaded.get("pruning") else {}))
        name = checkpoints.checkpoint_name(args.model, args.dataset, accuracy, args.epochs)
        saved = distributed.on_main(lambda: checkpoints.save_checkpoint(
            checkpoint, Path(args.checkpoint_dir) / name))
        metrics_file = run.finish(saved)
        print(f"saved {saved}" + (f" (per-epoch figures: {metrics_file})" if metrics_file else ""))
    distributed.check_same_weights(model)

    make_permanent(model)  # time the plain model, without the masks' per-forward multiply
    timing = distributed.on_main(lambda: time_inference(
        model, inference_batch(test, args.inference_batch_size), args.inference_sampling))
    metrics["inference"] = timing
    if saved is not None:
        distributed.on_main(lambda: checkpoints.update_metrics(checkpoint, saved, metrics))

    print_rows([
        ("model", f"{args.model} on {args.dataset} ({device}"
                  f"{f' x {distributed.world_size()} processes' if distributed.active() else ''})"),
        ("top-1 accuracy", f"{accuracy * 100:.2f}%"),
        ("parameters", f"{params['total']:,} total, {params['nonzero']:,} nonzero"),
        ("training time", f"{train_seconds:.1f} s" if history else "not trained"),
        ("inference time", format_timing(timing)),
        ("checkpoint", str(saved) if saved else "not saved (no training)"),
    ])
    # The path lets callers (benchmarks/reproduce.py) find the file it wrote; like pruning.py's.
    return {**metrics, "path": str(saved) if saved else None}


if __name__ == "__main__":
    cli.run(main)
