"""The command line's building blocks, below every script: flag types that check their values
where they are parsed (finite, in their domain), the parser that turns a bad flag into one line,
the threads flag, and ``run``, which turns a UserError into one line on stderr and exit code 2.

A leaf: it knows nothing of models, data or runs, so any module may use it. What composes those
for the scripts (flag groups of models, data, training and runs; starting the device) is
script_setup.py, beside the scripts."""
import argparse
import logging
import math
import re
import sys

import torch

from utils import distributed
from utils.errors import UserError

# torch.manual_seed takes any integer that fits 64 bits, unsigned.
MAX_SEED = 2 ** 64 - 1


def str2bool(text: str) -> bool:
    """--do_training True|False, as the reference spelled it."""
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes", "y", "t"):
        return True
    if lowered in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _number(cast, text: str):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def int_in(low: int, high: float = math.inf):
    """An integer flag type accepting low <= value <= high."""
    def parse(text: str) -> int:
        value = _number(int, text)
        if not low <= value <= high:
            bound = f"from {low} to {high}" if high != math.inf else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text}")
        return value
    return parse


def float_in(low: float = -math.inf, high: float = math.inf, low_open: bool = False,
             high_open: bool = False):
    """A finite float flag type within [low, high]; ``*_open`` excludes that end."""
    def parse(text: str) -> float:
        value = _number(float, text)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):  # NaN fails every comparison
            left = "(" if low_open else "["
            right = ")" if high_open or high == math.inf else "]"
            raise argparse.ArgumentTypeError(
                f"must be a finite number in {left}{low:g}, {high:g}{right}, got {text}")
        return value
    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)
positive_float = float_in(0.0, low_open=True)
non_negative_float = float_in(0.0)
fraction = float_in(0.0, 1.0, high_open=True)


class OneLineErrorParser(argparse.ArgumentParser):
    """A bad flag is one line and exit 2 like every other error a user can cause; argparse
    would print its whole usage block first."""

    def error(self, message):
        raise UserError(f"{message}; see python {self.prog} --help")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show (required flags, flags
    whose absence means something the help text says)."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def in_flag_words(error: UserError, names) -> UserError:
    """``error`` (raised by code that speaks in keyword arguments: ``amp='bf16' needs ...``) as
    the command line says it (``--amp=bf16 needs ...``), for the keywords ``names`` that are
    flags of the same name. Library messages name arguments; a script's names its flags."""
    message = str(error)
    for name in names:
        message = re.sub(rf"(?<![\w-]){name}='([^']*)'", rf"--{name}=\1", message)
        message = re.sub(rf"(?<![\w-]){name}(?=[=: ])", f"--{name}", message)
    return UserError(message)


def describe(docstring: str) -> str:
    """A script's --help description: the docstring's first paragraph, whole."""
    return " ".join(docstring.strip().split("\n\n")[0].split())


def new_parser(docstring: str) -> argparse.ArgumentParser:
    # allow_abbrev=False: an abbreviation that works today turns ambiguous when a flag is added.
    return OneLineErrorParser(description=describe(docstring), formatter_class=HelpFormatter,
                              allow_abbrev=False)


def add_comparison_timing_args(parser, batch_size: int, samples: int, warmup: int, rounds: int = 5):
    """The benchmarks' flags for timing two models in alternating rounds (medians)."""
    parser.add_argument("--batch_size", type=positive_int, default=batch_size,
                        help="images per pass for throughput")
    parser.add_argument("--rounds", type=positive_int, default=rounds,
                        help="alternating dense/compact rounds")
    parser.add_argument("--samples", type=positive_int, default=samples,
                        help="timed passes per round, after warm-up")
    parser.add_argument("--warmup", type=non_negative_int, default=warmup,
                        help="untimed passes before each round")


def add_threads_arg(parser):
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads torch may use (default: torch's choice, one per core); "
                             "on a shared machine fewer threads than cores give steadier timings")


def apply_threads(threads) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def run(main):
    """Call main(); a UserError becomes 'error: ...' on stderr and exit code 2 (prefixed with
    the rank on other ranks of a distributed run)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        main()
    except UserError as exc:
        print(f"{distributed.error_prefix()}error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        distributed.stop()
