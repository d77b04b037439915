"""Splits read image by image through a torch DataLoader, for data that does not fit in memory:
ImageFolder datasets (ImageNet's train/ and val/ layout) and, with --data_loader=stream, the
small datasets too, so this path is exercised on real data.

A StreamSplit offers what training and evaluation use of a tensor Split (len, take, first_images,
batches), so the training loop does not know which path feeds it. Its training batches are the
same ranks' shares of the same seeded permutation as the tensor path's (loader.shard_batches);
images are decoded and transformed per sample in --workers processes, pinned for a CUDA device.
"""
from dataclasses import dataclass, replace
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from utils import distributed
from utils.data.loader import eval_shard, shard_batches
from utils.errors import UserError

# The ImageNet convention (torchvision's references): statistics of ImageNet's training images,
# a random resized crop for training, resize to 256/224 of the crop then centre crop for
# evaluation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224


class ArrayImages(Dataset):
    """uint8 images as the dataset files hold them ((N, H, W) grey or (N, H, W, C) colour) and
    their labels; an item is a (C, H, W) uint8 tensor and an int."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = torch.from_numpy(np.ascontiguousarray(self.images[i]))
        image = image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)
        return image, int(self.labels[i])


def _normalise(mean: Sequence[float], std: Sequence[float]):
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def array_transforms(shape: Tuple[int, int, int], mean, std, augment: bool
                     ) -> Tuple[Callable, Callable]:
    """(training, evaluation) transforms of the small datasets' uint8 tensors: the tensor path's
    normalisation and, for CIFAR-10, its random crop (padding 4) and flip."""
    evaluation = v2.Compose(_normalise(mean, std))
    if not augment:
        return evaluation, evaluation
    training = v2.Compose([v2.RandomCrop(shape[1:], padding=4), v2.RandomHorizontalFlip(),
                           *_normalise(mean, std)])
    return training, evaluation


def folder_transforms(size: int) -> Tuple[Callable, Callable]:
    """(training, evaluation) transforms of decoded PIL images, the ImageNet recipe at ``size``
    (224 for ImageNet)."""
    training = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                           v2.PILToTensor(), *_normalise(IMAGENET_MEAN, IMAGENET_STD)])
    evaluation = v2.Compose([v2.Resize(round(size * RESIZE_RATIO), antialias=True),
                             v2.CenterCrop(size), v2.PILToTensor(),
                             *_normalise(IMAGENET_MEAN, IMAGENET_STD)])
    return training, evaluation


class UnreadableImage(UserError):
    """An image file that does not decode, raised by the worker that read it. A DataLoader
    worker's exception reaches the main process rebuilt from a text that holds the worker's
    traceback ("Caught UnreadableImage in DataLoader worker process 0 ... Original Traceback
    ..."), with the original message on its last line: only that line is kept, so the error
    stays one line with any number of workers."""

    def __init__(self, message: str):
        if message.startswith("Caught "):
            last = message.strip().splitlines()[-1]
            message = last.partition(f"{type(self).__name__}: ")[2] or last
        super().__init__(message)


def _item_path(base: Dataset, index: int) -> str:
    samples = getattr(base, "samples", None)  # ImageFolder's (path, label) list
    return str(samples[index][0]) if samples is not None else f"item {index}"


class _Transformed(Dataset):
    """``base``'s items at ``indices``, transformed; what the DataLoader's workers read."""

    def __init__(self, base: Dataset, indices: torch.Tensor, transform: Callable):
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        index = int(self.indices[position])
        try:
            image, label = self.base[index]
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for bytes it cannot decode
            detail = " ".join(str(exc).split())[:200]
            raise UnreadableImage(f"{_item_path(self.base, index)} cannot be read as an image "
                                  f"({type(exc).__name__}: {detail}); remove or replace "
                                  "it") from None
        return self.transform(image), label


@dataclass(frozen=True)
class StreamSplit:
    """A split as ``base``'s items at ``indices`` (all of them by default), transformed as it
    is read. ``train_transform`` applies when batches are augmented (training), the other
    transform otherwise (evaluation, validation images held out of training)."""
    base: Dataset
    train_transform: Callable
    eval_transform: Callable
    indices: Optional[torch.Tensor] = None
    device: torch.device = torch.device("cpu")
    workers: int = 0

    def __post_init__(self):
        if self.indices is None:
            object.__setattr__(self, "indices", torch.arange(len(self.base)))

    def __len__(self):
        return len(self.indices)

    def to(self, device) -> "StreamSplit":
        return replace(self, device=torch.device(device))

    def take(self, index: torch.Tensor) -> "StreamSplit":
        return replace(self, indices=self.indices[index.cpu()])

    def subset(self, count: int) -> "StreamSplit":
        return replace(self, indices=self.indices[:count])

    def first_images(self, count: int) -> torch.Tensor:
        items = _Transformed(self.base, self.indices[:count], self.eval_transform)
        if len(items) == 0:
            return torch.empty(0)
        return torch.stack([items[i][0] for i in range(len(items))]).to(self.device)

    def batches(self, batch_size: int, shuffle: bool = False, augment: bool = False,
                generator: Optional[torch.Generator] = None) -> "StreamLoader":
        return StreamLoader(self, batch_size, shuffle, augment, generator)


def _rank_batches(count: int, batch_size: int, training: bool, shuffle: bool,
                  generator: Optional[torch.Generator]) -> List[List[int]]:
    """This rank's batches as positions into the split: its share of each global batch
    (training, drawn now, so the permutation takes the generator's next numbers exactly as the
    tensor path's does) or of the split in order (evaluation)."""
    if training:
        return [mine.tolist() for _, mine, _ in shard_batches(count, batch_size, shuffle, generator)]
    positions = eval_shard(count)
    return [list(range(start, min(start + batch_size, positions.stop)))
            for start in range(positions.start, positions.stop, batch_size)]


class StreamLoader:
    """One epoch of (images, labels) batches on the split's device, decoded in ``workers``
    processes. Workers are started per epoch, seeded from the run's generator (and the rank),
    so a resumed run draws the same augmentations as an uninterrupted one."""

    def __init__(self, split: StreamSplit, batch_size: int, shuffle: bool, augment: bool,
                 generator: Optional[torch.Generator]):
        if batch_size < 1:
            raise UserError(f"batch size must be positive, got {batch_size}")
        self.split, self.batch_size, self.generator = split, batch_size, generator
        self.shuffle, self.augment = shuffle, augment
        self.transform = split.train_transform if augment else split.eval_transform

    def __len__(self):
        count = len(self.split)
        if self.shuffle or self.augment:
            world = distributed.world_size()
            full, rest = divmod(count, self.batch_size * world)
            return full + (rest >= world)
        return (len(eval_shard(count)) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        batches = _rank_batches(len(self.split), self.batch_size, self.shuffle or self.augment,
                                self.shuffle, self.generator)
        seed = None
        if self.augment:  # only random transforms need the workers seeded
            seed = int(torch.randint(2 ** 62, (), generator=self.generator)) + distributed.rank()
        device = self.split.device
        loader = DataLoader(
            _Transformed(self.split.base, self.split.indices, self.transform),
            batch_sampler=batches, num_workers=self.split.workers,
            pin_memory=device.type == "cuda",
            generator=None if seed is None else torch.Generator().manual_seed(seed))
        for images, labels in loader:
            yield (images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
