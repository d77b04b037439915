import pytest
import torch

import models
from utils import checkpoint
from utils.errors import UserError


def _saved(tmp_path, name="lenet_5", dataset="mnist"):
    model = models.create_model(name, (1, 28, 28), 10, widths=[3, 4, 16] if name == "lenet_5" else None)
    ckpt = checkpoint.make_checkpoint(model, dataset, {"top1_acc": 0.5}, {"lr": 0.1, "path": tmp_path},
                                      parent="parent.pt")
    path = checkpoint.save_checkpoint(ckpt, tmp_path / checkpoint.checkpoint_name(name, dataset, 0.5, 3))
    return model, path


def test_reference_names():
    assert checkpoint.checkpoint_name("lenet_300_100", "mnist", 0.98134, 30) == \
        "lenet_300_100_mnist_acc_0.9813_epoch_30.pt"
    assert checkpoint.checkpoint_name("lenet_5", "mnist", 0.9, 10, method="fpgm") == \
        "lenet_5_fpgm_mnist_acc_0.9000_epoch_10.pt"


def test_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path):
    model, path = _saved(tmp_path)
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["config"] == {"model": "lenet_5", "input_shape": [1, 28, 28], "num_classes": 10,
                             "widths": [3, 4, 16]}
    assert raw["parent"] == "parent.pt" and raw["flags"]["path"] == str(tmp_path)
    loaded = checkpoint.load_checkpoint(path.stem, tmp_path)  # name without .pt
    rebuilt = checkpoint.build_model(loaded).eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert checkpoint.load_checkpoint(str(path))["dataset"] == "mnist"  # a path works too


def test_mismatch_names_both(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(UserError, match="holds lenet_5, but --model asks for lenet_300_100"):
        checkpoint.load_checkpoint(path.name, tmp_path, expect_model="lenet_300_100")
    with pytest.raises(UserError, match="trained on mnist, but --dataset asks for cifar10"):
        checkpoint.load_checkpoint(path.name, tmp_path, expect_dataset="cifar10")


def test_missing_checkpoint_lists_what_the_folder_holds(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(UserError, match=f"no checkpoint 'nope'.*holds: {path.name}"):
        checkpoint.load_checkpoint("nope", tmp_path)


def test_corrupt_file_is_a_user_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load_checkpoint("bad", tmp_path)


def test_interrupted_save_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    model, path = _saved(tmp_path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({"x": 1}, path)            # over an existing file
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({"x": 1}, tmp_path / "new.pt")
    assert path.read_bytes() == before
    assert not (tmp_path / "new.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left
