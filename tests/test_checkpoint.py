from pathlib import Path

import pytest
import torch

import models
from utils import checkpoints
from utils.errors import UserError


def _saved(tmp_path, name="lenet_5", dataset="mnist"):
    model = models.create_model(name, (1, 28, 28), 10, widths=[3, 4, 16] if name == "lenet_5" else None)
    ckpt = checkpoints.make_checkpoint(model, dataset, {"top1_acc": 0.5}, {"lr": 0.1, "path": tmp_path},
                                      parent="parent.pt")
    path = checkpoints.save_checkpoint(ckpt, tmp_path / checkpoints.checkpoint_name(name, dataset, 0.5, 3))
    return model, path


def test_reference_names():
    assert checkpoints.checkpoint_name("lenet_300_100", "mnist", 0.98134, 30) == \
        "lenet_300_100_mnist_acc_0.9813_epoch_30.pt"
    assert checkpoints.checkpoint_name("lenet_5", "mnist", 0.9, 10, method="fpgm") == \
        "lenet_5_fpgm_mnist_acc_0.9000_epoch_10.pt"


def test_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path):
    model, path = _saved(tmp_path)
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["config"] == {"model": "lenet_5", "input_shape": [1, 28, 28], "num_classes": 10,
                             "widths": [3, 4, 16]}
    assert raw["parent"] == "parent.pt" and raw["flags"]["path"] == str(tmp_path)
    loaded = checkpoints.load_checkpoint(path.stem, tmp_path)  # name without .pt
    rebuilt = checkpoints.build_model(loaded).eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert checkpoints.load_checkpoint(str(path))["dataset"] == "mnist"  # a path works too


def test_mismatch_names_both(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(UserError, match="holds lenet_5, but --model asks for lenet_300_100"):
        checkpoints.load_checkpoint(path.name, tmp_path, expect_model="lenet_300_100")
    with pytest.raises(UserError, match="trained on mnist, but --dataset asks for cifar10"):
        checkpoints.load_checkpoint(path.name, tmp_path, expect_dataset="cifar10")


def test_missing_checkpoint_lists_what_the_folder_holds(tmp_path):
    _, path = _saved(tmp_path)
    # checkpoints/ of the working directory is listed too: whatever it holds comes first here
    with pytest.raises(UserError, match=f"no checkpoint 'nope'; {tmp_path}/ and checkpoints/ hold: "
                                        f"(.*, )?{path.name}"):
        checkpoints.load_checkpoint("nope", tmp_path)


def test_corrupt_file_is_a_user_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"bad.pt is not a checkpoint \(not a torch.save archive\); expected a checkpoint written by baseline.py"):
        checkpoints.load_checkpoint("bad", tmp_path)


def test_interrupted_save_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    model, path = _saved(tmp_path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint({"x": 1}, path)            # over an existing file
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint({"x": 1}, tmp_path / "new.pt")
    assert path.read_bytes() == before
    assert not (tmp_path / "new.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left


# ---- masks, signs and damaged files --------------------------------------------------------

def _bits(tensor):
    """The raw bit patterns: a comparison that tells -0.0 from +0.0 (torch.equal cannot)."""
    return tensor.detach().contiguous().view(torch.int32)


def _masked_lenet(seed=0):
    """lenet_300_100 (small widths) with half of fc1 and fc2 under torch.nn.utils.prune masks,
    weight_orig negative in places, so orig x mask holds -0.0 entries."""
    from utils.masks import apply_masks
    torch.manual_seed(seed)
    model = models.create_model("lenet_300_100", (1, 28, 28), 10, widths=[16, 8])
    masks = {"fc1.weight": torch.rand(16, 784) < 0.5, "fc2.weight": torch.rand(8, 16) < 0.5}
    return apply_masks(model, masks), masks


@pytest.mark.parametrize("sparse", [False, True])
def test_masks_and_signs_survive_the_file_bit_for_bit(tmp_path, sparse):
    from utils.masks import current_masks, plain_state_dict
    model, masks = _masked_lenet()
    with torch.no_grad():  # a surviving weight that is exactly -0.0 must stay -0.0
        model.fc1.weight_orig[0, masks["fc1.weight"][0].nonzero()[0]] = -0.0
    assert any(torch.signbit(model.fc1.weight_orig * model.fc1.weight_mask)[~masks["fc1.weight"]])
    state, _ = plain_state_dict(model)
    path = checkpoints.save_checkpoint(checkpoints.make_checkpoint(model, "mnist", {}, {}, sparse=sparse),
                                       tmp_path / "m.pt")
    loaded = checkpoints.load_checkpoint(str(path))
    assert set(loaded["masks"]) == {"fc1.weight", "fc2.weight"}
    for key, value in state.items():
        assert torch.equal(_bits(loaded["state_dict"][key]), _bits(value)), key
    pruned = loaded["state_dict"]["fc1.weight"][~masks["fc1.weight"]]
    assert not torch.signbit(pruned).any()  # pruned entries are +0.0, in the file and the model
    rebuilt = checkpoints.build_model(loaded)
    assert {k: m.tolist() for k, m in current_masks(rebuilt).items()} == \
        {k: m.tolist() for k, m in masks.items()}
    # saved again, the file holds exactly the same tensors: the round trip is a fixed point
    again = checkpoints.load_checkpoint(str(checkpoints.save_checkpoint(
        checkpoints.make_checkpoint(rebuilt, "mnist", {}, {}, sparse=sparse), tmp_path / "m.pt")))
    assert all(torch.equal(_bits(again["state_dict"][k]), _bits(v)) for k, v in state.items())


def test_unmasked_negative_zeros_round_trip_exactly():
    from utils.checkpoints.sparse_format import decode_tensor, encode_tensor
    tensor = torch.zeros(100)
    tensor[::3] = -0.0
    tensor[::7] = torch.randn(15)
    stored = encode_tensor(tensor)
    assert isinstance(stored, dict)  # sparse enough to pack
    decoded, mask = decode_tensor(stored)
    assert mask is None and torch.equal(_bits(decoded), _bits(tensor))


@pytest.mark.parametrize("damage,message", [
    (lambda e: e.__setitem__("values", e["values"][:-1]), "the bitmask marks"),
    (lambda e: e.__setitem__("bits", e["bits"][:-1]), "bitmask bytes for"),
    (lambda e: e.__setitem__("shape", [-3, 5]), "malformed bitmask-sparse entry"),
    (lambda e: e.__setitem__("bits", "garbage"), "malformed bitmask-sparse entry"),
    (lambda e: e.clear(), "neither a tensor nor a bitmask-sparse entry"),
])
def test_damaged_sparse_entries_are_one_user_error(tmp_path, damage, message):
    model, _ = _masked_lenet()
    ckpt = checkpoints.make_checkpoint(model, "mnist", {}, {})
    damage(ckpt["state_dict"]["fc1.weight"])
    path = checkpoints.save_checkpoint(ckpt, tmp_path / "d.pt")
    with pytest.raises(UserError, match=f"is damaged: fc1.weight.*{message}"):
        checkpoints.load_checkpoint(str(path))


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["config"].__setitem__("widths", [3, 5, 16]), "do not fit its own config"),
    (lambda c: c["state_dict"].pop("fc2.bias"), "do not fit its own config"),
    (lambda c: c["state_dict"].__setitem__("extra", torch.zeros(2)), "do not fit its own config"),
    (lambda c: c["config"].pop("widths"), "config lacks widths"),
    (lambda c: c["config"].__setitem__("widths", [0, 4, 16]), "needs 3 positive widths"),
])
def test_tensors_that_do_not_fit_the_config_are_one_user_error(tmp_path, edit, message):
    model = models.create_model("lenet_5", (1, 28, 28), 10, widths=[3, 4, 16])
    ckpt = checkpoints.make_checkpoint(model, "mnist", {}, {})
    edit(ckpt)
    path = checkpoints.save_checkpoint(ckpt, tmp_path / "c.pt")
    with pytest.raises(UserError, match=message):
        checkpoints.build_model(checkpoints.load_checkpoint(str(path)))


def test_a_checkpoint_never_replaces_another(tmp_path):
    _, first = _saved(tmp_path)
    _, second = _saved(tmp_path)
    _, third = _saved(tmp_path)
    assert second.name == first.stem + "_2.pt" and third.name == first.stem + "_3.pt"
    assert len(list(tmp_path.glob("*.pt"))) == 3
    assert checkpoints.save_checkpoint({"x": 1}, first, overwrite=True) == first


def test_a_name_is_found_in_the_write_folder_and_in_the_default_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    _, path = _saved(tmp_path / "checkpoints")
    elsewhere = tmp_path / "runs"
    assert checkpoints.resolve_checkpoint(path.stem, elsewhere) == Path("checkpoints") / path.name
    with pytest.raises(UserError, match="runs/ and checkpoints/ hold: " + path.name):
        checkpoints.resolve_checkpoint("nope", elsewhere)


def test_files_get_the_usual_permissions(tmp_path):
    import os
    _, path = _saved(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_name_with_wildcards_finds_the_one_checkpoint_it_matches(tmp_path):
    _, path = _saved(tmp_path)  # lenet_5_mnist_acc_0.5000_epoch_3.pt
    assert checkpoints.resolve_checkpoint("lenet_5_mnist_acc_*_epoch_3", tmp_path) == path
    assert checkpoints.load_checkpoint("lenet_5_mnist_acc_*_epoch_3", tmp_path)["path"] == str(path)
    assert checkpoints.resolve_checkpoint(str(tmp_path / "lenet_5_*_epoch_3.pt")) == path
    with pytest.raises(UserError, match="no checkpoint 'lenet_5_mnist_acc_\\*_epoch_4'"):
        checkpoints.resolve_checkpoint("lenet_5_mnist_acc_*_epoch_4", tmp_path)
    _saved(tmp_path)  # a second one: lenet_5_mnist_acc_0.5000_epoch_3_2.pt
    with pytest.raises(UserError, match="matches 2 checkpoints"):
        checkpoints.resolve_checkpoint("lenet_5_mnist_acc_*_epoch_3*", tmp_path)
