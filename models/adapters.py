"""Input adapters: fit a dataset's images to what an architecture was designed for (three
channels, a minimum or fixed size) inside the model, so any model trains on any dataset.

They sit before the first prunable layer and have no parameters. The dependency graph
(pruners/graph) treats them as leaf operations on the input, whose channels are never pruned;
keeping the shape logic inside a module also keeps the models' forward() free of Python
branches on tensor shapes, which torch.fx cannot trace."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ImageAdapter(nn.Module):
    """Grey images repeated to ``channels``; then resized to ``size`` x ``size`` (bilinear), or
    zero-padded up to at least ``min_size`` on each side (centred), as asked."""

    fx_leaf = True  # traced as one operation (its branches depend on the input's shape)

    def __init__(self, channels: int = 3, size: int = 0, min_size: int = 0):
        super().__init__()
        self.channels, self.size, self.min_size = channels, size, min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        height, width = x.shape[-2:]
        if self.size and (height != self.size or width != self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        elif self.min_size and (height < self.min_size or width < self.min_size):
            pad_h, pad_w = max(self.min_size - height, 0), max(self.min_size - width, 0)
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, size={self.size}, min_size={self.min_size}"
