"""Folders of images, one sub-folder per class, read by torchvision's ImageFolder: --dataset=folder
for any such data, --dataset=imagenet for ILSVRC-2012 in its usual layout. --data_dir holds
train/ and val/, each with the same class sub-folders (ImageNet's validation images sorted into
class folders, as torchvision's references expect).

Nothing here is downloaded (ImageNet's licence does not allow it) and nothing is held in memory:
the splits stream (stream.py). Every file's first bytes are checked while the folders are indexed
(an empty file or one that is no image format is one line before training); a file that passes
but fails to decode is named in one line when it is read (stream.py's UnreadableImage).
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import torchvision

from utils.data.stream import IMAGENET_MEAN, IMAGENET_STD, StreamSplit, folder_transforms
from utils.errors import UserError

FOLDER_DATASETS = ("folder", "imagenet")
IMAGENET_CLASSES = 1000
DEFAULT_IMAGE_SIZE = 224
SPLIT_FOLDERS = ("train", "val")


@dataclass(frozen=True)
class FolderSpec:
    """What a model needs to know of a folder dataset; the DatasetSpec of the file datasets."""
    name: str
    input_shape: Tuple[int, int, int]
    num_classes: int
    classes: Tuple[str, ...]
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    augment: bool = True

    @staticmethod
    def is_present(data_dir) -> bool:
        return all((Path(data_dir) / split).is_dir() for split in SPLIT_FOLDERS)


def _classes(folder: Path) -> Tuple[str, ...]:
    if not folder.is_dir():
        what = "a file" if folder.exists() else "missing"
        raise UserError(f"{folder} is {what}; --data_dir must hold train/ and val/ folders, each "
                        "with one sub-folder of images per class")
    classes = tuple(sorted(entry.name for entry in os.scandir(folder) if entry.is_dir()))
    if not classes:
        raise UserError(f"{folder} has no class sub-folders; put each class's images in a "
                        "sub-folder named after the class")
    return classes


def folder_spec(name: str, data_dir, image_size: int = DEFAULT_IMAGE_SIZE) -> FolderSpec:
    """The spec of the folder dataset in ``data_dir``, from its class folders (checked: the
    same classes in train/ and val/, so a label means one class in both)."""
    data_dir = Path(data_dir)
    train, val = (_classes(data_dir / split) for split in SPLIT_FOLDERS)
    if train != val:
        only = sorted(set(train) ^ set(val))
        raise UserError(f"train/ and val/ in {data_dir} have different class folders "
                        f"({', '.join(only[:5])}{' ...' if len(only) > 5 else ''} in one only); "
                        "labels would mean different classes")
    if name == "imagenet" and len(train) != IMAGENET_CLASSES:
        raise UserError(f"{data_dir}/train has {len(train)} class folders, ImageNet has "
                        f"{IMAGENET_CLASSES}; for another set of classes use --dataset=folder")
    if image_size < 8:
        raise UserError(f"image_size={image_size} is too small; give 8 or more (224 for ImageNet)")
    return FolderSpec(name, (3, image_size, image_size), len(train), train)


# The first bytes of every format ImageFolder's extensions name (JPEG, PNG, BMP, TIFF, WebP,
# PPM/PGM), checked while the folder is indexed: a text file named .png or a zero-byte .jpg is
# then one line before training rather than a PIL traceback in a worker some epochs in. Any
# format's signature is accepted under any extension, as PIL decodes by content.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*",
               b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"GIF87a", b"GIF89a")


def _not_an_image(path: str) -> str:
    """Why the file at ``path`` cannot be an image, or '' when its first bytes are an image
    format's signature (it may still be damaged further in: stream.py names such a file when
    it fails to decode)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not head:
        return "is empty (zero bytes)"
    if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return ""
    return "is not an image (its first bytes are no JPEG, PNG, BMP, TIFF, WebP, GIF or PPM signature)"


def check_image_files(paths) -> None:
    """One UserError naming the first file that is not an image (and how many more there are)."""
    bad = [(path, why) for path in paths for why in [_not_an_image(path)] if why]
    if bad:
        path, why = bad[0]
        more = f" ({len(bad) - 1} more files like it)" if len(bad) > 1 else ""
        raise UserError(f"{path} {why}{more}; remove or replace it")


def _image_folder(folder: Path, expected: Tuple[str, ...]) -> torchvision.datasets.ImageFolder:
    try:
        dataset = torchvision.datasets.ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as exc:  # "Found no valid file for the classes ..."
        message = " ".join(str(exc).split())
        raise UserError(f"{folder}: {message[:300]}") from None
    if tuple(dataset.classes) != expected:  # a folder emptied of images drops out of ImageFolder
        missing = sorted(set(expected) - set(dataset.classes))
        raise UserError(f"{folder}: no images in {', '.join(missing[:5])}; every class folder "
                        "needs at least one image")
    check_image_files(path for path, _ in dataset.samples)
    return dataset


def load_folders(spec: FolderSpec, data_dir, device, workers: int
                 ) -> Tuple[StreamSplit, StreamSplit]:
    """(train, val) as streamed splits; val serves as the test split, as in ImageNet papers."""
    training, evaluation = folder_transforms(spec.input_shape[-1])
    splits = []
    for split in SPLIT_FOLDERS:
        dataset = _image_folder(Path(data_dir) / split, spec.classes)
        splits.append(StreamSplit(dataset, training, evaluation, device=device, workers=workers))
    return splits[0], splits[1]
