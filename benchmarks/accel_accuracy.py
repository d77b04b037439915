"""Does a faster training option change accuracy? The same short training run with the default
layout and with each option, over several seeds: the spread across seeds is the run-to-run noise
the option's difference is judged against.

    python benchmarks/accel_accuracy.py --data_dir=/work/main/data            # lenet_5_caffe, MNIST
    python benchmarks/accel_accuracy.py --options channels_last compile --seeds 0 1 2

Each run: the model built from the seed, --epochs epochs of Adam at --learning_rate over the
shuffled training split (order from the seed, the same for every option), test accuracy at the
end. Training goes through TrainingAccelerator.step, the step the training loop uses, then
restore(); evaluation on the plain model. Reads the dataset from --data_dir; never downloads.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from utils import cli  # noqa: E402
from utils.data import BatchLoader, dataset_names, load_dataset  # noqa: E402
from utils.training import TrainingAccelerator, evaluate, make_optimizer  # noqa: E402

OPTIONS = {"default": (False, False), "channels_last": (True, False), "compile": (False, True),
           "channels_last+compile": (True, True)}


def get_args_parser():
    parser = cli.new_parser(__doc__)
    parser.add_argument("--model", choices=models.model_names(), default="lenet_5_caffe",
                        help="architecture")
    parser.add_argument("--dataset", choices=dataset_names(), default="mnist", help="dataset")
    parser.add_argument("--data_dir", default="./data", help="where the dataset is (never downloaded)")
    parser.add_argument("--options", nargs="+", choices=[o for o in OPTIONS if o != "default"],
                        default=["channels_last"], help="options compared with the default")
    parser.add_argument("--seeds", nargs="+", type=cli.int_in(0, cli.MAX_SEED), default=[0, 1, 2],
                        help="one run per seed and option")
    parser.add_argument("--epochs", type=cli.positive_int, default=2, help="training epochs")
    parser.add_argument("--batch_size", type=cli.positive_int, default=256, help="training batch size")
    parser.add_argument("--learning_rate", type=cli.positive_float, default=1e-3, help="Adam's learning rate")
    cli.add_threads_arg(parser)
    return parser


def run(args, train, test, spec, option: str, seed: int) -> dict:
    torch.manual_seed(seed)
    model = models.create_model(args.model, spec.input_shape, spec.num_classes)
    channels_last, compile_ = OPTIONS[option]
    accelerator = TrainingAccelerator(channels_last, compile_, None, torch.device("cpu"))
    optimizer = make_optimizer("adam", model.parameters(), args.learning_rate)
    loader = BatchLoader(train, args.batch_size, shuffle=True, augment=spec.augment,
                         generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    train_model = accelerator.prepare(model)
    model.train()
    try:
        for _ in range(args.epochs):
            for images, labels in loader:
                accelerator.step(train_model, images, labels, optimizer)
    finally:
        accelerator.restore(model)
    return {"acc": evaluate(model, test)["acc"], "seconds": time.perf_counter() - start}


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cli.apply_threads(args.threads)
    train, test, spec = load_dataset(args.dataset, args.data_dir, download=False)
    options = ["default"] + args.options
    print(f"{args.model} on {args.dataset}: {args.epochs} epochs, Adam lr {args.learning_rate}, "
          f"batch {args.batch_size}, seeds {args.seeds}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU")
    results = {option: [] for option in options}
    for seed in args.seeds:
        for option in options:  # alternating, so the seconds are comparable too
            r = run(args, train, test, spec, option, seed)
            results[option].append(r)
            print(f"  seed {seed}  {option:<22} test acc {r['acc']:.4f}  ({r['seconds']:.0f} s)")
    print(f"\n  {'option':<22} {'mean acc':>9} {'sd (seeds)':>11} {'mean diff vs default':>21}")
    base = [r["acc"] for r in results["default"]]
    for option in options:
        accs = [r["acc"] for r in results[option]]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        diffs = [a - b for a, b in zip(accs, base)]
        print(f"  {option:<22} {statistics.fmean(accs):>9.4f} {sd:>11.4f} "
              f"{statistics.fmean(diffs):>+21.4f}")
    return results


if __name__ == "__main__":
    cli.run(main)
