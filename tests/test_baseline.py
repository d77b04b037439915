"""baseline.py end to end on the small synthetic datasets."""
import re

import torch

import baseline
from tests.conftest import run_script

FAST = ["--no_download", "--no_verify_data", "--inference_sampling=3", "--inference_batch_size=16", "--no_progress",
        "--batch_size=64"]


def test_trains_saves_and_reports(mnist_dir, tmp_path, capsys):
    code, metrics = run_script(baseline.main, [
        "--model=lenet_300_100", "--dataset=mnist", f"--data_dir={mnist_dir}",
        f"--checkpoint_dir={tmp_path}", "--epochs=3", *FAST])
    assert code == 0
    (path,) = tmp_path.glob("*.pt")
    assert re.fullmatch(r"lenet_300_100_mnist_acc_\d\.\d{4}_epoch_3\.pt", path.name)
    assert path.name == f"lenet_300_100_mnist_acc_{metrics['top1_acc']:.4f}_epoch_3.pt"
    assert metrics["top1_acc"] > 0.5  # the synthetic classes are easy
    assert metrics["parameters"] == metrics["nonzero"] == 266_610
    assert metrics["inference"]["samples"] == 3 and len(metrics["history"]) == 3
    saved = torch.load(path, weights_only=True)
    assert saved["config"]["model"] == "lenet_300_100" and saved["dataset"] == "mnist"
    assert saved["flags"]["epochs"] == 3 and saved["metrics"]["top1_acc"] == metrics["top1_acc"]
    out = capsys.readouterr().out
    assert "top-1 accuracy" in out and "266,610 total" in out and "median" in out


def test_evaluate_only_reproduces_the_saved_accuracy_and_writes_nothing(trained_checkpoint, capsys):
    path, ckpt_dir, data_dir = trained_checkpoint("lenet_5")
    saved_acc = torch.load(path, weights_only=True)["metrics"]["top1_acc"]
    code, metrics = run_script(baseline.main, [
        "--model=lenet_5", "--dataset=mnist", f"--data_dir={data_dir}", f"--checkpoint_dir={ckpt_dir}",
        f"--load_folder_model={path.stem}", "--do_training=False", *FAST])
    assert code == 0 and metrics["top1_acc"] == saved_acc
    assert metrics["train_seconds"] == 0.0
    assert [p.name for p in ckpt_dir.glob("*.pt")] == [path.name]


def test_cifar10_path_with_augmentation(cifar_dir, tmp_path):
    code, metrics = run_script(baseline.main, [
        "--model=lenet_5", "--dataset=cifar10", f"--data_dir={cifar_dir}",
        f"--checkpoint_dir={tmp_path}", "--epochs=1", *FAST])
    assert code == 0 and metrics["parameters"] == 39_548
    (path,) = tmp_path.glob("lenet_5_cifar10_acc_*_epoch_1.pt")
    assert torch.load(path, weights_only=True)["config"]["input_shape"] == [3, 32, 32]


def _fails(argv, capsys, tmp_path):
    code, _ = run_script(baseline.main, argv + FAST)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert list(tmp_path.glob("*.pt")) == []  # nothing written
    return err


def test_user_errors_are_one_line_and_exit_2(mnist_dir, tmp_path, capsys, trained_checkpoint):
    common = [f"--data_dir={mnist_dir}", f"--checkpoint_dir={tmp_path}"]
    err = _fails(["--model=lenet_5", "--do_training=False", *common], capsys, tmp_path)
    assert err[-1] == ("error: --do_training=False needs --load_folder_model: there is nothing to "
                       "train or evaluate")
    err = _fails(["--model=lenet_5", "--epochs=0", *common], capsys, tmp_path)
    assert err[-1].startswith("error: --epochs=0 needs --load_folder_model")

    err = _fails(["--model=lenet_5", "--load_folder_model=missing", *common], capsys, tmp_path)
    assert err[-1].startswith("error: no checkpoint 'missing'")

    path, ckpt_dir, _ = trained_checkpoint("lenet_300_100")
    err = _fails(["--model=lenet_5", f"--load_folder_model={path}", "--do_training=False", *common],
                 capsys, tmp_path)
    assert err[-1] == f"error: {path.name} holds lenet_300_100, but --model asks for lenet_5"

    empty = tmp_path / "empty"
    err = _fails(["--model=lenet_5", "--dataset=cifar10", f"--data_dir={empty}",
                  f"--checkpoint_dir={tmp_path}"], capsys, tmp_path)
    assert err[-1].startswith("error: no cifar10 data in") and "data_batch_1" in err[-1]


def test_diverging_loss_stops_without_saving(mnist_dir, tmp_path, capsys):
    err = _fails(["--model=lenet_300_100", f"--data_dir={mnist_dir}", f"--checkpoint_dir={tmp_path}",
                  "--epochs=2", "--learning_rate=1e30", "--optimizer=sgd"], capsys, tmp_path)
    assert re.match(r"error: the loss became (nan|inf) .* nothing was saved", err[-1])


def test_bad_flag_values_exit_2(capsys):
    for argv in (["--model=lenet_5", "--learning_rate=abc"], ["--model=lenet_5", "--do_training=maybe"],
                 ["--model=vgg"]):
        code, _ = run_script(baseline.main, argv)
        assert code == 2
