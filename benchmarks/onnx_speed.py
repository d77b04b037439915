"""What FPGM's physical removal buys in a deployment runtime: dense and compact models exported
to ONNX (utils/export.py) and run in onnxruntime.

    python benchmarks/onnx_speed.py                                    # random weights
    python benchmarks/onnx_speed.py --load_folder_model=<fpgm-compact or dense checkpoint>

Each pair is exported with torch.onnx, checked with onnx.checker and against PyTorch's outputs on
--compare_images random images (within 1e-4), then timed in onnxruntime (CPU execution provider,
its default graph optimisations): throughput at --batch_size and latency at batch 1, over
--rounds rounds that alternate dense and compact, every round --samples runs after --warmup; a
speed-up is the median of the rounds' own ratios (utils.timing.speedup), so load from other
processes that comes and goes between rounds moves both sides of each ratio alike. Speed depends on
the widths only, so random weights time as well as trained ones. A checkpoint that pruning.py
compacted is timed against a model of its original widths; a dense one against FPGM's selection
at --cut_rate. Without onnxruntime the exports are still checked (in onnx's reference
evaluator) and the script says that nothing was timed.
"""
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from benchmarks.fpgm_speed import flops, prune_untrained  # noqa: E402
from utils import checkpoints, cli, export  # noqa: E402
from utils.reporting.counting import FLOP_CONVENTION  # noqa: E402
from utils.timing import alternate_calls, speedup, summarize_rounds  # noqa: E402

# (model, input shape, cut rate, --prune_residual, --channel_multiple)
ARCHITECTURES = {
    "lenet_5_caffe": ("lenet_5_caffe", (1, 28, 28), 0.4, False, 1),
    "resnet56": ("resnet56", (3, 32, 32), 0.4, False, 1),
    "resnet56_residual_aligned": ("resnet56", (3, 32, 32), 0.4, True, 8),
}


def get_args_parser():
    parser = cli.new_parser(__doc__)
    parser.add_argument("--load_folder_model", default=None,
                        help="a checkpoint (fpgm-compacted, or dense) to time instead of "
                             "--architectures; in --checkpoint_dir or a path")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="where checkpoints are read")
    parser.add_argument("--cut_rate", type=cli.fraction, default=0.4,
                        help="FPGM's rate for a dense --load_folder_model")
    parser.add_argument("--architectures", nargs="*", choices=sorted(ARCHITECTURES),
                        default=["lenet_5_caffe", "resnet56_residual_aligned"],
                        help="random-weight pairs to time when no checkpoint is given")
    cli.add_comparison_timing_args(parser, batch_size=64, samples=20, warmup=5)
    parser.add_argument("--compare_images", type=cli.positive_int, default=64,
                        help="random images the ONNX outputs are compared with PyTorch's on")
    parser.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0,
                        help="seed for weights and images")
    cli.add_threads_arg(parser)
    return parser


def session(data: bytes, threads):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def alternate(sessions: dict, images, args) -> dict:
    """Per session, the timing summary (utils.timing) of --samples runs per round over --rounds
    rounds in which the sessions take turns, each after --warmup untimed runs."""
    calls = {key: partial(sess.run, None, {sess.get_inputs()[0].name: images})
             for key, sess in sessions.items()}
    times = alternate_calls(calls, args.rounds, args.samples, args.warmup)
    return {key: summarize_rounds(per_round, len(images)) for key, per_round in times.items()}


def compare(dense, compact, label: str, args) -> dict:
    """Export and check both, then time them in onnxruntime; print and return the figures."""
    torch.manual_seed(args.seed)
    shape = tuple(dense.input_shape)
    check_images = torch.randn(args.compare_images, *shape)
    files, differences, largest = {}, {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for key, model in (("dense", dense), ("compact", compact)):
            result = export.export_onnx(model, Path(folder) / f"{key}.onnx", check_images)
            files[key] = Path(result["path"]).read_bytes()
            differences[key] = result["max_abs_diff"]
            largest[key] = result["largest_output"]
    f_dense, f_compact = flops(dense), flops(compact)
    print(f"\n{label}")
    if getattr(dense, "widths", None) is not None:  # registered models; others: the structure
        print(f"  widths          {list(dense.widths)} -> {list(compact.widths)}")
    print(f"  parameters      {sum(p.numel() for p in dense.parameters()):,} -> "
          f"{sum(p.numel() for p in compact.parameters()):,}")
    print(f"  FLOPs per image {f_dense:,} -> {f_compact:,} ({f_dense / f_compact:.2f}x fewer)")
    print(f"  ONNX files      {len(files['dense']):,} -> {len(files['compact']):,} bytes; onnx.checker "
          f"passed; outputs within {differences['dense']:.2g} (dense) and "
          f"{differences['compact']:.2g} (compact) of PyTorch's on {args.compare_images} images, "
          f"whose largest |output| is {largest['dense']:.3g} and {largest['compact']:.3g} "
          f"(tolerance {export.TOLERANCE:g} x max(1, largest)), in {export.runtime_name()}")
    figures = {"flop_ratio": f_dense / f_compact, "max_abs_diff": differences}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("  timing          onnxruntime is not installed (pip install onnxruntime): nothing timed")
        return figures
    sessions = {key: session(data, args.threads) for key, data in files.items()}
    batch = torch.randn(args.batch_size, *shape).numpy()
    for name, images in (("throughput", batch), ("latency", batch[:1].copy())):
        timing = alternate(sessions, images, args)
        size, ms = len(images), {key: summary["median_ms"] for key, summary in timing.items()}
        ratio = speedup(timing["dense"], timing["compact"])
        print(f"  {name:<10} batch {size:<4} {ms['dense']:.3f} ms -> {ms['compact']:.3f} ms "
              f"({size * 1000 / ms['dense']:,.0f} -> {size * 1000 / ms['compact']:,.0f} img/s, "
              f"speed-up {ratio:.2f}x)")
        figures[f"{name}_speedup"] = ratio
        figures[f"{name}_ms"] = ms
    return figures


def from_checkpoint(args) -> dict:
    loaded = checkpoints.load_checkpoint(args.load_folder_model, args.checkpoint_dir)
    model = checkpoints.build_model(loaded, masks=False).eval()
    name = Path(loaded["path"]).name
    original = (loaded.get("pruning") or {}).get("original_widths")
    if original and list(original) != list(model.widths):  # compacted by pruning.py
        config = loaded["config"]
        torch.manual_seed(args.seed)
        dense = models.create_model(config["model"], config["input_shape"], config["num_classes"],
                                    original, **config.get("options", {})).eval()
        return compare(dense, model, f"{name} vs its original widths (random weights)", args)
    compact, _ = prune_untrained(model, args.cut_rate)
    return compare(model, compact.eval(), f"{name}, fpgm at cut_rate {args.cut_rate}", args)


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    cli.apply_threads(args.threads)
    print(f"torch {torch.__version__}, {export.runtime_name()}, "
          f"{args.threads or 'default'} threads, CPU; median of {args.rounds} alternating rounds")
    if args.load_folder_model:
        results = {"checkpoint": from_checkpoint(args)}
    else:
        results = {}
        for key in args.architectures:
            name, shape, rate, residual, multiple = ARCHITECTURES[key]
            torch.manual_seed(args.seed)
            dense = models.create_model(name, shape, 10).eval()
            compact, _ = prune_untrained(dense, rate, residual, multiple)
            options = (" --prune_residual" if residual else "") + (
                f" --channel_multiple={multiple}" if multiple > 1 else "")
            results[key] = compare(dense, compact.eval(),
                                   f"{name}, fpgm {rate:.0%}{options} (random weights)", args)
    print(f"\n({FLOP_CONVENTION})")
    return results


if __name__ == "__main__":
    cli.run(main)
