"""Checkpoints: one dict with the state_dict and what rebuilds the model without flags.

{"format": 1, "config": {model, input_shape, num_classes, widths}, "dataset": ...,
 "state_dict": {name: tensor or bitmask-sparse dict}, "metrics": {...}, "flags": {...},
 "parent": name or None, "torch_version": ..., plus whatever a pruner records (method, ...)}

Loaded with torch.load(weights_only=True); written to a temporary file in the same folder and
moved into place with os.replace, so an interrupted save never leaves a truncated file under the
final name.
"""
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch.torch_version import TorchVersion

import models
from utils.errors import UserError
from utils.sparse import decode_state_dict, encode_state_dict

DEFAULT_DIR = "checkpoints"
FORMAT_VERSION = 1


def checkpoint_name(model: str, dataset: str, acc: float, epochs: int,
                    method: Optional[str] = None) -> str:
    """The reference's names plus .pt: lenet_300_100_mnist_acc_0.9813_epoch_30.pt, and
    lenet_300_100_songhan_mnist_acc_0.9820_epoch_10.pt for a pruned model."""
    parts = [model] + ([method] if method else []) + [dataset, f"acc_{acc:.4f}", f"epoch_{epochs}"]
    return "_".join(parts) + ".pt"


def _plain(value):
    """Flags as types torch.load(weights_only=True) accepts."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def make_checkpoint(model: torch.nn.Module, dataset: str, metrics: dict, flags: dict,
                    parent: Optional[str] = None, sparse: bool = False, **extra) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT_VERSION,
        "config": model.config(),
        "dataset": dataset,
        "state_dict": encode_state_dict(state) if sparse else state,
        "metrics": _plain(metrics),
        "flags": _plain(flags),
        "parent": parent,
        # torch.__version__ is a TorchVersion (a str subclass) that weights_only loading refuses.
        "torch_version": str(torch.__version__),
        **_plain(extra),
    }


def save_checkpoint(checkpoint: dict, path) -> Path:
    """Atomic write: temp file in the destination folder, fsync, os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); a checkpoint gets the usual umask permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def resolve_checkpoint(name_or_path: str, checkpoint_dir=DEFAULT_DIR) -> Path:
    """A path, or a name in checkpoint_dir, with or without .pt."""
    given = Path(name_or_path)
    candidates = [given, given.with_name(given.name + ".pt"),
                  Path(checkpoint_dir) / given, Path(checkpoint_dir) / (given.name + ".pt")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    held = sorted(p.name for p in Path(checkpoint_dir).glob("*.pt")) if Path(checkpoint_dir).is_dir() else []
    listing = ", ".join(held) if held else "nothing"
    raise UserError(f"no checkpoint {name_or_path!r}; {checkpoint_dir}/ holds: {listing}")


def load_checkpoint(name_or_path: str, checkpoint_dir=DEFAULT_DIR, expect_model: Optional[str] = None,
                    expect_dataset: Optional[str] = None) -> dict:
    """The checkpoint dict with its state_dict decoded to dense tensors and ``path`` added.
    ``expect_*`` are what the flags asked for: a different checkpoint is an error naming both."""
    path = resolve_checkpoint(name_or_path, checkpoint_dir)
    try:
        # Files written before torch_version was stored as a plain str hold a TorchVersion, a str
        # subclass with no code of its own: allowing it keeps them readable.
        with torch.serialization.safe_globals([TorchVersion]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path} is not a readable checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})")
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a checkpoint of this toolkit (no config/state_dict)")
    model_name = checkpoint["config"]["model"]
    if expect_model and expect_model != model_name:
        raise UserError(f"{path.name} holds {model_name}, but --model asks for {expect_model}")
    if expect_dataset and expect_dataset != checkpoint["dataset"]:
        raise UserError(f"{path.name} was trained on {checkpoint['dataset']}, "
                        f"but --dataset asks for {expect_dataset}")
    checkpoint["state_dict"] = decode_state_dict(checkpoint["state_dict"])
    checkpoint["path"] = str(path)
    return checkpoint


def build_model(checkpoint: dict, device="cpu") -> torch.nn.Module:
    """The model a loaded checkpoint describes, weights in place."""
    config = checkpoint["config"]
    model = models.create_model(config["model"], config["input_shape"], config["num_classes"],
                                config["widths"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device)
