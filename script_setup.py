"""What the scripts share on the command line, composed from the packages: the flag groups of
models, data, training, resumable runs and the runtime, loading data and opening runs as those
flags ask, and starting the device.

The composition root: it sits beside the scripts (baseline.py, pruning.py, calFLOP.py,
sensitivity.py, benchmarks/) and nothing in models/, pruners/ or utils/ imports it. The flag
types and the one-line-error parser it builds on are utils/cli.py, a leaf any module may use."""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

import models
from utils import data, distributed, training
from utils.cli import (MAX_SEED, add_threads_arg, apply_threads, float_in, in_flag_words, int_in,
                       non_negative_float, non_negative_int, positive_float, positive_int)
from utils.errors import UserError
from utils.files import check_writable_dir

def add_model_args(parser, from_checkpoint: bool = False):
    """--model/--dataset/...; with ``from_checkpoint`` they default to the checkpoint's own and
    only serve as a check that it is the model the user meant."""
    if from_checkpoint:
        parser.add_argument("--model", type=model_name, default=None, metavar="MODEL",
                            help="architecture; taken from the checkpoint, checked when given")
        parser.add_argument("--dataset", choices=data.dataset_names(), default=None,
                            help="dataset; taken from the checkpoint, checked when given")
    else:
        parser.add_argument("--model", type=model_name, required=True, metavar="MODEL",
                            help=f"architecture to build: {models.MODEL_NAME_HELP}. Registered: "
                                 f"{', '.join(models.model_names())}")
        add_model_kwargs_arg(parser)
        parser.add_argument("--dataset", choices=data.dataset_names(), default="mnist",
                            help="dataset (decides input shape and classes); folder: any "
                                 "--data_dir with train/ and val/ folders of class sub-folders, "
                                 "imagenet: ILSVRC-2012 in that layout")
    parser.add_argument("--data_dir", default="./data", help="where datasets live or are downloaded to")
    parser.add_argument("--no_download", action="store_true",
                        help="never try dataset hosts; use files in --data_dir or the offline copies")
    parser.add_argument("--no_verify_data", action="store_true",
                        help="use dataset files that differ from the official ones (your own data "
                             "in the same format); by default they must match the official MD5s")
    add_data_loading_args(parser)
    parser.add_argument("--checkpoint_dir", default="checkpoints",
                        help="where checkpoints are written; a --load_folder_model name is looked "
                             "up here and in checkpoints/")
    parser.add_argument("--load_folder_model", default=None,
                        help="checkpoint name in --checkpoint_dir (with or without .pt) or a path")


def add_model_kwargs_arg(parser):
    parser.add_argument("--model_kwargs", type=json_object, default=None, metavar="JSON",
                        help="keyword arguments of a torchvision or package.module:function "
                             "builder, as a JSON object (e.g. '{\"width_mult\": 0.5}'); "
                             "recorded in the checkpoint")


def model_name(text: str) -> str:
    """--model's type: the error (an unknown name, a builder that does not import) is argparse's
    one line."""
    try:
        return models.check_model_name(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object {{...}}, got {text}")
    return value


def fresh_model(args, spec, device="cpu", **extra) -> torch.nn.Module:
    """The model --model names, for the dataset ``spec`` describes, checked on one image before
    any work (a model that cannot take these images is one line naming --image_size)."""
    if models.is_external(args.model):
        if extra.pop("pretrained", False):
            raise UserError(f"--pretrained loads the toolkit's own models' ImageNet weights; "
                            f"{args.model} starts from random weights here (a torchvision "
                            "builder's weights= argument would download them)")
        extra.update(image_size=getattr(args, "image_size", None),
                     builder_kwargs=getattr(args, "model_kwargs", None))
    elif getattr(args, "model_kwargs", None):
        raise UserError(f"--model_kwargs is for torchvision and package.module:function builders; "
                        f"{args.model} takes its options from its own flags")
    model = models.create_model(args.model, spec.input_shape, spec.num_classes, **extra)
    models.check_forward(model, spec.input_shape, args.model)
    return model.to(device)


def add_data_loading_args(parser):
    group = parser.add_argument_group("data loading")
    group.add_argument("--data_loader", choices=data.DATA_LOADERS, default="auto",
                       help="tensor: each split held as one tensor on the device, batches sliced "
                            "(7x less overhead than a DataLoader for the small datasets); stream: "
                            "images read and transformed one by one in --workers processes (for "
                            "data that does not fit); auto: tensors when both splits fit in half "
                            "the free memory, folder datasets always stream")
    group.add_argument("--workers", type=non_negative_int, default=2,
                       help="DataLoader processes decoding images when streaming (0: in the "
                            "training process)")
    group.add_argument("--image_size", type=int_in(8, 4096), default=None,
                       help="folder datasets: the square input size (default 224, ImageNet's: "
                            "random resized crops for training, resize to 256/224 of it and "
                            "centre crop for evaluation); torchvision and package.module:function "
                            "models: the square size their input adapter resizes images to "
                            "(for models that need a minimum or fixed size)")


def load_data(args, dataset: str, device, input_shape=None):
    """(train, test, spec) as the data flags ask; ``input_shape`` (a checkpoint's) fixes a
    folder dataset's image size, which must then not be given differently."""
    image_size = getattr(args, "image_size", None)
    if input_shape is not None and dataset in data.FOLDER_DATASETS:
        size = int(input_shape[-1])
        if image_size is not None and image_size != size:
            raise UserError(f"--image_size={image_size} but the checkpoint's model takes {size}x"
                            f"{size} images; leave --image_size out")
        image_size = size
    if dataset not in data.FOLDER_DATASETS:
        image_size = None  # a model's input adapter resizes these (fresh_model)
    return data.load_dataset(dataset, args.data_dir, device, download=not args.no_download,
                             verify=not args.no_verify_data,
                             loader=getattr(args, "data_loader", "auto"),
                             workers=getattr(args, "workers", 0), image_size=image_size)


def dataset_spec(args, dataset: str):
    """What a model built for ``dataset`` needs (input shape, classes) without loading it: a
    folder dataset's comes from its class folders."""
    if dataset in data.FOLDER_DATASETS:
        return data.folder_spec(dataset, args.data_dir, getattr(args, "image_size", None) or 224)
    return data.get_spec(dataset)


def add_training_args(parser, epochs: int, learning_rate, learning_rate_help="learning rate"):
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=non_negative_int, default=epochs, help="training epochs")
    group.add_argument("--batch_size", type=positive_int, default=256, help="training batch size")
    group.add_argument("--learning_rate", type=positive_float, default=learning_rate,
                       help=learning_rate_help)
    group.add_argument("--optimizer", choices=training.OPTIMIZERS, default="adam", help="optimizer")
    group.add_argument("--momentum", type=float_in(0.0, 1.0, high_open=True), default=0.9,
                       help="SGD momentum, in [0, 1)")
    group.add_argument("--weight_decay", type=non_negative_float, default=0.0,
                       help="L2 weight decay, zero or more")
    group.add_argument("--lr_schedule", choices=training.SCHEDULES, default="cosine",
                       help="learning-rate schedule, stepped per epoch")
    group.add_argument("--seed", type=int_in(0, MAX_SEED), default=0,
                       help="seed for initialisation, batch order, augmentation and dropout")
    group.add_argument("--no_progress", action="store_true", help="hide the per-epoch progress bars")
    training.add_acceleration_args(group)


def add_run_args(parser):
    """Resumable runs, run logs and distributed training: the flags of scripts that train."""
    group = parser.add_argument_group("resumable runs, logs and distributed training")
    group.add_argument("--save_every", type=non_negative_int, default=0,
                       help="write a resumable state (model, optimizer, schedule, epoch, random "
                            "states, pruning state) every N epochs and at the end of each "
                            "training phase, to <checkpoint_dir>/<run>.resume.pt; 0: never")
    group.add_argument("--resume", default=None, metavar="PATH",
                       help="continue the run that wrote this resumable state, with the flags "
                            "it was started with (only " + ", ".join(RESUME_OVERRIDES) + " may "
                            "be given again); it ends with exactly the weights the uninterrupted "
                            "run would have (same seed, same device)")
    group.add_argument("--tensorboard", default=None, metavar="DIR",
                       help="also write the per-epoch figures of the metrics file (always "
                            "written next to the checkpoint) as TensorBoard scalars into DIR")
    group.add_argument("--sync_bn", action="store_true",
                       help="under torchrun on GPUs: BatchNorm statistics over all processes' "
                            "batches (SyncBatchNorm) instead of each process's own")


# What may change when a run is resumed: where and how it runs, never what it computes.
RESUME_OVERRIDES = ("--threads", "--device", "--no_progress", "--workers", "--data_dir",
                    "--save_every", "--tensorboard")


def _given_flags(argv) -> list:
    return [token.split("=", 1)[0] for token in argv if token.startswith("--")]


def _without_resume(argv) -> tuple:
    """(the --resume value or None, argv without it)."""
    value, rest, tokens = None, [], iter(argv)
    for token in tokens:
        if token == "--resume":
            value = next(tokens, None)
        elif token.startswith("--resume="):
            value = token.split("=", 1)[1]
        else:
            rest.append(token)
    return value, rest


def parse_resumable(parser, argv, script: str):
    """(args, the run's flags, the resumed state or None). With --resume the flags are the
    interrupted run's own, plus any of RESUME_OVERRIDES given now."""
    argv = sys.argv[1:] if argv is None else list(argv)
    resume, rest = _without_resume(argv)
    if resume is None:
        return parser.parse_args(argv), argv, None
    if not resume:
        raise UserError("--resume needs the path of a resumable state (<run>.resume.pt)")
    extra = [flag for flag in _given_flags(rest) if flag not in RESUME_OVERRIDES]
    if extra:
        raise UserError(f"--resume continues the run with the flags it was started with; leave "
                        f"out {', '.join(dict.fromkeys(extra))}")
    state = training.load_state(resume)
    if state["script"] != script:
        raise UserError(f"--resume={resume} is a {state['script']}.py run; resume it with "
                        f"python {state['script']}.py --resume={resume}")
    args = parser.parse_args(list(state["args"]) + rest)
    args.resume = resume
    return args, list(state["args"]), state


def open_run(script: str, args, argv, stem: str, resumed=None) -> "training.TrainingRun":
    """The TrainingRun of a script that trains: its metrics file next to the checkpoints (and
    TensorBoard when asked), its resumable state when --save_every or --resume asks."""
    from utils.training.runlog import METRICS_SUFFIX, RunLog
    if resumed is not None:
        stem = resumed["stem"]
    else:  # rank 0's clock names the run on every rank
        stem = distributed.broadcast_object(f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}")
    folder = Path(args.checkpoint_dir)
    state_path = Path(args.resume) if resumed is not None else (
        folder / f"{stem}.resume.pt" if args.save_every else None)
    log = None
    if distributed.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        log = RunLog(folder / f"{stem}{METRICS_SUFFIX}", args.tensorboard,
                     keep_rows=resumed["log_rows"] if resumed is not None else None)
    return training.TrainingRun(script, list(argv), state_path, args.save_every, resumed, log,
                                stem=stem)


def add_validation_arg(parser):
    parser.add_argument("--val_split", type=float_in(0.0, 1.0, low_open=True, high_open=True),
                        default=None,
                        help="fraction of the training images held out as a validation split "
                             "(chosen by --seed, recorded in the checkpoint, kept out of every "
                             "later run on it): per-epoch figures and sensitivity.py use it and "
                             "the test split is evaluated once, at the end. Default: none, or "
                             "the loaded checkpoint's")


def add_runtime_args(parser):
    group = parser.add_argument_group("inference timing, device and threads")
    group.add_argument("--inference_batch_size", type=positive_int, default=256,
                       help="images per timed forward pass")
    group.add_argument("--inference_sampling", type=positive_int, default=100,
                       help="timed forward passes (after warm-up)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto takes CUDA when present")
    add_threads_arg(group)


def check_dirs(args, dataset: str, write_checkpoints: bool = True) -> None:
    """Folders the run will write, checked before any work starts: --data_dir when the dataset's
    files must still be put there, --checkpoint_dir when a checkpoint will be saved."""
    data_dir = Path(args.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"--data_dir={data_dir} is a file, not a folder; give a folder")
    if dataset in data.FOLDER_DATASETS:
        data.folder_spec(dataset, data_dir, args.image_size or 224)  # present, same classes
    elif args.image_size is not None and not models.is_external(getattr(args, "model", None) or ""):
        raise UserError(f"--image_size applies to the folder datasets, and to torchvision and "
                        f"package.module:function models, not to {getattr(args, 'model', None) or 'a checkpoint'} "
                        f"on {dataset}")
    elif not data.get_spec(dataset).is_present(data_dir):
        check_writable_dir(data_dir, "--data_dir")
    if write_checkpoints:
        check_writable_dir(args.checkpoint_dir, "--checkpoint_dir")


def resolve_device(flag: str) -> torch.device:
    """--device's value as a device; the error names the flag."""
    if flag == "cuda" and not torch.cuda.is_available():
        raise UserError("--device=cuda but torch sees no CUDA device; use --device=cpu")
    return distributed.resolve_device(flag)


def start_runtime(args) -> torch.device:
    """Threads, then the device: this rank's, joining the process group when torchrun
    launched the script (utils.distributed)."""
    apply_threads(args.threads)
    resolve_device(args.device)  # the flag's own error before any process group
    device = distributed.start(args.device)
    if hasattr(args, "amp"):  # before any data is read: --amp on a CPU, --compile without a compiler
        try:
            training.acceleration.check_acceleration(args.compile, args.amp, device)
        except UserError as exc:
            raise in_flag_words(exc, ("amp", "compile")) from None
    if getattr(args, "sync_bn", False):
        if not distributed.active():
            raise UserError("--sync_bn shares BatchNorm statistics between the processes of a "
                            "torchrun launch; this run has one process: leave it out")
        if device.type != "cuda":
            raise UserError("--sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU "
                            "kernel); leave it out on the CPU")
    return device




def flag_defaults(add_flags: Callable) -> Dict[str, object]:
    """dest -> default of the flags ``add_flags(parser_or_group)`` adds, learnt on a parser of
    their own (argparse's public API: what a group holds is private to it)."""
    probe = argparse.ArgumentParser(add_help=False)
    add_flags(probe)
    return vars(probe.parse_args([]))


def foreign_flags(args, method: str, groups: dict) -> List[str]:
    """Flags of groups ``method`` does not read (``groups``: title -> (flag_defaults of the
    group, methods that read it)) that ``args`` sets to something other than their default:
    given to ``method``, they would be silently ignored. Spelt --dest, as every flag here is."""
    given = []
    for defaults, methods in groups.values():
        if method in methods:
            continue
        given += [f"--{dest}" for dest, default in defaults.items()
                  if getattr(args, dest, None) != default]
    return given
