"""save_model / load_model: any model, masked or compact, rebuilt from the file alone (or from an
unpruned instance the caller passes), never a pickled module; files that do not fit are one
UserError."""
import pickletools
import zipfile

import pytest
import torch
import torch.nn as nn

import models  # noqa: F401  (registers the "registered" builder kind)
from pruners import ChannelPruner, MagnitudePruner
from tests.user_models import TinyNet, tiny_net
from utils.checkpoints import load_model, metadata_of, save_model
from utils.errors import UserError
from utils.masks import normalization_masks


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    a.eval(), b.eval()
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _no_pickled_module(path) -> None:
    """The archive's pickle names torch's rebuild functions and plain types only."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    globals_used = {arg for op, arg, _ in pickletools.genops(data)
                    if op.name in ("GLOBAL", "STACK_GLOBAL") and arg}
    assert not any("nn.modules" in g or "user_models" in g for g in map(str, globals_used))


def test_compact_torchvision_mobilenet_round_trip(tmp_path):
    torch.manual_seed(0)
    import torchvision
    model = torchvision.models.mobilenet_v2(num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    pruner = ChannelPruner(model, x, criterion="l1norm", rate=0.3)
    pruner.step()
    small = pruner.compact()
    path = save_model(small, tmp_path / "mobilenet.pt", builder="torchvision.models.mobilenet_v2",
                      builder_kwargs={"num_classes": 10}, accuracy=0.5)
    _no_pickled_module(path)
    loaded = load_model(path)
    assert type(loaded) is type(small)
    assert _parameters(loaded) == _parameters(small) < _parameters(model)
    for name, module in small.named_modules():
        other = loaded.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            assert (other.in_channels, other.out_channels, other.groups) == \
                (module.in_channels, module.out_channels, module.groups), name
    assert _same_outputs(small, loaded, x) == 0.0
    assert metadata_of(path) == {"accuracy": 0.5} == loaded.saved_metadata


def test_registered_model_keeps_its_widths(tmp_path):
    torch.manual_seed(0)
    model = models.create_model("lenet_5_caffe", (1, 28, 28), 10)
    pruner = ChannelPruner(model, (1, 28, 28), criterion="fpgm", rate=0.5)
    pruner.step()
    small = pruner.compact()
    loaded = load_model(save_model(small, tmp_path / "lenet.pt"))
    assert loaded.widths == small.widths != model.widths
    assert _same_outputs(small, loaded, torch.randn(3, 1, 28, 28)) == 0.0


def test_user_builder_masked_with_normalisation_masks(tmp_path):
    """A masked (not compacted) user model: pruning masks and the masked LayerNorm come back, so
    the loaded model computes what the saved one did, and what its compaction computes."""
    torch.manual_seed(0)
    model = tiny_net(num_classes=10)
    x = torch.randn(4, 1, 28, 28)
    pruner = ChannelPruner(model, x, criterion="l1norm", rate=0.3, prune_residual=True, mode="fixed")
    pruner.step()
    assert normalization_masks(model), "the channels-last LayerNorm is masked"
    path = save_model(model, tmp_path / "tiny.pt", builder="tests.user_models:tiny_net",
                      builder_kwargs={"num_classes": 10})
    loaded = load_model(path)
    assert normalization_masks(loaded) == normalization_masks(model)
    assert _same_outputs(model, loaded, x) == 0.0
    masks = {n for n, _ in loaded.named_buffers() if n.endswith("_mask")}
    assert masks == {n for n, _ in model.named_buffers() if n.endswith("_mask")} != set()
    assert _same_outputs(pruner.compact(), loaded, x) < 1e-5


def test_callable_builder_and_an_instance_for_a_model_without_builder(tmp_path):
    torch.manual_seed(0)
    model = TinyNet(num_classes=5)
    x = torch.randn(2, 1, 28, 28)
    pruner = ChannelPruner(model, x, criterion="l1norm", rate=0.3)
    pruner.step()
    small = pruner.compact()
    with_builder = load_model(save_model(small, tmp_path / "a.pt", builder=tiny_net,
                                         builder_kwargs={"num_classes": 5}))
    assert _same_outputs(small, with_builder, x) == 0.0
    path = save_model(small, tmp_path / "b.pt")  # no builder: every module's shapes recorded
    with pytest.raises(UserError, match="pass an unpruned instance"):
        load_model(path)
    assert _same_outputs(small, load_model(path, model=TinyNet(num_classes=5)), x) == 0.0


def test_magnitude_masks_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny_net()
    MagnitudePruner(model, rate=0.6).step()
    loaded = load_model(save_model(model, tmp_path / "m.pt", builder="tests.user_models:tiny_net"))
    x = torch.randn(2, 1, 28, 28)
    assert _same_outputs(model, loaded, x) == 0.0
    assert float(loaded.expand.weight_mask.mean()) == float(model.expand.weight_mask.mean()) < 1


def test_a_file_that_does_not_fit_is_one_user_error(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    pruner = ChannelPruner(model, (1, 28, 28), criterion="l1norm", rate=0.5)
    pruner.step()
    path = save_model(pruner.compact(), tmp_path / "tiny.pt", builder="tests.user_models:tiny_net")
    with pytest.raises(UserError, match="does not belong to this model|cannot take"):
        load_model(path, model=nn.Sequential(nn.Conv2d(1, 4, 3)))
    with pytest.raises(UserError, match="was pruned from shapes .* the file does not belong"):
        load_model(path, model=TinyNet(width=32))


@pytest.mark.parametrize("builder, message", [
    ("tests.no_such_module:net", "cannot import tests.no_such_module"),
    ("tests.user_models:no_such_builder", "has no no_such_builder"),
    ("torchvision.models.no_such_net", "torchvision.models has no model 'no_such_net'"),
    (lambda: TinyNet(), "cannot be imported back"),
])
def test_builders_that_cannot_rebuild_are_refused_when_saving(tmp_path, builder, message):
    with pytest.raises(UserError, match=message):
        save_model(TinyNet(), tmp_path / "x.pt", builder=builder)
    assert not (tmp_path / "x.pt").exists()


def test_unjsonable_kwargs_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="JSON-able"):
        save_model(TinyNet(), tmp_path / "x.pt", builder="tests.user_models:tiny_net",
                   builder_kwargs={"norm": nn.BatchNorm2d})
    whole = tmp_path / "whole.pt"
    torch.save(TinyNet(), whole)  # a pickled module: never unpickled
    with pytest.raises(UserError, match="never unpickles"):
        load_model(whole)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a torch.save archive"):
        load_model(junk)
    plain_dict = tmp_path / "dict.pt"
    torch.save({"weights": torch.zeros(2)}, plain_dict)
    with pytest.raises(UserError, match="not written by save_model"):
        load_model(plain_dict)


def test_a_checkpoint_of_the_scripts_loads_too(tmp_path):
    from utils.checkpoints import make_checkpoint, save_checkpoint
    torch.manual_seed(0)
    model = models.create_model("lenet_300_100", (1, 28, 28), 10)
    path = save_checkpoint(make_checkpoint(model, "mnist", {"test_acc": 0.5}, {}), tmp_path / "c.pt")
    loaded = load_model(path)
    assert loaded.saved_metadata["metrics"] == {"test_acc": 0.5}
    assert _same_outputs(model, loaded, torch.randn(2, 1, 28, 28)) == 0.0
