"""Parameter-free layers the architectures share."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ZeroPadShortcut(nn.Module):
    """He et al. 2016's option-A shortcut: subsample by ``stride`` (x[:, :, ::s, ::s]) and append
    ``extra_channels`` zero channels AFTER the input's channels, so output channel c < C_in is
    input channel c and the rest are constant zeros.

    Traced as one operation (``fx_leaf``): the dependency graph reads its channel mapping from
    ``extra_channels`` instead of having to understand slicing and padding, and nothing treats the
    padding as channel-preserving by accident."""

    fx_leaf = True
    width_attributes = ("extra_channels",)  # compaction sets it (pruners/compact.py)

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride, self.extra_channels = int(stride), int(extra_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        # F.pad's pairs run from the last dimension backwards: (W, H, C); zeros go after C.
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class BasicBlock(nn.Module):
    """He et al. 2016's basic block: 3x3 conv (stride) - BN - ReLU - 3x3 conv - BN, plus the
    shortcut, then ReLU. ``shortcut_name`` is the attribute the shortcut lives under (CIFAR code
    says ``shortcut``, torchvision ``downsample``: the state_dict keys follow it)."""

    def __init__(self, in_planes: int, mid_planes: int, out_planes: int, stride: int,
                 shortcut: nn.Module = None, shortcut_name: str = "shortcut"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(mid_planes, out_planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.shortcut_name = shortcut_name
        setattr(self, shortcut_name, shortcut if shortcut is not None else nn.Identity())
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + getattr(self, self.shortcut_name)(x))
