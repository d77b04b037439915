"""What Han et al. magnitude pruning buys on disk and in time, measured on this machine.

1. Checkpoint size: a 12x-pruned LeNet-300-100 (8% of its weights kept) saved dense and saved
   the way pruning.py saves it (bitmask + nonzero values, utils/checkpoints/sparse_format.py).
2. Sparse inference: pruned linear layers through CSR kernels (utils/sparse_linear.py) against
   dense F.linear, per layer shape and for the whole LeNet-300-100, over densities and batch
   sizes. Timings are medians of repeated forward passes after warm-up, in eval mode under
   torch.inference_mode (utils/timing.py); dense and sparse alternate in rounds so background
   load hits both alike.
3. Global threshold: the exact k-th smallest |w| over torchvision-AlexNet-size weights (57M
   weights in conv/linear layers) by the radix select in pruners/songhan.py, against
   torch.kthvalue.

Without --load_folder_model the LeNet is a randomly initialised one pruned by magnitude (file
size and speed depend on the sparsity pattern's density, not on training); with it, the trained
checkpoint is pruned the same way (no retraining). No network.

    python benchmarks/songhan_sparse.py
    python benchmarks/songhan_sparse.py --load_folder_model=lenet_300_100_mnist_acc_0.9838_epoch_30
"""
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from models.base import weight_layers  # noqa: E402
from pruners.magnitude import find_cut, magnitude_keys  # noqa: E402
from pruners.songhan import SongHanPruner  # noqa: E402
from utils import checkpoints  # noqa: E402
from utils import cli  # noqa: E402
from utils.masks import make_permanent  # noqa: E402
from pruners.sparse_linear import (AUTO_MAX_DENSITY, AUTO_MIN_BATCH, AUTO_MIN_WEIGHTS,  # noqa: E402
                                 SparseLinear,
                                 sparse_layers, sparsify_linear_layers)
from utils.timing import time_inference  # noqa: E402

MNIST = (1, 28, 28)


def get_args_parser():
    parser = cli.new_parser(__doc__)
    parser.add_argument("--load_folder_model", default=None,
                        help="a trained lenet_300_100 checkpoint to prune (default: random init)")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="where checkpoints are read")
    parser.add_argument("--cut_rate", type=cli.fraction, default=0.92,
                        help="fraction of weights removed for the file-size figure (0.92: 12x)")
    parser.add_argument("--densities", type=cli.float_in(0.0, 1.0, low_open=True), nargs="+",
                        default=[0.02, 0.05, 0.08, 0.12, 0.2, 0.35],
                        help="weight densities for the speed tables")
    parser.add_argument("--batch_sizes", type=cli.positive_int, nargs="+", default=[1, 16, 64, 256, 1024],
                        help="batch sizes for the speed tables")
    parser.add_argument("--samples", type=cli.positive_int, default=50, help="timed passes per measurement")
    parser.add_argument("--rounds", type=cli.positive_int, default=3,
                        help="alternating dense/sparse rounds; the median of the round medians "
                             "is reported")
    cli.add_threads_arg(parser)
    parser.add_argument("--skip_threshold", action="store_true",
                        help="skip the 57M-weight global-threshold timing (builds a 230 MB model)")
    return parser


def _prune(model: nn.Module, cut_rate: float, scope: str = "global") -> nn.Module:
    """Magnitude pruning without retraining: what the speed and the file size depend on."""

    pruner = SongHanPruner(cut_rate=cut_rate, scope=scope, adjust_dropout=False,
                           sparse_inference="off")
    # prune() evaluates on the test split between pruning and retraining; prune_step plus
    # make_permanent is the same pruning without an evaluation.
    pruner.prune_step(model, 1)
    return make_permanent(model).eval()


def _lenet(args) -> nn.Module:
    if args.load_folder_model:
        loaded = checkpoints.load_checkpoint(args.load_folder_model, args.checkpoint_dir,
                                            expect_model="lenet_300_100")
        return checkpoints.build_model(loaded)
    torch.manual_seed(0)
    return models.create_model("lenet_300_100", MNIST, 10)


def file_sizes(args):
    model = _prune(_lenet(args), args.cut_rate)
    weights = sum(m.weight.numel() for _, m in weight_layers(model))
    kept = sum(int(torch.count_nonzero(m.weight)) for _, m in weight_layers(model))
    with tempfile.TemporaryDirectory() as folder:
        sizes = {}
        for sparse in (False, True):
            path = checkpoints.save_checkpoint(
                checkpoints.make_checkpoint(model, "mnist", {}, {}, sparse=sparse),
                Path(folder) / f"sparse_{sparse}.pt")
            sizes[sparse] = path.stat().st_size
            restored = checkpoints.build_model(checkpoints.load_checkpoint(str(path)))
            original = model.state_dict()
            assert all(torch.equal(v, original[k]) for k, v in restored.state_dict().items())
    print(f"\n1. checkpoint size, lenet_300_100 with {kept:,} of {weights:,} weights kept "
          f"({kept / weights:.1%}, {weights / kept:.1f}x fewer; "
          f"{'trained' if args.load_folder_model else 'random init'}, pruned by magnitude)")
    print(f"   dense file   {sizes[False]:>10,} bytes")
    print(f"   sparse file  {sizes[True]:>10,} bytes  ({sizes[False] / sizes[True]:.2f}x smaller; "
          f"both load with torch.load(weights_only=True) and restore identical tensors)")


def _alternating(dense_fn, sparse_fn, images, samples, rounds):
    """Median ms of dense and sparse, measured in alternating rounds."""
    dense, sparse = [], []
    for _ in range(rounds):
        dense.append(time_inference(dense_fn, images, samples)["median_ms"])
        sparse.append(time_inference(sparse_fn, images, samples)["median_ms"])
    return statistics.median(dense), statistics.median(sparse)


def layer_grid(args):
    print("\n2a. one pruned linear layer: dense F.linear vs CSR (SparseLinear), speed-up = "
          "dense median / sparse median")
    header = "   layer            density " + "".join(f"{'batch ' + str(b):>12}" for b in args.batch_sizes)
    print(header)
    for out_features, in_features in ((300, 784), (100, 300)):
        for density in args.densities:
            torch.manual_seed(0)
            layer = nn.Linear(in_features, out_features)
            with torch.no_grad():
                cut = torch.rand_like(layer.weight) >= density
                layer.weight[cut] = 0
            sparse = SparseLinear(layer, min_batch=1)
            cells = []
            for batch in args.batch_sizes:
                x = torch.rand(batch, in_features)
                d, s = _alternating(layer, sparse, x, args.samples, args.rounds)
                cells.append(f"{d / s:>11.2f}x")
            print(f"   {in_features:>4}->{out_features:<4}      {density:>7.0%} " + "".join(cells),
                  flush=True)


def model_grid(args):
    print(f"\n2b. whole lenet_300_100 (global magnitude pruning): dense vs --sparse_inference=on, "
          f"and what auto picks (layers at density <= {AUTO_MAX_DENSITY:.0%} with >= "
          f"{AUTO_MIN_WEIGHTS:,} weights, CSR for batches >= {AUTO_MIN_BATCH})")
    print("   density  mode " + "".join(f"{'batch ' + str(b):>12}" for b in args.batch_sizes)
          + "   sparse layers")
    base = _lenet(args)
    for density in args.densities:
        model = _prune(_clone(base), 1 - density)
        for mode in ("on", "auto"):
            fast = sparsify_linear_layers(model, mode)
            cells = []
            for batch in args.batch_sizes:
                x = torch.rand(batch, *MNIST)
                if fast is model:
                    cells.append(f"{'1.00x':>12}")
                    continue
                d, s = _alternating(model, fast, x, args.samples, args.rounds)
                cells.append(f"{d / s:>11.2f}x")
            print(f"   {density:>7.0%}  {mode:<4} " + "".join(cells)
                  + f"   {','.join(sparse_layers(fast)) or '-'}", flush=True)


def _clone(model):
    return copy.deepcopy(model)


def threshold_timing(args, repeats: int = 3):
    model = models.create_model("alexnet_imagenet", (3, 32, 32), 10)
    weights = [m.weight.detach() for _, m in weight_layers(model)]
    total = sum(w.numel() for w in weights)
    k = int(round(0.9 * total))
    radix, kth = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        cut = find_cut([magnitude_keys(w) for w in weights], k)
        radix.append(time.perf_counter() - start)
        start = time.perf_counter()
        value = torch.kthvalue(torch.cat([w.reshape(-1).abs() for w in weights]), k).values
        kth.append(time.perf_counter() - start)
    assert cut.threshold() == value.item()
    print(f"\n3. global threshold, k-th smallest |w| of {total:,} conv/linear weights "
          f"(alexnet_imagenet), k = 90%: radix select {statistics.median(radix):.3f} s, "
          f"torch.kthvalue (with the concatenation) {statistics.median(kth):.3f} s "
          f"(medians of {repeats}; same value)")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cli.apply_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.samples} timed passes x {args.rounds} alternating rounds per figure")
    file_sizes(args)
    layer_grid(args)
    model_grid(args)
    if not args.skip_threshold:
        threshold_timing(args)


if __name__ == "__main__":
    cli.run(main)
