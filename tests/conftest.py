"""Shared fixtures: small datasets written in the real on-disk formats (no network), trained
tiny checkpoints, and a way to run the scripts' main() and capture exit codes."""
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)  # tests are tiny; threads only add noise on a shared 2-core machine


def synthetic_images(count: int, labels: np.ndarray, size: int, channels: int, seed: int):
    """Learnable images: each class lights its own block on a noisy background."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(count, size, size, channels), dtype=np.uint8)
    block = size // 4
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, row * block:(row + 1) * block, col * block:(col + 1) * block, :] = 255
    return images


def write_mnist_idx(root: Path, n_train: int = 512, n_test: int = 256, folder: str = "MNIST",
                    seed: int = 0) -> Path:
    """Writes <root>/<folder>/raw/*-ubyte in the IDX format torchvision reads."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images = synthetic_images(count, labels, 28, 1, seed + count)[..., 0]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x801, count) + labels.tobytes())
    return Path(root)


def write_cifar10_batches(root: Path, per_batch: int = 64, seed: int = 0) -> Path:
    """Writes <root>/cifar-10-batches-py/{data_batch_1..5,test_batch} as CIFAR-10's python
    pickles: dicts with 'data' (N, 3072) uint8 in channel-major order and 'labels'."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=per_batch)
        images = synthetic_images(per_batch, labels, 32, 3, seed + len(name))
        batch = {"batch_label": name, "labels": labels.tolist(),
                 "data": images.transpose(0, 3, 1, 2).reshape(per_batch, -1),
                 "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return Path(root)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A --data_dir holding a small synthetic MNIST (512 train, 256 test images)."""
    return write_mnist_idx(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    return write_cifar10_batches(tmp_path_factory.mktemp("cifar"))


def run_script(main, argv):
    """Run a script's main(argv) as the command line would: returns (exit code, result)."""
    from utils.cli import run
    result = {}
    try:
        run(lambda: result.setdefault("value", main(argv)))
    except SystemExit as exc:
        return exc.code, None
    return 0, result.get("value")


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, mnist_dir):
    """Factory: trains ``model`` on the synthetic MNIST for two epochs once per session and
    returns (checkpoint path, checkpoint dir, data dir)."""
    import baseline
    cache = {}

    def make(model: str = "lenet_300_100"):
        if model not in cache:
            ckpt_dir = tmp_path_factory.mktemp(f"ckpt_{model}")
            code, metrics = run_script(baseline.main, [
                f"--model={model}", "--dataset=mnist", f"--data_dir={mnist_dir}",
                f"--checkpoint_dir={ckpt_dir}", "--no_download", "--no_verify_data", "--epochs=2", "--batch_size=64",
                "--inference_sampling=2", "--inference_batch_size=8", "--no_progress"])
            assert code == 0
            (path,) = ckpt_dir.glob("*.pt")
            cache[model] = (path, ckpt_dir, mnist_dir)
        return cache[model]

    return make


def write_image_folder(root: Path, classes: int = 3, train_per_class: int = 8,
                       val_per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    """Writes <root>/{train,val}/class_<k>/*.png (and some .jpg): ImageFolder's layout, images
    whose class lights its own block, in sizes that vary as real photographs' do."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = Path(root) / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                side = size + int(rng.integers(0, 9))
                image = synthetic_images(1, np.array([label]), side, 3, int(rng.integers(1 << 30)))[0]
                suffix = "jpg" if i % 4 == 3 else "png"
                Image.fromarray(image).save(folder / f"{i}.{suffix}")
    return Path(root)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("folder"))
