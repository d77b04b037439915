"""A researcher's own networks, importable as ``tests.user_models:<builder>`` (what
``--model=package.module:function`` and ``save_model(builder=...)`` take). Each uses operations
the toolkit's own models do not: depthwise-separable convolutions, a squeeze-and-excitation gate,
a channel split and concatenation, GroupNorm and a channels-last LayerNorm."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(gate))))
        return x * gate


class SplitBlock(nn.Module):
    """Half the channels pass through, the other half through a depthwise-separable branch."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.depthwise = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn = nn.BatchNorm2d(half)
        self.pointwise = nn.Conv2d(half, half, 1)

    def forward(self, x):
        keep, work = x.chunk(2, dim=1)
        work = self.pointwise(F.relu(self.bn(self.depthwise(work))))
        return torch.cat([keep, work], dim=1)


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.norm = nn.GroupNorm(4, width)
        self.expand = nn.Conv2d(width, 2 * width, 1)
        self.depthwise = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, groups=2 * width)
        self.se = SqueezeExcite(2 * width, width // 2)
        self.project = nn.Conv2d(2 * width, width, 1)
        self.split = SplitBlock(width)
        self.channels_last_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = F.relu(self.norm(self.stem(x)))
        x = F.relu(self.depthwise(F.relu(self.expand(x))))
        x = self.project(self.se(x))
        x = self.split(x)
        x = self.channels_last_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(x.mean(dim=(2, 3)))


def tiny_net(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> TinyNet:
    return TinyNet(num_classes, in_channels, width)
