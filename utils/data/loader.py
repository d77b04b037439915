"""Batches sliced from whole-split tensors: the fast path for datasets that fit on the device
(stream.py reads the others image by image). Both cut an epoch into ranks' shares the same way
(shard_batches).

Per-sample DataLoader iteration with PIL transforms costs about 7x the model's own work for
LeNet-300-100 on a 2-core CPU; holding a split as one normalised tensor, shuffling with a
permutation and slicing batches removes nearly all of it. CIFAR-10 augmentation (random crop with
padding 4, horizontal flip) is done on whole batches of tensors.
"""
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from utils import distributed
from utils.errors import UserError


@dataclass
class Split:
    """One split held as tensors: normalised float images (N, C, H, W) and int64 labels (N,)."""
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self):
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, count: int) -> "Split":
        return Split(self.images[:count], self.labels[:count])

    def take(self, index: torch.Tensor) -> "Split":
        index = index.to(self.labels.device)
        return Split(self.images[index], self.labels[index])

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def first_images(self, count: int) -> torch.Tensor:
        return self.images[:count]

    def batches(self, batch_size: int, shuffle: bool = False, augment: bool = False,
                generator: Optional[torch.Generator] = None) -> "BatchLoader":
        """This rank's batches (see BatchLoader); StreamSplit has the same method."""
        return BatchLoader(self, batch_size, shuffle, augment, generator)


def split_validation(split: Split, fraction: float, seed: int) -> Tuple[Split, Split]:
    """(rest, validation): ``fraction`` of ``split`` held out, chosen by a generator of its own
    seeded with ``seed`` (so the same images on every run and device, whatever else drew from
    the global generators); both keep the original order."""
    if not 0 < fraction < 1:
        raise UserError(f"the validation fraction must be in (0, 1), got {fraction}")
    count = int(round(len(split) * fraction))
    if not 0 < count < len(split):
        raise UserError(f"a validation fraction of {fraction} of {len(split)} images leaves no validation or "
                        "no training images")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    held = torch.zeros(len(split), dtype=torch.bool)
    held[order[:count]] = True
    return split.take(torch.nonzero(~held).flatten()), split.take(torch.nonzero(held).flatten())


def crop_flip_draws(count: int, padding: int = 4, generator: Optional[torch.Generator] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image's crop offsets (dy, dx) and whether it is flipped: drawn for a whole global
    batch, so every rank of a distributed run draws the same numbers and takes its own slice."""
    dy, dx = torch.randint(0, 2 * padding + 1, (2, count), generator=generator)
    flip = torch.rand(count, generator=generator) < 0.5
    return dy, dx, flip


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              padding: int = 4) -> torch.Tensor:
    """Crop of the zero-padded batch at the given offsets back to its size, flipped where
    ``flip``: torchvision's RandomCrop(padding=4) and RandomHorizontalFlip for the whole batch as
    one gather over flattened pixel indices (4x faster here than indexing with four broadcast
    index tensors)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    padded_width = w + 2 * padding
    dy, dx, flip = (t.to(images.device) for t in (dy, dx, flip))
    cols = torch.arange(w, device=images.device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    rows = torch.arange(h, device=images.device)[None, :] + dy[:, None]
    index = (rows[:, :, None] * padded_width + cols[:, None, :]).view(n, 1, h * w)
    return padded.view(n, c, -1).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def random_crop_flip(images: torch.Tensor, padding: int = 4,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """crop_flip with offsets and flips drawn for this batch."""
    return crop_flip(images, *crop_flip_draws(len(images), padding, generator), padding)


def shard_batches(count: int, batch_size: int, shuffle: bool = False,
                  generator: Optional[torch.Generator] = None
                  ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, slice]]:
    """This rank's training batches, for tensors and streams alike: (global batch's indices,
    this rank's indices, this rank's slice of the global batch).

    One permutation per epoch from ``generator`` (the same on every rank), cut into global
    batches of ``batch_size`` x world size; each rank takes its equal share of each. So N
    processes with batch B see, step by step, the images one process with batch N x B sees, and
    averaging their gradients (DistributedDataParallel) gives that process's gradient. A last
    global batch not divisible by the world size loses its remainder (fewer than N images), so
    every rank takes the same number of steps of equal size."""
    world, me = distributed.world_size(), distributed.rank()
    order = (torch.randperm(count, generator=generator) if shuffle
             else torch.arange(count))
    step = batch_size * world
    for start in range(0, count, step):
        chunk = order[start:start + step]
        share = len(chunk) // world
        if share == 0:
            return
        chunk = chunk[:share * world]
        mine = slice(me * share, (me + 1) * share)
        yield chunk, chunk[mine], mine


def eval_shard(count: int) -> range:
    """This rank's contiguous share of an evaluated split (all of it in one process); sums over
    the shards are all-reduced, so every image counts exactly once."""
    world, me = distributed.world_size(), distributed.rank()
    return range(count * me // world, count * (me + 1) // world)


class BatchLoader:
    """Yields (images, labels) batches sliced from a Split: this rank's share of a fresh
    permutation each epoch when shuffling (shard_batches), optional batch-wise augmentation, or,
    for evaluation, this rank's share of the split in order. The permutation comes from a CPU
    generator so a seed gives the same order on every device."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool = False, augment: bool = False,
                 generator: Optional[torch.Generator] = None, shard: bool = True):
        if batch_size < 1:
            raise UserError(f"batch size must be positive, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.generator = generator
        self.training = shuffle or augment
        self.shard = shard

    def _positions(self) -> range:
        return eval_shard(len(self.split)) if self.shard else range(len(self.split))

    def __len__(self):
        if self.training:
            step = self.batch_size * distributed.world_size()
            full, rest = divmod(len(self.split), step)
            return full + (rest >= distributed.world_size())
        return (len(self._positions()) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.split.images, self.split.labels
        if not self.training:
            positions = self._positions()
            for start in range(positions.start, positions.stop, self.batch_size):
                end = min(start + self.batch_size, positions.stop)
                yield images[start:end], labels[start:end]
            return
        for chunk, mine, part in shard_batches(len(labels), self.batch_size, self.shuffle,
                                               self.generator):
            if not self.shuffle and distributed.world_size() == 1:
                x, y = images[mine[0]:mine[-1] + 1], labels[mine[0]:mine[-1] + 1]
            else:  # gather batch by batch: no second copy of the whole split per epoch
                index = mine.to(labels.device)
                x, y = images[index], labels[index]
            if self.augment:
                dy, dx, flip = crop_flip_draws(len(chunk), generator=self.generator)
                x = crop_flip(x, dy[part], dx[part], flip[part])
            yield x, y


def held_out(train: Split, record: Optional[dict]) -> Tuple[Split, Optional[Split]]:
    """(training images, validation images or None) for a run whose checkpoint records
    ``{"fraction": ..., "seed": ...}`` under ``validation`` (or None: no validation split)."""
    if not record:
        return train, None
    return split_validation(train, float(record["fraction"]), int(record["seed"]))
