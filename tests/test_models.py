import pytest
import torch

import models
from models.base import weight_layers
from utils.errors import UserError
from utils.reporting.counting import count_flops

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


@pytest.mark.parametrize("name, params, layers", [
    ("lenet_300_100", 266_610, ["fc1", "fc2", "fc3"]),
    ("lenet_5", 29_456, ["conv1", "conv2", "fc1", "fc2"]),
    ("lenet_5_caffe", 431_080, ["conv1", "conv2", "fc1", "fc2"]),
])
def test_exact_parameter_counts_and_stable_layer_names(name, params, layers):
    model = models.create_model(name, MNIST, 10)
    assert sum(p.numel() for p in model.parameters()) == params
    assert [n for n, _ in weight_layers(model)] == layers


# Models that resize every image to 224x224: run them narrow to keep the tests quick.
IMAGENET_SIZED = {"alexnet_imagenet", "resnet18", "resnet50"}


def out_count(module):
    return module.out_features if isinstance(module, torch.nn.Linear) else module.out_channels


@pytest.mark.parametrize("name", models.model_names())
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_every_model_runs_on_every_input_shape(name, shape):
    widths = None
    if name in IMAGENET_SIZED:
        widths = [max(1, w // 8) for w in models.model_class(name).widths_for()]
    model = models.create_model(name, shape, 7, widths=widths).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name", models.model_names())
def test_widths_rebuild_a_narrower_model_of_the_same_class(name):
    narrow = [max(1, w // 4) for w in models.model_class(name).widths_for()]
    model = models.create_model(name, MNIST, 10, widths=narrow)
    assert type(model) is models.model_class(name)
    if type(model).width_groups is models.PrunableNet.width_groups:
        # a plain chain: every width is a hidden weight layer's outputs, in forward order
        assert [out_count(m) for _, m in weight_layers(model)[:-1]] == narrow
    groups = model.width_groups()
    assert len(groups) == len(narrow)
    for layer, channel in groups:  # each width's group lies inside a layer that writes it
        assert 0 <= channel < out_count(model.get_submodule(layer))
    assert model.config()["widths"] == narrow
    with torch.no_grad():
        assert model.eval()(torch.randn(1, *MNIST)).shape == (1, 10)


def test_wrong_widths_and_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="needs 2 positive widths"):
        models.create_model("lenet_300_100", MNIST, 10, widths=[300])
    with pytest.raises(UserError, match="unknown model 'resnet'.*lenet_300_100"):
        models.create_model("resnet", MNIST, 10)
    with pytest.raises(UserError, match="does not take pretrained"):
        models.create_model("lenet_5", MNIST, 10, pretrained=True)


def test_small_alexnet_is_cpu_sized():
    """A few GFLOP per batch of 256, not ImageNet AlexNet's ~370."""
    per_batch = 256 * count_flops(models.create_model("alexnet", CIFAR, 10), CIFAR)
    assert 1e9 < per_batch < 25e9


def test_pretrained_alexnet_imagenet_loads_torchvision_weights_but_keeps_its_classifier(monkeypatch):
    from torchvision.models import AlexNet_Weights
    reference = models.create_model("alexnet_imagenet", CIFAR, 1000)
    fake = {k: torch.full_like(v, 0.5) for k, v in reference.state_dict().items()}
    monkeypatch.setattr(type(AlexNet_Weights.IMAGENET1K_V1), "get_state_dict",
                        lambda self, progress=True: fake)
    model = models.create_model("alexnet_imagenet", CIFAR, 10, pretrained=True)
    assert torch.all(model.features[0].weight == 0.5)
    assert model.classifier[6].out_features == 10
    assert not torch.all(model.classifier[6].weight == 0.5)


def test_pretrained_weights_unreachable_is_a_user_error(monkeypatch):
    from torchvision.models import AlexNet_Weights

    def offline(self, progress=True):
        raise OSError("Name or service not known")

    monkeypatch.setattr(type(AlexNet_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(UserError, match="could not fetch torchvision's ImageNet AlexNet weights"):
        models.create_model("alexnet_imagenet", CIFAR, 10, pretrained=True)
