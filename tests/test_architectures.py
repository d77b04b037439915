"""The pruning papers' architectures: CIFAR ResNets (option A and B shortcuts), VGG-16-BN for
CIFAR, torchvision's ResNet-18/50. Exact counts, torchvision's state_dict layout, torch.fx
traceability, widths as channel groups, clear errors."""
import pytest
import torch
import torch.fx
import torchvision

import models
from models.layers import ZeroPadShortcut
from utils.errors import UserError
from utils.reporting.counting import layer_stats

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
CIFAR_RESNETS = {"resnet20": 3, "resnet32": 5, "resnet56": 9, "resnet110": 18}
NEW_MODELS = sorted(CIFAR_RESNETS) + ["vgg16_bn", "resnet18", "resnet50"]


def params(model):
    return sum(p.numel() for p in model.parameters())


def conv_macs(model, shape):
    return sum(s.macs for s in layer_stats(model, shape)
               if isinstance(model.get_submodule(s.name), torch.nn.Conv2d))


def small_widths(name, factor=8, **options):
    return [max(1, w // factor) for w in models.model_class(name).widths_for(**options)]


class LeafTracer(torch.fx.Tracer):
    """What the dependency graph does: modules whose class says fx_leaf are one operation."""

    def is_leaf_module(self, m, qualname):
        return getattr(type(m), "fx_leaf", False) or super().is_leaf_module(m, qualname)


def trace(model):
    return torch.fx.GraphModule(model, LeafTracer().trace(model))


# --- exact counts ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, parameters, macs", [
    ("resnet20", 269_722, 40_550_400),
    ("resnet32", 464_154, 68_861_952),
    ("resnet56", 853_018, 125_485_056),
    ("resnet110", 1_727_962, 252_887_040),
])
def test_cifar_resnet_counts(name, parameters, macs):
    model = models.create_model(name, CIFAR, 10)
    assert params(model) == parameters
    assert conv_macs(model, CIFAR) == macs


@pytest.mark.parametrize("name", sorted(CIFAR_RESNETS))
def test_option_b_adds_exactly_the_two_projections(name):
    a = models.create_model(name, CIFAR, 10)
    b = models.create_model(name, CIFAR, 10, shortcut="B")
    # 1x1 convs 16->32 and 32->64, each with a BatchNorm (weight and bias)
    assert params(b) - params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert isinstance(a.layer2[0].shortcut, ZeroPadShortcut)
    assert [type(m) for m in b.layer2[0].shortcut] == [torch.nn.Conv2d, torch.nn.BatchNorm2d]
    assert isinstance(b.layer1[0].shortcut, torch.nn.Identity)
    assert isinstance(b.layer2[1].shortcut, torch.nn.Identity)


def test_vgg16_bn_counts():
    model = models.create_model("vgg16_bn", CIFAR, 10)
    assert params(model) == 14_991_946
    assert sum(s.macs for s in layer_stats(model, CIFAR)) == 313_463_808
    assert len(model.widths) == 14 and model.widths[-1] == 512
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    # a plain chain: the base class's width_groups (every hidden weight layer) holds
    assert model.width_groups() == [(n, 0) for n in convs] + [("classifier.0", 0)]


@pytest.mark.parametrize("name, reference, parameters", [
    ("resnet18", torchvision.models.resnet18, 11_689_512),
    ("resnet50", torchvision.models.resnet50, 25_557_032),
])
def test_imagenet_resnets_have_torchvisions_state_dict(name, reference, parameters):
    ours = models.create_model(name, CIFAR, 1000)
    theirs = reference(weights=None)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]
    assert params(ours) == parameters
    ours.load_state_dict(theirs.state_dict())


def test_resnet18_computes_what_torchvision_computes():
    theirs = torchvision.models.resnet18(weights=None).eval()
    ours = models.create_model("resnet18", CIFAR, 1000).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


# --- widths are channel groups -----------------------------------------------------------------

def test_cifar_resnet_widths_layout():
    n = CIFAR_RESNETS["resnet20"]
    assert models.model_class("resnet20").widths_for(shortcut="A") == \
        (16, 16, 32) + (16,) * n + (32,) * n + (64,) * n
    assert models.model_class("resnet20").widths_for(shortcut="B") == \
        (16, 32, 64) + (16,) * n + (32,) * n + (64,) * n
    # option A: the streams nest; stage 2 and 3 widths are sums
    model = models.create_model("resnet20", CIFAR, 10, widths=[5, 6, 7] + [3] * 9)
    assert model.conv1.out_channels == model.layer1[2].conv2.out_channels == 5
    assert model.layer2[0].conv2.out_channels == model.layer2[0].conv1.in_channels + 6 == 11
    assert model.layer3[2].conv2.out_channels == model.fc.in_features == 18
    assert model.layer3[0].shortcut.extra_channels == 7
    assert model.width_groups()[:4] == [("conv1", 0), ("layer2.0.conv2", 5),
                                        ("layer3.0.conv2", 11), ("layer1.0.conv1", 0)]
    model = models.create_model("resnet20", CIFAR, 10, widths=[5, 6, 7] + [3] * 9, shortcut="B")
    assert model.layer2[0].conv2.out_channels == 6 and model.fc.in_features == 7
    assert model.width_groups()[:3] == [("conv1", 0), ("layer2.0.conv2", 0), ("layer3.0.conv2", 0)]


def test_zero_pad_shortcut_keeps_the_stream_first_and_appends_zeros():
    """Why option A's width_groups point at channel s1 (and s1 + p2) of the stage's conv2: the
    shortcut carries the previous stream in the first channels, zeros after them."""
    x = torch.randn(2, 5, 7, 7)
    out = ZeroPadShortcut(2, 3)(x)
    assert out.shape == (2, 8, 4, 4)
    assert torch.equal(out[:, :5], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 5:]) == 0


def test_imagenet_resnet_widths_layout():
    r18 = models.model_class("resnet18").widths_for()
    assert r18 == (64, 128, 256, 512, 64, 64, 128, 128, 256, 256, 512, 512)
    r50 = models.model_class("resnet50").widths_for()
    assert r50[:5] == (64, 256, 512, 1024, 2048) and len(r50) == 5 + 2 * (3 + 4 + 6 + 3)
    model = models.create_model("resnet50", CIFAR, 10, widths=small_widths("resnet50"))
    groups = model.width_groups()
    assert groups[:7] == [("conv1", 0), ("layer1.0.conv3", 0), ("layer2.0.conv3", 0),
                          ("layer3.0.conv3", 0), ("layer4.0.conv3", 0),
                          ("layer1.0.conv1", 0), ("layer1.0.conv2", 0)]
    assert groups[-1] == ("layer4.2.conv2", 0)
    # the stem is its own group in resnet50, stage 1's stream in resnet18
    assert model.layer1[0].downsample[0].in_channels == model.conv1.out_channels == 8
    r18 = models.create_model("resnet18", CIFAR, 10, widths=small_widths("resnet18"))
    assert isinstance(r18.layer1[0].downsample, torch.nn.Identity)
    assert r18.layer1[1].conv2.out_channels == r18.conv1.out_channels == 8


@pytest.mark.parametrize("name, options", [(n, {}) for n in NEW_MODELS] + [("resnet20", {"shortcut": "B"})])
def test_each_width_sizes_the_layer_its_group_points_at(name, options):
    """Adding one to a width adds one output channel to the layer width_groups names for it,
    and the channel named lies inside that layer."""
    cls = models.model_class(name)
    base = small_widths(name, **options)
    model = models.create_model(name, MNIST, 7, widths=base, **options)
    groups = model.width_groups()
    assert len(groups) == len(base)

    def outputs(m, layer):
        module = m.get_submodule(layer)
        return module.out_channels if isinstance(module, torch.nn.Conv2d) else module.out_features

    for layer, channel in groups:
        assert 0 <= channel < outputs(model, layer)
    for i in range(len(base)) if len(base) < 15 else (0, 1, 2, 3, 4, 5, len(base) - 1):
        wider = list(base)
        wider[i] += 1
        grown = cls(MNIST, 7, widths=wider, **options)
        layer, _ = groups[i]
        assert outputs(grown, layer) == outputs(model, layer) + 1


# --- every model runs, traces, rebuilds ----------------------------------------------------------

@pytest.mark.parametrize("name", NEW_MODELS)
@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["mnist", "cifar"])
def test_new_models_run_on_both_input_shapes(name, shape):
    widths = small_widths(name) if name in ("resnet18", "resnet50", "resnet110") else None
    model = models.create_model(name, shape, 7, widths=widths).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name", models.model_names())
def test_every_model_traces_with_torch_fx(name):
    model = models.create_model(name, MNIST, 7, widths=small_widths(name)).eval()
    traced = trace(model)
    x = torch.randn(2, *MNIST)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_option_b_traces_and_the_shortcuts_are_where_expected():
    model = models.create_model("resnet20", MNIST, 7, shortcut="B").eval()
    graph = trace(model).graph
    targets = {node.target for node in graph.nodes if node.op == "call_module"}
    assert {"layer2.0.shortcut.0", "layer3.0.shortcut.0"} <= targets
    a = trace(models.create_model("resnet20", MNIST, 7)).graph
    assert {"layer2.0.shortcut", "layer3.0.shortcut"} <= \
        {node.target for node in a.nodes if node.op == "call_module"}


@pytest.mark.parametrize("name, options", [("resnet20", {}), ("resnet20", {"shortcut": "B"}),
                                           ("vgg16_bn", {}), ("resnet50", {})])
def test_narrow_widths_round_trip_through_config(name, options):
    widths = small_widths(name, factor=4, **options)
    model = models.create_model(name, MNIST, 7, widths=widths, **options)
    config = model.config()
    assert config["widths"] == widths
    assert config.get("options", {}) == ({"shortcut": options.get("shortcut", "A")}
                                         if name.startswith("resnet2") else {})
    rebuilt = models.create_model(config["model"], config["input_shape"], config["num_classes"],
                                  widths=config["widths"], **config.get("options", {}))
    assert type(rebuilt) is type(model)
    assert rebuilt.options == model.options
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())


# --- errors --------------------------------------------------------------------------------------

def test_bad_options_and_widths_are_user_errors():
    with pytest.raises(UserError, match="shortcut must be one of A, B, got 'C'"):
        models.create_model("resnet20", CIFAR, 10, shortcut="C")
    with pytest.raises(UserError, match="does not take shortcut"):
        models.create_model("vgg16_bn", CIFAR, 10, shortcut="A")
    with pytest.raises(UserError, match="needs 12 positive widths"):
        models.create_model("resnet20", CIFAR, 10, widths=[16, 16, 32])
    with pytest.raises(UserError, match="does not take pretrained"):
        models.create_model("resnet20", CIFAR, 10, pretrained=True)


def _fake_weights(monkeypatch, weights_enum, reference):
    fake = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v
            for k, v in reference().state_dict().items()}
    monkeypatch.setattr(weights_enum, "get_state_dict", lambda self, progress=True: fake)


def test_pretrained_resnet18_loads_torchvision_weights_but_keeps_its_classifier(monkeypatch):
    from torchvision.models import ResNet18_Weights
    _fake_weights(monkeypatch, ResNet18_Weights, torchvision.models.resnet18)
    model = models.create_model("resnet18", MNIST, 10, pretrained=True)
    assert torch.all(model.conv1.weight == 0.5) and torch.all(model.layer4[1].bn2.bias == 0.5)
    assert model.fc.out_features == 10 and not torch.all(model.fc.weight == 0.5)
    full = models.create_model("resnet18", MNIST, 1000, pretrained=True)
    assert torch.all(full.fc.weight == 0.5)


def test_pretrained_resnet50_loads_and_refuses_other_widths(monkeypatch):
    from torchvision.models import ResNet50_Weights
    _fake_weights(monkeypatch, ResNet50_Weights, torchvision.models.resnet50)
    model = models.create_model("resnet50", CIFAR, 10, pretrained=True)
    assert torch.all(model.layer1[0].downsample[0].weight == 0.5)
    with pytest.raises(UserError, match="--pretrained needs resnet50's original widths"):
        models.create_model("resnet50", CIFAR, 10, widths=small_widths("resnet50"), pretrained=True)


def test_pretrained_resnet_weights_unreachable_is_a_user_error(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(self, progress=True):
        raise OSError("Name or service not known")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(UserError, match="could not fetch torchvision's ImageNet resnet18 weights"
                                        r".*resnet18-f37072fd\.pth"):
        models.create_model("resnet18", CIFAR, 10, pretrained=True)
