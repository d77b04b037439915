"""Train (or only evaluate) a dense model, save a checkpoint, and time its inference.

    python baseline.py --model=lenet_300_100 --dataset=mnist
    python baseline.py --model=lenet_300_100 --dataset=mnist --do_training=False \
        --load_folder_model=lenet_300_100_mnist_acc_0.9813_epoch_30
"""
import time
from pathlib import Path

import models
from utils import checkpoint, cli
from utils.data import get_spec, load_dataset
from utils.errors import UserError
from utils.report import count_parameters, format_timing, print_rows
from utils.timing import inference_batch, time_inference
from utils.training import evaluate, fit, make_optimizer, make_scheduler, seed_everything


def get_args_parser():
    parser = cli.new_parser(__doc__.splitlines()[0])
    cli.add_model_args(parser)
    cli.add_training_args(parser, epochs=30, learning_rate=0.001)
    parser.add_argument("--do_training", type=cli.str2bool, default=True,
                        help="False: only evaluate and time --load_folder_model")
    parser.add_argument("--pretrained", action="store_true",
                        help="alexnet_imagenet only: start from torchvision's ImageNet weights")
    cli.add_runtime_args(parser)
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    device = cli.resolve_device(args.device)
    generator = seed_everything(args.seed)
    spec = get_spec(args.dataset)

    parent = None
    if args.load_folder_model:
        loaded = checkpoint.load_checkpoint(args.load_folder_model, args.checkpoint_dir,
                                            expect_model=args.model, expect_dataset=args.dataset)
        model = checkpoint.build_model(loaded, device)
        parent = Path(loaded["path"]).name
        print(f"loaded {loaded['path']} (widths {list(model.widths)})")
    elif not args.do_training:
        raise UserError("--do_training=False needs --load_folder_model: there is nothing to evaluate")
    else:
        extra = {"pretrained": True} if args.pretrained else {}
        model = models.create_model(args.model, spec.input_shape, spec.num_classes, **extra).to(device)

    train, test, spec = load_dataset(args.dataset, args.data_dir, device,
                                     download=not args.no_download)

    train_seconds, history = 0.0, []
    if args.do_training and args.epochs > 0:
        optimizer = make_optimizer(args.optimizer, model.parameters(), args.learning_rate,
                                   args.momentum, args.weight_decay)
        scheduler = make_scheduler(args.lr_schedule, optimizer, args.epochs)
        start = time.perf_counter()
        history = fit(model, train, test, args.epochs, args.batch_size, optimizer, scheduler,
                      augment=spec.augment, generator=generator, progress=not args.no_progress)
        train_seconds = time.perf_counter() - start

    accuracy = evaluate(model, test)["acc"]
    params = count_parameters(model)
    timing = time_inference(model, inference_batch(test, args.inference_batch_size),
                            args.inference_sampling)
    metrics = {"top1_acc": accuracy, "parameters": params["total"], "nonzero": params["nonzero"],
               "train_seconds": train_seconds, "inference": timing, "history": history}

    saved = None
    if args.do_training and args.epochs > 0:
        name = checkpoint.checkpoint_name(args.model, args.dataset, accuracy, args.epochs)
        saved = checkpoint.save_checkpoint(
            checkpoint.make_checkpoint(model, args.dataset, metrics, vars(args), parent=parent),
            Path(args.checkpoint_dir) / name)

    print_rows([
        ("model", f"{args.model} on {args.dataset} ({device})"),
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
