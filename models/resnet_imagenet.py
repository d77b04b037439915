"""torchvision's ImageNet ResNet-18 and ResNet-50 rebuilt with configurable widths.

At the default widths the module names and parameter shapes are exactly torchvision's, so its
state_dict (and its ImageNet weights, ``pretrained=True``) loads as is. Inputs pass through an
ImageAdapter first (grey images repeated to three channels, resized to 224x224), as
alexnet_imagenet does; it has no parameters, so the state_dict keys are unchanged.

Widths are channel groups, in this order:

- resnet18 (basic blocks, 12 widths): ``[s1, s2, s3, s4] + internal``. s1 is the stem's outputs
  AND stage 1's residual stream (layer1's shortcuts are identities, so the stem conv, layer1.0.conv2
  and layer1.1.conv2 all write the same channels); s2..s4 are the streams of stages 2-4, each
  written by its blocks' conv2 and by layerK.0.downsample. ``internal``: every block's conv1
  outputs, in forward order (layer1.0, layer1.1, layer2.0, ... layer4.1).
  Default (64, 128, 256, 512) + (64, 64, 128, 128, 256, 256, 512, 512).
- resnet50 (bottlenecks, 37 widths): ``[stem, s1, s2, s3, s4] + internal``. The stem's 64
  channels are their own group (layer1.0 has a 64 -> 256 downsample projection); s1..s4 are the
  streams of stages 1-4, written by the blocks' conv3 and layerK.0.downsample. ``internal``: per
  block, conv1's then conv2's outputs, blocks in forward order.
  Default (64, 256, 512, 1024, 2048) + (64, 64) x 3 + (128, 128) x 4 + (256, 256) x 6 + (512, 512) x 3.
"""
import functools
import os

import torch.nn as nn

from models.registry import register_model
from models.adapters import ImageAdapter
from models.base import PrunableNet
from models.layers import BasicBlock
from utils.errors import UserError


def _conv_bn(in_channels, out_channels, kernel, stride=1):
    """The (conv, BN) pair of a downsample projection, named 0 and 1 as torchvision's."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5, stride on the 3x3 conv): 1x1 - 3x3 - 1x1 convs,
    each with BN, ReLU between, + shortcut, ReLU."""

    def __init__(self, in_planes, mid_planes, out_planes, stride, downsample):
        super().__init__()
        first, second = mid_planes
        self.conv1 = nn.Conv2d(in_planes, first, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(first)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(first, second, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(second)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(second, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.relu3 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.downsample(x))


class ImageNetResNet(PrunableNet):
    """Base of resnet18 / resnet50; see the module docstring for the widths."""

    bottleneck = False
    blocks = (2, 2, 2, 2)
    weights_name = ""   # torchvision.models' weights enum
    dropout_before = {}
    image_size = 224

    @classmethod
    def internal_per_block(cls) -> int:
        return 2 if cls.bottleneck else 1

    def __init__(self, input_shape, num_classes, widths=None, pretrained=False):
        super().__init__(input_shape, num_classes, widths)
        stem_group = 1 if self.bottleneck else 0  # resnet18's stem writes stage 1's stream
        stem = self.widths[0]
        streams = self.widths[stem_group:stem_group + 4]
        internal = iter(self.widths[stem_group + 4:])
        per_block = self.internal_per_block()
        block_type = Bottleneck if self.bottleneck else functools.partial(
            BasicBlock, shortcut_name="downsample")  # torchvision's name, so its weights load

        self.adapter = ImageAdapter(channels=3, size=self.image_size)
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = stem
        for stage, (count, out_planes) in enumerate(zip(self.blocks, streams)):
            layers = []
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                # A projection where a stage's stream starts: every stage but resnet18's first,
                # whose stream is the stem's own channels. Decided by position, never by comparing
                # (possibly pruned) widths.
                downsample = (_conv_bn(in_planes, out_planes, 1, stride)
                              if i == 0 and (stage > 0 or self.bottleneck) else None)
                mid = tuple(next(internal) for _ in range(per_block))
                layers.append(block_type(in_planes, mid if self.bottleneck else mid[0],
                                         out_planes, stride, downsample))
                in_planes = out_planes
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if pretrained:
            self._load_imagenet_weights()

    def width_groups(self):
        if self.bottleneck:  # the stem, then each stage's stream as its first block's conv3 writes it
            groups = [("conv1", 0)] + [(f"layer{stage}.0.conv3", 0) for stage in (1, 2, 3, 4)]
            convs = ("conv1", "conv2")
        else:  # the stem writes stage 1's stream
            groups = [("conv1", 0)] + [(f"layer{stage}.0.conv2", 0) for stage in (2, 3, 4)]
            convs = ("conv1",)
        groups += [(f"layer{stage + 1}.{i}.{conv}", 0)
                   for stage, count in enumerate(self.blocks) for i in range(count)
                   for conv in convs]
        return groups

    def _load_imagenet_weights(self):
        name = self.registry_name
        if self.widths != self.original_widths:
            raise UserError(f"--pretrained needs {name}'s original widths; drop --pretrained "
                            "or --widths")
        import torchvision.models
        weights = getattr(torchvision.models, self.weights_name).IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as exc:  # no network, proxy, corrupt cache: all end the same way
            raise UserError(f"could not fetch torchvision's ImageNet {name} weights ({exc}); put "
                            f"{os.path.basename(weights.url)} in the torch hub cache or drop "
                            "--pretrained")
        if self.num_classes != 1000:  # the ImageNet classifier; ours keeps its own
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = self.load_state_dict(state, strict=False)
        stray = [k for k in result.missing_keys if not k.startswith("fc.")] + result.unexpected_keys
        if stray:
            raise UserError(f"torchvision's {name} weights do not fit this model "
                            f"({', '.join(stray[:3])}); drop --pretrained")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(self.adapter(x))))
        x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("resnet18")
class ResNet18(ImageNetResNet):
    """torchvision's ResNet-18 (11,689,512 parameters for 1000 classes)."""

    bottleneck = False
    blocks = (2, 2, 2, 2)
    weights_name = "ResNet18_Weights"
    default_widths = (64, 128, 256, 512) + (64, 64, 128, 128, 256, 256, 512, 512)


@register_model("resnet50")
class ResNet50(ImageNetResNet):
    """torchvision's ResNet-50, v1.5 (25,557,032 parameters for 1000 classes)."""

    bottleneck = True
    blocks = (3, 4, 6, 3)
    weights_name = "ResNet50_Weights"
    default_widths = (64, 256, 512, 1024, 2048) + tuple(
        w for planes, count in zip((64, 128, 256, 512), blocks) for w in (planes, planes) * count)
