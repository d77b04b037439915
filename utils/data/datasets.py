"""Datasets as whole tensors on the device, and a loader that slices batches from them.

Per-sample DataLoader iteration with PIL transforms costs about 7x the model's own work for
LeNet-300-100 on a 2-core CPU; holding a split as one normalised tensor, shuffling with a
permutation and slicing batches removes nearly all of it. CIFAR-10 augmentation (random crop with
padding 4, horizontal flip) is done on whole batches of tensors.
"""
import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from utils.data import offline
from utils.data.loader import Split
from utils.errors import UserError
from utils.data.safe_pickle import load_numpy_pickle

log = logging.getLogger(__name__)


def _read_idx(torchvision_class):
    """MNIST-format reader: torchvision parses the raw IDX files (it only checks they exist)."""
    def read(data_dir: Path, train: bool):
        dataset = torchvision_class(str(data_dir), train=train, download=False)
        return dataset.data.numpy(), dataset.targets.numpy()
    return read


CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)


def _read_cifar10(data_dir: Path, train: bool):
    """CIFAR-10's python batches, read with the numpy-only unpickler. torchvision's reader uses a
    plain pickle.load and insists on the official MD5s; this one reads any file in the format."""
    images, labels = [], []
    for name in CIFAR10_TRAIN if train else CIFAR10_TEST:
        with open(Path(data_dir) / CIFAR10_FOLDER / name, "rb") as f:
            batch = load_numpy_pickle(f)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return np.concatenate(images).transpose(0, 2, 3, 1), np.concatenate(labels)


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: Callable       # used to download
    read: Callable[[Path, bool], Tuple[np.ndarray, np.ndarray]]  # (data_dir, train) -> uint8, labels
    input_shape: Tuple[int, int, int]
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    expected_files: Tuple[str, ...]   # relative to --data_dir
    augment: bool = False             # random crop + flip while training
    offline_source: Optional[Callable[[Path], bool]] = None  # fills raw_dir from a local copy

    def raw_dir(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.torchvision_class.__name__ / "raw"

    def is_present(self, data_dir: Path) -> bool:
        return all((Path(data_dir) / f).is_file() for f in self.expected_files)


DATASETS: Dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec("mnist", torchvision.datasets.MNIST, _read_idx(torchvision.datasets.MNIST),
                    (1, 28, 28), 10, (0.1307,), (0.3081,),
                    tuple(f"MNIST/raw/{f}" for f in _IDX_FILES),
                    offline_source=offline.rebuild_mnist_raw),
        DatasetSpec("fashion_mnist", torchvision.datasets.FashionMNIST,
                    _read_idx(torchvision.datasets.FashionMNIST), (1, 28, 28), 10,
                    (0.2860,), (0.3530,), tuple(f"FashionMNIST/raw/{f}" for f in _IDX_FILES),
                    offline_source=offline.copy_debian_fashion_mnist),
        DatasetSpec("cifar10", torchvision.datasets.CIFAR10, _read_cifar10, (3, 32, 32), 10,
                    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    tuple(f"{CIFAR10_FOLDER}/{f}" for f in CIFAR10_TRAIN + CIFAR10_TEST),
                    augment=True),
    )
}


def dataset_names():
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    return DATASETS[name]


def _download(spec: DatasetSpec, data_dir: Path) -> bool:
    """torchvision's download; its progress chatter is kept off stdout. False on any failure."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            spec.torchvision_class(str(data_dir), train=True, download=True)
    except Exception as exc:  # no network, proxy, bad mirror: all fall through to the next source
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        log.info("data: download of %s failed (%s)", spec.name, reason)
        return False
    return spec.is_present(data_dir)


def _ensure_files(spec: DatasetSpec, data_dir: Path, download: bool):
    """Files already there, else a download, else the offline copy; logs which one was used."""
    if spec.is_present(data_dir):
        log.info("data: %s from files already in %s", spec.name, data_dir)
        return
    if download and _download(spec, data_dir):
        log.info("data: %s downloaded into %s", spec.name, data_dir)
        return
    if spec.offline_source is not None:
        try:
            found = spec.offline_source(spec.raw_dir(data_dir))
        except ValueError as exc:  # an offline copy that fails its checksum
            raise UserError(str(exc))
        if found and spec.is_present(data_dir):
            log.info("data: %s rebuilt by %s into %s", spec.name,
                     spec.offline_source.__name__, spec.raw_dir(data_dir))
            return
    raise UserError(
        f"no {spec.name} data in {data_dir} and it could not be downloaded; expected "
        f"{', '.join(spec.expected_files)} under {data_dir} (or pass --data_dir)")


def _to_tensor(data: np.ndarray, spec: DatasetSpec) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> normalised float32 (N, C, H, W)."""
    images = torch.from_numpy(np.ascontiguousarray(data))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    images = images.float().div_(255)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return ((images - mean) / std).contiguous()


def load_dataset(name: str, data_dir="./data", device="cpu", download: bool = True
                 ) -> Tuple[Split, Split, DatasetSpec]:
    """(train, test, spec) with both splits as tensors on ``device``."""
    spec = get_spec(name)
    _ensure_files(spec, Path(data_dir), download)
    splits = []
    for train in (True, False):
        try:
            images, labels = spec.read(Path(data_dir), train)
        except Exception as exc:  # truncated or foreign files under the expected names
            raise UserError(f"could not read {spec.name} from {data_dir} ({type(exc).__name__}: "
                            f"{exc}); delete the files to fetch them again")
        splits.append(Split(_to_tensor(images, spec), torch.as_tensor(labels, dtype=torch.long)))
    return splits[0].to(device), splits[1].to(device), spec


