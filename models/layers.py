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

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride, self.extra_channels = int(stride), int(extra_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        # F.pad's pairs run from the last dimension backwards: (W, H, C); zeros go after C.
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"
