"""A CI-fast subset of torchvision's zoo that covers every operation the graph's table added
(depthwise and grouped convs, squeeze-and-excitation gates, channel shuffle, chunk and split,
concatenation, channels-last LayerNorm with layer scale, stochastic depth, GroupNorm-free
inception branches): pruned 30% by l1norm through ChannelPruner, compact == masked within 1e-4,
saved and loaded back from the file alone. benchmarks/zoo.py runs all 80 at full size."""
import pytest
import torch
import torchvision
from torchvision.models import convnext, resnet

from pruners import ChannelPruner
from utils.checkpoints import load_model, save_model


def _small_convnext():
    settings = [convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, None, 2)]
    return convnext.ConvNeXt(settings, stochastic_depth_prob=0.1, num_classes=10)


def _small_resnext():
    return resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, groups=4, width_per_group=8)


# name -> (builder spec for save_model, keyword arguments, or a factory when none can rebuild it)
MODELS = {
    "mobilenet_v3_small": ("torchvision.models.mobilenet_v3_small", {"num_classes": 10}),
    "efficientnet_b0": ("torchvision.models.efficientnet_b0", {"num_classes": 10}),
    "regnet_x_400mf": ("torchvision.models.regnet_x_400mf", {"num_classes": 10}),
    "shufflenet_v2_x0_5": ("torchvision.models.shufflenet_v2_x0_5", {"num_classes": 10}),
    "squeezenet1_1": ("torchvision.models.squeezenet1_1", {"num_classes": 10}),
    "googlenet": ("torchvision.models.googlenet", {"num_classes": 10, "aux_logits": False,
                                                   "init_weights": True}),
    "small_densenet": ("torchvision.models.densenet:DenseNet",
                       {"growth_rate": 8, "block_config": [2, 2], "num_init_features": 16,
                        "num_classes": 10}),
    "small_convnext": (None, _small_convnext),
    "small_resnext": (None, _small_resnext),
}


def _build(name):
    builder, kwargs = MODELS[name]
    if builder is None:
        return kwargs()
    if builder.startswith("torchvision.models.") and ":" not in builder:
        return torchvision.models.get_model(builder.rsplit(".", 1)[1], **kwargs)
    return torchvision.models.densenet.DenseNet(**kwargs)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("prune_residual", [False, True], ids=["block", "residual"])
def test_zoo_model_prunes_exactly_and_round_trips(tmp_path, name, prune_residual):
    torch.manual_seed(0)
    model = _build(name).eval()
    x = torch.randn(2, 3, 64, 64)
    pruner = ChannelPruner(model, x, criterion="l1norm", rate=0.3, prune_residual=prune_residual)
    assert pruner.prunable, f"{name}: no prunable group"
    pruner.step()
    small = pruner.compact()
    assert pruner.compact_difference < 1e-4
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(model)
    builder, kwargs = MODELS[name]
    if builder is None:  # no builder can make it from JSON: loaded into a fresh instance
        path = save_model(small, tmp_path / f"{name}.pt")
        loaded = load_model(path, model=kwargs())
    else:
        loaded = load_model(save_model(small, tmp_path / f"{name}.pt", builder=builder,
                                       builder_kwargs=kwargs))
    assert count(loaded) == count(small)
    with torch.no_grad():
        assert torch.equal(small.eval()(x), loaded.eval()(x))
