"""The way out of the toolkit: a model (dense, FPGM-compact, or decoded from a compressed file)
written as ONNX or as a plain state_dict.

- onnx: torch.onnx.export (the torch.export-based exporter, torch's default; it needs onnxscript)
  with a dynamic batch dimension, checked with onnx.checker, then run on test images and compared
  with PyTorch's outputs: written only when every logit is within 1e-4 (times the largest
  logit's magnitude when that is above 1), the largest difference printed. The comparison runs in
  onnxruntime when it is installed, else in onnx's own reference evaluator (slow, exact enough).
- state_dict: a dict of plain dense tensors (masks folded in, pruned entries +0.0), saved with
  torch.save: ``model.load_state_dict(torch.load(path, weights_only=True))`` loads it into the
  architecture with the widths the file's shapes show, without this toolkit's decoders.

Both are written atomically next to the model's file, never over another file.

    python -m utils.export --load_folder_model=<checkpoint or .compressed file> --format onnx state_dict
"""
import contextlib
import logging
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from utils import cli
from utils.errors import UserError
from utils.files import atomic_write, unused_path
from utils.registry import Registry
from utils.masks import detached_copy, make_permanent

TOLERANCE = 1e-4
# Test images the ONNX model is compared on (fewer for 224x224 models would do; this is cheap).
COMPARE_IMAGES = 64
ONNX_SUFFIX = ".onnx"
STATE_DICT_SUFFIX = ".state_dict.pth"  # not .pt: it is not one of the toolkit's checkpoints
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportMismatch(RuntimeError):
    """The exported model does not compute what the PyTorch model does."""


def add_export_arg(parser) -> None:
    parser.add_argument("--export", nargs="+", choices=EXPORT_FORMATS.names(), default=None,
                        help="also write the final model next to its checkpoint: onnx (checked "
                             "with onnx.checker and against PyTorch's outputs on test images "
                             f"within {TOLERANCE:g}) and/or state_dict (plain dense tensors, "
                             "loadable without this toolkit)")


@torch.no_grad()
@torch.no_grad()
def deployable(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode with every mask and parametrization made permanent."""
    model = detached_copy(model).cpu().eval()
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return make_permanent(model)


def plain_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {key: value.detach().cpu().contiguous().clone()
            for key, value in deployable(model).state_dict().items()}


def export_state_dict(model: nn.Module, path) -> Path:
    path = unused_path(path)
    with atomic_write(path) as f:
        torch.save(plain_state(model), f)
    return path


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model as an ONNX file's bytes, batch dimension dynamic. ``model``: deployable()."""
    try:
        import onnx  # noqa: F401  (the exporter's own import error names less clearly)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise UserError(f"ONNX export needs the {exc.name} package: pip install onnx onnxscript")
    if len(example) < 2:  # a batch of 1 would be specialised into the graph
        example = torch.cat([example, example])
    with _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto.SerializeToString()


@contextlib.contextmanager
def _quiet_loggers(*names):
    """The exporter's optimisation passes log every step at INFO, the level the scripts set."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_onnx(data: bytes, images: np.ndarray) -> np.ndarray:
    """Outputs of the ONNX model on ``images``: onnxruntime when installed, else onnx's
    reference evaluator."""
    try:
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator
        return np.asarray(ReferenceEvaluator(data).run(None, {INPUT_NAME: images})[0])
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def runtime_name() -> str:
    try:
        import onnxruntime
        return f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        return "onnx's reference evaluator (onnxruntime is not installed)"


def check_onnx(data: bytes, model: nn.Module, images: torch.Tensor,
               tolerance: float = TOLERANCE) -> dict:
    """onnx.checker on the file, then {max_abs_diff: the largest absolute difference between
    its outputs and the PyTorch model's on ``images``, largest_output: the largest |output|};
    ExportMismatch when the difference is above ``tolerance`` times the largest output's
    magnitude (or 1, whichever is larger): float32 arithmetic in another order is only that
    exact relative to the outputs (random-weight ResNet-56 logits reach 4,000, where one float32
    step is 5e-4); trained classifiers' logits stay near 1-30."""
    import onnx
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    images = images.detach().cpu().float().contiguous()
    with torch.inference_mode():
        expected = model.eval()(images).numpy()
    got = run_onnx(data, images.numpy())
    if got.shape != expected.shape:
        raise ExportMismatch(f"the ONNX model returns shape {got.shape}, PyTorch {expected.shape}")
    difference = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
    largest = float(np.max(np.abs(expected))) if expected.size else 0.0
    scale = max(1.0, largest)
    if not difference <= tolerance * scale:  # NaN fails too
        raise ExportMismatch(f"the ONNX model's outputs differ from PyTorch's by up to "
                             f"{difference:.3g} (> {tolerance:g} x {scale:.3g}, the largest "
                             "output's magnitude or 1); nothing was written")
    return {"max_abs_diff": difference, "largest_output": largest}


def export_onnx(model: nn.Module, path, images: torch.Tensor,
                tolerance: float = TOLERANCE) -> dict:
    """Export, check, and only then write. Returns {path, max_abs_diff, largest_output, images,
    runtime, bytes}."""
    model = deployable(model)
    images = images[:COMPARE_IMAGES].detach().cpu()
    data = onnx_bytes(model, images[:2])
    checked = check_onnx(data, model, images, tolerance)
    path = unused_path(path)
    with atomic_write(path) as f:
        f.write(data)
    return {"path": str(path), **checked, "images": len(images), "runtime": runtime_name(),
            "bytes": len(data)}


# An export format: (model, stem, test images, print_fn) -> {"path": ..., figures}; it writes
# ``stem`` + its own suffix and prints one line.
EXPORT_FORMATS: Registry[Callable[..., dict]] = Registry("export format")


@EXPORT_FORMATS.register("onnx")
def _to_onnx(model: nn.Module, stem: Path, images: torch.Tensor, print_fn=print) -> dict:
    result = export_onnx(model, stem.with_name(stem.name + ONNX_SUFFIX), images)
    print_fn(f"exported ONNX {result['path']} ({result['bytes']:,} bytes; onnx.checker "
             f"passed; outputs on {result['images']} test images within "
             f"{result['max_abs_diff']:.2g} of PyTorch's (largest |logit| "
             f"{result['largest_output']:.3g}), in {result['runtime']})")
    return result


@EXPORT_FORMATS.register("state_dict")
def _to_state_dict(model: nn.Module, stem: Path, images: torch.Tensor, print_fn=print) -> dict:
    path = export_state_dict(model, stem.with_name(stem.name + STATE_DICT_SUFFIX))
    print_fn(f"exported state_dict {path} (plain dense tensors: "
             "model.load_state_dict(torch.load(path, weights_only=True)))")
    return {"path": str(path)}


def export_model(model: nn.Module, stem, formats, images: torch.Tensor, print_fn=print) -> dict:
    """Each of ``formats`` written as ``stem`` + its suffix; one line printed for each."""
    stem = Path(stem)
    exporters = {name: EXPORT_FORMATS.get(name) for name in formats}  # all known before any write
    return {name: export(model, stem, images, print_fn) for name, export in exporters.items()}


# ---------------------------------------------------------------- python -m utils.export

def get_args_parser():
    parser = cli.new_parser(__doc__)
    parser.add_argument("--load_folder_model", required=True,
                        help="a checkpoint (name in --checkpoint_dir, or a path) or a compressed "
                             "file (.compressed, written by pruning.py --quantize)")
    parser.add_argument("--checkpoint_dir", default="checkpoints",
                        help="where a checkpoint name is looked up (and in checkpoints/)")
    parser.add_argument("--format", nargs="+", choices=EXPORT_FORMATS.names(), default=["onnx"],
                        help="what to write next to the file")
    parser.add_argument("--data_dir", default="./data",
                        help="where the checkpoint's dataset lives (its test images check the "
                             "ONNX model)")
    parser.add_argument("--no_download", action="store_true",
                        help="never try dataset hosts; use files in --data_dir or the offline copies")
    parser.add_argument("--no_verify_data", action="store_true",
                        help="accept dataset files that differ from the official ones")
    cli.add_threads_arg(parser)
    return parser


def main(argv=None) -> dict:
    from utils import checkpoints, data
    from utils.checkpoints.compressed import SUFFIX
    args = get_args_parser().parse_args(argv)
    cli.apply_threads(args.threads)
    loaded = checkpoints.load_model_file(args.load_folder_model, args.checkpoint_dir)
    model = checkpoints.build_model(loaded, masks=False)
    images = torch.empty(0)
    if "onnx" in args.format:
        # A folder dataset's images are sized for the model the checkpoint holds.
        size = int(loaded["config"]["input_shape"][-1])
        _, test, _ = data.load_dataset(loaded["dataset"], args.data_dir, "cpu",
                                       download=not args.no_download,
                                       verify=not args.no_verify_data, loader="auto",
                                       workers=0, image_size=size if loaded["dataset"] in
                                       data.FOLDER_DATASETS else None)
        images = test.first_images(COMPARE_IMAGES)
    source = Path(loaded["path"])
    stem = source.with_name(source.name.removesuffix(".pt").removesuffix(SUFFIX))
    return export_model(model, stem, args.format, images)


if __name__ == "__main__":
    cli.run(main)
