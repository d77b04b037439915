"""He et al. 2016's CIFAR ResNets (depth 6n+2), the networks the FPGM paper prunes on CIFAR-10.

A 3x3 conv stem with 16 filters, three stages of n basic blocks with 16, 32 and 64 channels
(stride 2 at the start of stages 2 and 3), global average pooling and one linear layer.

Shortcut option ``shortcut``:

- "A" (default, the paper's CIFAR choice and the FPGM code's): parameter-free. Where a stage
  starts, the shortcut subsamples (x[:, :, ::2, ::2]) and adds zero channels. The FPGM code pads
  planes//4 zero channels on BOTH sides of the input's channels; here all of them are APPENDED
  after the input's channels (models.layers.ZeroPadShortcut). That is the same network up to a
  fixed permutation of the stage-2 and stage-3 channels (same parameters, FLOPs and accuracy),
  and it makes the residual streams nest: stage 2's stream is stage 1's channels followed by the
  channels stage 2 adds, so a pruned stream's width is a simple sum.
- "B": a 1x1 conv (stride 2) + BatchNorm projection where the shape changes (the first block of
  stages 2 and 3), identity elsewhere.

Widths (channel groups), in this order:

- option A: ``[s1, p2, p3] + internal``. s1 is stage 1's stream (the stem's outputs); it runs on
  as the first s1 channels of stages 2 and 3. p2 is the channels stage 2 adds (its stream has
  s1 + p2 channels); p3 the channels stage 3 adds (stream s1 + p2 + p3). Default (16, 16, 32).
- option B: ``[s1, s2, s3] + internal``, each stage's stream on its own. Default (16, 32, 64).
- ``internal``: every block's conv1 outputs, n per stage, in forward order (layer1.0 ...
  layer3.{n-1}); default 16 x n, 32 x n, 64 x n.
"""
import torch.nn as nn

from models.registry import register_model
from models.base import PrunableNet
from models.layers import BasicBlock, ZeroPadShortcut
from utils.errors import UserError

SHORTCUTS = ("A", "B")


class CifarResNet(PrunableNet):
    """Base of resnet20/32/56/110; subclasses set ``depth`` (6n + 2). See the module docstring
    for the widths and the shortcut option."""

    depth = 20
    architecture_options = {"shortcut": "A"}
    dropout_before = {}

    @classmethod
    def blocks_per_stage(cls) -> int:
        return (cls.depth - 2) // 6

    @classmethod
    def widths_for(cls, shortcut="A"):
        if shortcut not in SHORTCUTS:
            raise UserError(f"{cls.registry_name}: shortcut must be one of "
                            f"{', '.join(SHORTCUTS)}, got {shortcut!r}")
        n = cls.blocks_per_stage()
        streams = (16, 16, 32) if shortcut == "A" else (16, 32, 64)
        return streams + (16,) * n + (32,) * n + (64,) * n

    def __init__(self, input_shape, num_classes, widths=None, shortcut="A"):
        super().__init__(input_shape, num_classes, widths, shortcut=shortcut)
        n = self.blocks_per_stage()
        a, b, c = self.widths[:3]
        internal = self.widths[3:]
        zero_pad = self.options["shortcut"] == "A"
        streams = (a, a + b, a + b + c) if zero_pad else (a, b, c)

        self.conv1 = nn.Conv2d(self.input_shape[0], streams[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(streams[0])
        self.relu = nn.ReLU()
        in_planes = streams[0]
        for stage, out_planes in enumerate(streams):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if stride == 1:  # every later block, and all of stage 1: same stream in and out
                    shortcut = nn.Identity()
                elif zero_pad:
                    shortcut = ZeroPadShortcut(stride, out_planes - in_planes)
                else:
                    shortcut = nn.Sequential(
                        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(out_planes))
                blocks.append(BasicBlock(in_planes, internal[stage * n + i], out_planes, stride,
                                         shortcut))
                in_planes = out_planes
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def width_groups(self):
        n = self.blocks_per_stage()
        if self.options["shortcut"] == "A":
            a, b = self.widths[:2]
            streams = [("conv1", 0), ("layer2.0.conv2", a), ("layer3.0.conv2", a + b)]
        else:
            streams = [("conv1", 0), ("layer2.0.conv2", 0), ("layer3.0.conv2", 0)]
        internal = [(f"layer{stage}.{i}.conv1", 0) for stage in (1, 2, 3) for i in range(n)]
        return streams + internal

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("resnet20")
class ResNet20(CifarResNet):
    """n = 3 blocks per stage: 269,722 parameters (option A, 10 classes)."""
    depth = 20


@register_model("resnet32")
class ResNet32(CifarResNet):
    """n = 5 blocks per stage: 464,154 parameters (option A, 10 classes)."""
    depth = 32


@register_model("resnet56")
class ResNet56(CifarResNet):
    """n = 9 blocks per stage: 853,018 parameters (option A, 10 classes)."""
    depth = 56


@register_model("resnet110")
class ResNet110(CifarResNet):
    """n = 18 blocks per stage: 1,727,962 parameters (option A, 10 classes)."""
    depth = 110
