"""Per-layer Weights / FLOP / Nonzero Weights / MACs of a model or a checkpoint, with a Total row.

    python calFLOP.py --model=lenet_300_100 --dataset=mnist
    python calFLOP.py --load_folder_model=lenet_300_100_songhan_mnist_acc_0.9826_epoch_10 --format=csv

A compressed file (.compressed, pruning.py --quantize) is read as well: its decoded weights.

A pruned (sparse) checkpoint adds Han et al. 2015's Weights%, Act% and FLOP% columns, Act%
measured on the dataset's first --act_images test images; a compact (FPGM) checkpoint adds its
original widths' Weights and FLOP and the reduction against them.
"""
from utils.interrupts import quiet_interrupt

with quiet_interrupt():
    import sys

    import models
    import script_setup
    from pruners.graph import is_chain
    from utils import checkpoints, cli
    from utils.checkpoints.store import load_model_file
    from utils.errors import UserError
    from utils.reporting.counting import DEFAULT_ACTIVATION_IMAGES, is_sparse
    from utils.reporting.tables import RENDERERS, model_table


def get_args_parser():
    parser = cli.new_parser(__doc__)
    script_setup.add_model_args(parser, from_checkpoint=True)
    parser.add_argument("--widths", type=cli.positive_int, nargs="+", default=None,
                        help="without a checkpoint: build --model at these widths (as a compact "
                             "model would have) instead of its default ones")
    script_setup.add_model_kwargs_arg(parser)
    parser.add_argument("--act_images", type=cli.non_negative_int, default=DEFAULT_ACTIVATION_IMAGES,
                        help="test images over which a pruned checkpoint's Act%% is measured "
                             "(0: leave Han's Weights%%/Act%%/FLOP%% columns out)")
    parser.add_argument("--format", choices=sorted(RENDERERS), default="markdown",
                        help="markdown (the reference README's layout), csv or json")
    cli.add_threads_arg(parser)
    return parser


def build_table(args) -> dict:
    loaded = None
    if args.load_folder_model:
        if args.widths or args.model_kwargs:
            raise UserError(f"{'--widths' if args.widths else '--model_kwargs'} is for a model built "
                            "from flags; a checkpoint brings its own")
        loaded = load_model_file(args.load_folder_model, args.checkpoint_dir,
                                 expect_model=args.model, expect_dataset=args.dataset)
        model = checkpoints.build_model(loaded, masks=False)  # counted as stored
        dataset = loaded["dataset"]
    elif not args.model:
        raise UserError("give --model (and --dataset) to count a fresh model, or "
                        "--load_folder_model to count a checkpoint")
    else:
        dataset = args.dataset or "mnist"
        spec = script_setup.dataset_spec(args, dataset)
        model = script_setup.fresh_model(args, spec, widths=args.widths)

    images = None
    # Act% needs the dataset: read it only for a pruned checkpoint, the one case that uses it.
    if loaded is not None and args.act_images > 0 and is_sparse(model):
        _, test, _ = script_setup.load_data(args, dataset, "cpu", loaded["config"]["input_shape"])
        images = test.first_images(args.act_images)

    recorded = ((loaded or {}).get("pruning") or {}).get("original_widths")
    # Han's output-side Act% needs a plain chain: the dependency graph knows (only traced when
    # the column is measured).
    chain = images is not None and is_chain(model)
    table = model_table(model, images, original_widths=recorded, chain=chain)
    table["dataset"] = dataset
    table["checkpoint"] = loaded["path"] if loaded else None
    return table


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cli.apply_threads(args.threads)
    table = build_table(args)
    if args.format == "markdown" and table["checkpoint"]:
        print(f"{table['model']} on {table['dataset']}, {table['checkpoint']}\n")
    sys.stdout.write(RENDERERS[args.format](table))
    return table


if __name__ == "__main__":
    cli.run(main)
