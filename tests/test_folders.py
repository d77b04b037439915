"""Folder datasets (ImageFolder: --dataset=folder and imagenet) and the streamed data path: they
train and prune end to end, give the tensor path's batches for the small datasets, and refuse
missing, empty or mismatched folders with one line."""
import shutil

import pytest
import torch

import baseline
import pruning
from tests.conftest import run_script, write_image_folder
from utils.data import StreamSplit, load_dataset
from utils.data.loader import BatchLoader

FAST = ["--no_progress", "--inference_sampling=1", "--inference_batch_size=4", "--workers=0"]


def test_a_folder_trains_then_prunes_end_to_end(image_folder, tmp_path, capsys):
    code, metrics = run_script(baseline.main, [
        "--model=lenet_5", "--dataset=folder", f"--data_dir={image_folder}", "--image_size=32",
        f"--checkpoint_dir={tmp_path}", "--epochs=2", "--batch_size=8", *FAST])
    assert code == 0
    assert metrics["parameters"] > 0 and 0 <= metrics["top1_acc"] <= 1
    code, result = run_script(pruning.main, [
        f"--load_folder_model={metrics['path']}", "--pruning_method=fpgm", "--cut_rate=0.5",
        f"--data_dir={image_folder}", f"--checkpoint_dir={tmp_path}", "--epochs=1",
        "--batch_size=8", *FAST])
    assert code == 0
    assert result["after"]["flops"] < result["before"]["flops"]


def test_folder_splits_stream_with_the_imagenet_transforms(image_folder):
    train, test, spec = load_dataset("folder", image_folder, image_size=24)
    assert isinstance(train, StreamSplit) and spec.num_classes == 3
    assert (len(train), len(test)) == (24, 12)
    images, labels = next(iter(test.batches(5)))
    assert images.shape == (5, 3, 24, 24) and images.dtype == torch.float32
    assert labels.tolist() == [0, 0, 0, 0, 1]  # ImageFolder's order: class by class
    augmented, _ = next(iter(train.batches(4, shuffle=True, augment=True,
                                           generator=torch.Generator().manual_seed(0))))
    assert augmented.shape == (4, 3, 24, 24)


@pytest.mark.parametrize("augment", [False, True])
def test_streamed_mnist_batches_are_the_tensor_batches(mnist_dir, augment):
    """Same permutation, same images: the streamed path differs from the tensor path only in
    where the work is done (augmentations draw differently, so only order is compared then)."""
    tensors, _, _ = load_dataset("mnist", mnist_dir, download=False, verify=False, loader="tensor")
    stream, _, _ = load_dataset("mnist", mnist_dir, download=False, verify=False, loader="stream")
    assert isinstance(stream, StreamSplit)
    batches = [list(BatchLoader(tensors, 100, True, augment, torch.Generator().manual_seed(3))),
               list(stream.batches(100, True, augment, torch.Generator().manual_seed(3)))]
    assert [len(y) for _, y in batches[0]] == [len(y) for _, y in batches[1]]
    for (xa, ya), (xb, yb) in zip(*batches):
        assert torch.equal(ya, yb)
        if not augment:
            torch.testing.assert_close(xa, xb, rtol=0, atol=1e-5)


def test_streamed_training_reaches_the_tensor_path_accuracy(mnist_dir, tmp_path):
    results = {}
    for loader in ("tensor", "stream"):
        code, metrics = run_script(baseline.main, [
            "--model=lenet_300_100", f"--data_dir={mnist_dir}", "--no_download",
            "--no_verify_data", f"--checkpoint_dir={tmp_path / loader}", "--epochs=2",
            "--batch_size=64", f"--data_loader={loader}", *FAST])
        assert code == 0
        results[loader] = metrics["history"]
    # Same batches, same arithmetic up to float rounding of the normalisation.
    assert results["stream"][-1]["test_acc"] == pytest.approx(results["tensor"][-1]["test_acc"],
                                                              abs=0.01)


def _error(capsys, argv) -> str:
    code, _ = run_script(baseline.main, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_folders_are_one_line_before_training(tmp_path, capsys):
    base = ["--model=lenet_5", "--dataset=folder", f"--checkpoint_dir={tmp_path / 'ck'}", *FAST]
    assert "must hold train/ and val/" in _error(capsys, base + [f"--data_dir={tmp_path / 'none'}"])
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    assert "no class sub-folders" in _error(capsys, base + [f"--data_dir={empty}"])
    mismatched = write_image_folder(tmp_path / "mismatched", classes=2, train_per_class=1,
                                    val_per_class=1)
    shutil.rmtree(mismatched / "val" / "class_1")
    (mismatched / "val" / "class_9").mkdir()
    assert "different class folders" in _error(capsys, base + [f"--data_dir={mismatched}"])
    no_images = write_image_folder(tmp_path / "no_images", classes=2, train_per_class=1,
                                   val_per_class=1)
    for image in (no_images / "train" / "class_1").iterdir():
        image.unlink()
    assert "class_1" in _error(capsys, base + [f"--data_dir={no_images}"])
    assert "ImageNet has 1000" in _error(capsys, ["--model=resnet18", "--dataset=imagenet",
                                                  f"--data_dir={no_images}", *FAST])


def test_flags_that_do_not_fit_the_dataset_are_refused(mnist_dir, image_folder, capsys):
    assert "--image_size applies to the folder datasets" in _error(
        capsys, ["--model=lenet_5", f"--data_dir={mnist_dir}", "--image_size=32", *FAST])
    assert "folder datasets stream" in _error(
        capsys, ["--model=lenet_5", "--dataset=folder", f"--data_dir={image_folder}",
                 "--data_loader=tensor", *FAST])


def test_auto_streams_what_does_not_fit_in_half_the_free_memory(mnist_dir, monkeypatch):
    from utils.data import datasets
    # 768 MNIST images as float32 need 768 x 28 x 28 x 4 = 2,408,448 bytes.
    monkeypatch.setattr(datasets, "_available_memory", lambda device: 2 * 2_408_448 + 2)
    train, _, _ = load_dataset("mnist", mnist_dir, download=False, verify=False)
    assert not isinstance(train, StreamSplit)
    monkeypatch.setattr(datasets, "_available_memory", lambda device: 2 * 2_408_448)
    train, _, _ = load_dataset("mnist", mnist_dir, download=False, verify=False)
    assert isinstance(train, StreamSplit)
