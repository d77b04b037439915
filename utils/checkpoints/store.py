"""Checkpoints: one dict with the state_dict and what rebuilds the model without flags.

{"format": 2, "config": {model, input_shape, num_classes, widths}, "dataset": ...,
 "state_dict": {name: tensor or bitmask-sparse entry}, "metrics": {...}, "flags": {...},
 "parent": name or None, "root_learning_rate": the chain's baseline rate, "torch_version": ...,
 plus whatever a pruner records (pruning: {method, ...})}

Masked (pruned) tensors carry their masks in the bitmask entries (see sparse_format.py), so a
loaded model keeps its pruned weights pruned through any further training. Loaded with
torch.load(weights_only=True) and checked against its own config; written atomically
(utils/files.py), never over another checkpoint unless asked.
"""
import glob
import pickle
import zipfile
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch.torch_version import TorchVersion

from utils.checkpoints.builders import build, registered_spec
from utils.checkpoints.compressed import SUFFIX, is_compressed, load_compressed
from utils.checkpoints.sparse_format import DamagedTensor, decode_state_dict, encode_state_dict
from utils.errors import UserError
from utils.files import atomic_write, unused_path
from utils.masks import apply_masks, plain_state_dict
from utils.structure import apply_structure, structure

DEFAULT_DIR = "checkpoints"
FORMAT_VERSION = 2
_CONFIG_KEYS = ("model", "input_shape", "num_classes", "widths")


def checkpoint_name(model: str, dataset: str, acc: float, epochs: int,
                    method: Optional[str] = None) -> str:
    """The reference's names plus .pt: lenet_300_100_mnist_acc_0.9813_epoch_30.pt, and
    lenet_300_100_songhan_mnist_acc_0.9820_epoch_10.pt for a pruned model."""
    # A builder's "package.module:function" names a file as "package.module-function".
    parts = [model.replace(":", "-")] + ([method] if method else []) + [dataset, f"acc_{acc:.4f}",
                                                                        f"epoch_{epochs}"]
    return "_".join(parts) + ".pt"


def describe_structure(checkpoint: dict) -> str:
    """What a loaded checkpoint's model looks like, in a few words: its widths, or how many
    modules surgery made smaller (a model without a widths config), and its masks."""
    widths = checkpoint["config"].get("widths")
    changed = len(checkpoint.get("structure") or {})
    text = (f"widths {list(widths)}" if widths is not None
            else f"{changed} modules made smaller by pruning" if changed else "unpruned structure")
    return text + (", with its pruning masks" if checkpoint.get("masks") else "")


def plain(value):
    """Flags and metrics as types torch.load(weights_only=True) accepts."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def make_checkpoint(model: torch.nn.Module, dataset: str, metrics: dict, flags: dict,
                    parent: Optional[str] = None, sparse: bool = False,
                    root_learning_rate: Optional[float] = None, **extra) -> dict:
    """``sparse``: store tensors with many zeros as bitmask + values. Tensors under a
    torch.nn.utils.prune mask are always stored with their mask."""
    state, masks = plain_state_dict(model)
    config = model.config()
    return {
        "format": FORMAT_VERSION,
        "config": config,
        # What the config's widths do not describe (a torchvision or user model compacted):
        # per module, the shapes and attributes that differ from the model the config builds.
        "structure": plain(structure(build(registered_spec(config)), model)),
        "dataset": dataset,
        "state_dict": encode_state_dict(state, masks, sparse=sparse),
        "metrics": plain(metrics),
        "flags": plain(flags),
        "parent": parent,
        "root_learning_rate": root_learning_rate,
        # torch.__version__ is a TorchVersion (a str subclass) that weights_only loading refuses.
        "torch_version": str(torch.__version__),
        **plain(extra),
    }


def save_checkpoint(checkpoint: dict, path, overwrite: bool = False) -> Path:
    """Atomic write; an existing file of the same name is kept and the new one gets the next free
    name (_2, _3, ...) unless ``overwrite`` (a run updating its own file)."""
    path = Path(path) if overwrite else unused_path(path)
    with atomic_write(path) as f:
        torch.save(checkpoint, f)
    return path


def update_metrics(checkpoint: dict, path, metrics: dict) -> Path:
    """Rewrite this run's own file with ``metrics`` in place of those it was saved with (timings
    measured after the save, which came first so that an interrupted timing loses nothing)."""
    checkpoint["metrics"] = plain(metrics)
    return save_checkpoint(checkpoint, path, overwrite=True)


def resolve_checkpoint(name_or_path: str, checkpoint_dir=DEFAULT_DIR) -> Path:
    """A path, or a name (with or without .pt) in ``checkpoint_dir`` or, when that is another
    folder, in the default checkpoints/ folder. A name may hold shell wildcards
    (``lenet_300_100_mnist_acc_*_epoch_30``: the accuracy in a name is only known once trained)
    if it matches exactly one checkpoint."""
    given = Path(name_or_path)
    folders = [Path(checkpoint_dir)] + ([Path(DEFAULT_DIR)] if Path(checkpoint_dir) != Path(DEFAULT_DIR) else [])
    if any(c in name_or_path for c in "*?["):
        pattern = name_or_path if name_or_path.endswith(".pt") else name_or_path + ".pt"
        # glob.glob, not Path.glob: the pattern may be an absolute path.
        matches = sorted({Path(p) for folder in [Path(".")] + folders
                          for p in glob.glob(str(folder / pattern)) if Path(p).is_file()})
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UserError(f"{name_or_path!r} matches {len(matches)} checkpoints "
                            f"({', '.join(str(m) for m in matches)}); give one of them")
    candidates = [given, given.with_name(given.name + ".pt")]
    for folder in folders:
        candidates += [folder / given, folder / (given.name + ".pt")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    held = sorted({p.name for folder in folders if folder.is_dir() for p in folder.glob("*.pt")})
    listing = ", ".join(held) if held else "nothing"
    where = " and ".join(f"{folder}/" for folder in folders)
    raise UserError(f"no checkpoint {name_or_path!r}; {where} {'hold' if len(folders) > 1 else 'holds'}: "
                    f"{listing}")


def _check_config(checkpoint: dict, path: Path) -> dict:
    config = checkpoint.get("config")
    if not isinstance(config, dict) or any(key not in config for key in _CONFIG_KEYS):
        raise UserError(f"{path} is not a checkpoint of this toolkit (its config lacks "
                        f"{', '.join(k for k in _CONFIG_KEYS if not isinstance(config, dict) or k not in config)})")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{path} is not a checkpoint of this toolkit (no state_dict)")
    return config


def _not_a_checkpoint(path: Path, exc: Exception) -> str:
    """The one line for a file torch.load(weights_only=True) refused."""
    expected = ("expected a checkpoint written by baseline.py or pruning.py (torch.save of a "
                "checkpoint dict, read with weights_only=True)")
    if is_compressed(path):
        return (f"{path} is a compressed file (pruning.py --quantize), not a checkpoint: this "
                f"script reads checkpoints only; calFLOP.py and python -m utils.export read "
                f"compressed files, and {path.name.removesuffix(SUFFIX)}.pt is its pruned "
                "checkpoint")
    if path.name.endswith(SUFFIX):
        return (f"{path} is neither a compressed file (its first bytes are not the format's "
                f"signature) nor a checkpoint; {expected}, or a compressed file written by "
                "pruning.py --quantize")
    if path.stat().st_size == 0:
        return f"{path} is empty, not a checkpoint; {expected}"
    if zipfile.is_zipfile(path):
        if isinstance(exc, pickle.UnpicklingError):
            return (f"{path} holds pickled Python objects besides tensors and plain values (a "
                    f"whole module?), which this toolkit never unpickles; {expected}")
        return f"{path} is a damaged torch archive ({type(exc).__name__}); {expected}"
    return f"{path} is not a checkpoint (not a torch.save archive); {expected}"


def read_file(path: Path):
    """What torch.save wrote to ``path``, read with weights_only=True; a file that is not such an
    archive is one UserError saying what it is not (torch's own message advises
    weights_only=False, an unsafe load)."""
    try:
        # Files written before torch_version was stored as a plain str hold a TorchVersion, a str
        # subclass with no code of its own: allowing it keeps them readable.
        with torch.serialization.safe_globals([TorchVersion]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns of foreign pickles before refusing them
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(_not_a_checkpoint(path, exc)) from None


def load_checkpoint(name_or_path: str, checkpoint_dir=DEFAULT_DIR, expect_model: Optional[str] = None,
                    expect_dataset: Optional[str] = None) -> dict:
    """The checkpoint dict with its state_dict decoded to dense tensors, its masks under
    ``masks`` and ``path`` added. ``expect_*`` are what the flags asked for: a different
    checkpoint is an error naming both. A damaged file is one UserError."""
    path = resolve_checkpoint(name_or_path, checkpoint_dir)
    checkpoint = read_file(path)
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not a checkpoint of this toolkit (not a dict)")
    model_name = _check_config(checkpoint, path)["model"]
    if expect_model and expect_model != model_name:
        raise UserError(f"{path.name} holds {model_name}, but --model asks for {expect_model}")
    if expect_dataset and expect_dataset != checkpoint.get("dataset"):
        raise UserError(f"{path.name} was trained on {checkpoint.get('dataset')}, "
                        f"but --dataset asks for {expect_dataset}")
    try:
        checkpoint["state_dict"], checkpoint["masks"] = decode_state_dict(checkpoint["state_dict"])
    except DamagedTensor as exc:
        raise UserError(f"{path} is damaged: {exc}")
    checkpoint["path"] = str(path)
    checkpoint.setdefault("flags", {})
    return checkpoint


def build_model(checkpoint: dict, device="cpu", masks: bool = True) -> torch.nn.Module:
    """The model a loaded checkpoint describes, weights in place and, with ``masks``, its pruning
    masks on (through torch.nn.utils.prune), so that training it keeps pruned weights at zero.
    Weights that do not fit the checkpoint's own config are one UserError."""
    config = checkpoint["config"]
    path = checkpoint.get("path", "the checkpoint")
    model = build(registered_spec(config))
    apply_structure(model, checkpoint.get("structure", {}), source=str(path))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"{path}: its tensors do not fit its own config ({config['model']}, "
                        f"widths {config['widths']}): {detail}")
    if masks and checkpoint.get("masks"):
        apply_masks(model, checkpoint["masks"])
    return model.to(device)


def load_model_file(name_or_path: str, checkpoint_dir="checkpoints", expect_model: Optional[str] = None,
                    expect_dataset: Optional[str] = None) -> dict:
    """A checkpoint or a compressed file, as the dict build_model takes: the one loader of the
    scripts that read both (calFLOP.py, utils.export). A file is read as compressed when it
    carries the signature or is named .compressed (so foreign bytes under that name are refused
    as a compressed file, not as a pickle); ``expect_*`` as for load_checkpoint."""
    path = resolve_checkpoint(name_or_path, checkpoint_dir)
    if not (is_compressed(path) or path.name.endswith(SUFFIX)):
        return load_checkpoint(str(path), checkpoint_dir, expect_model, expect_dataset)
    loaded = load_compressed(path)
    model = loaded["config"]["model"]
    if expect_model and expect_model != model:
        raise UserError(f"{path.name} holds {model}, but --model asks for {expect_model}")
    if expect_dataset and expect_dataset != loaded.get("dataset"):
        raise UserError(f"{path.name} was trained on {loaded.get('dataset')}, "
                        f"but --dataset asks for {expect_dataset}")
    return loaded


def root_learning_rate(checkpoint: dict) -> Optional[float]:
    """The learning rate of the baseline at the root of a checkpoint's chain (files written before
    it was recorded: the rate of their own run, the best that is known)."""
    rate = checkpoint.get("root_learning_rate")
    if rate is None:
        rate = checkpoint.get("flags", {}).get("learning_rate")
    return rate
