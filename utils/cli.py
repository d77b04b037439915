"""What the three scripts share on the command line: flag groups, device choice, and turning
user errors into one line on stderr with exit code 2."""
import argparse
import logging
import sys

import torch

import models
from utils import data, training
from utils.errors import UserError


def str2bool(text: str) -> bool:
    """--do_training True|False, as the reference spelled it."""
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes", "y", "t"):
        return True
    if lowered in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """A bad flag is one line and exit 2 like every other error a user can cause; argparse
    would print its whole usage block first."""

    def error(self, message):
        raise UserError(f"{message}; see python {self.prog} --help")


def new_parser(description: str) -> argparse.ArgumentParser:
    return OneLineErrorParser(description=description,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_model_args(parser, from_checkpoint: bool = False):
    """--model/--dataset/...; with ``from_checkpoint`` they default to the checkpoint's own and
    only serve as a check that it is the model the user meant."""
    if from_checkpoint:
        parser.add_argument("--model", choices=models.model_names(), default=None,
                            help="architecture; taken from the checkpoint, checked when given")
        parser.add_argument("--dataset", choices=data.dataset_names(), default=None,
                            help="dataset; taken from the checkpoint, checked when given")
    else:
        parser.add_argument("--model", choices=models.model_names(), required=True,
                            help="architecture to build")
        parser.add_argument("--dataset", choices=data.dataset_names(), default="mnist",
                            help="dataset (decides input shape and classes)")
    parser.add_argument("--data_dir", default="./data", help="where datasets live or are downloaded to")
    parser.add_argument("--no_download", action="store_true",
                        help="never try dataset hosts; use files in --data_dir or the offline copies")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="where checkpoints are read and written")
    parser.add_argument("--load_folder_model", default=None,
                        help="checkpoint name in --checkpoint_dir (with or without .pt) or a path")


def add_training_args(parser, epochs: int, learning_rate, learning_rate_help="learning rate"):
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=non_negative_int, default=epochs, help="training epochs")
    group.add_argument("--batch_size", type=positive_int, default=256, help="training batch size")
    group.add_argument("--learning_rate", type=positive_float, default=learning_rate,
                       help=learning_rate_help)
    group.add_argument("--optimizer", choices=training.OPTIMIZERS, default="adam", help="optimizer")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--weight_decay", type=float, default=0.0, help="L2 weight decay")
    group.add_argument("--lr_schedule", choices=training.SCHEDULES, default="cosine",
                       help="learning-rate schedule, stepped per epoch")
    group.add_argument("--seed", type=int, default=0, help="seed for initialisation, order and dropout")
    group.add_argument("--no_progress", action="store_true", help="hide the per-epoch progress bars")


def add_runtime_args(parser):
    group = parser.add_argument_group("inference timing and device")
    group.add_argument("--inference_batch_size", type=positive_int, default=256,
                       help="images per timed forward pass")
    group.add_argument("--inference_sampling", type=positive_int, default=100,
                       help="timed forward passes (after warm-up)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto takes CUDA when present")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device=cuda but torch sees no CUDA device; use --device=cpu")
    return torch.device(name)


def run(main):
    """Call main(); a UserError becomes 'error: ...' on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; nothing was saved", file=sys.stderr)
        sys.exit(130)
