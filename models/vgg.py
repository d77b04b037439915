"""VGG-16 with BatchNorm for CIFAR, as Li et al. 2017 ("Pruning Filters for Efficient ConvNets")
and the FPGM paper prune it."""
import torch.nn as nn

from models.registry import register_model
from models.adapters import ImageAdapter
from models.base import PrunableNet, flat_size

# Conv widths with "M" for a 2x2 max pool, VGG's configuration "D".
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register_model("vgg16_bn")
class VGG16BN(PrunableNet):
    """13 3x3 convs (with bias), each followed by BatchNorm and ReLU, five 2x2 max pools, then
    Linear(512, 512)-BatchNorm1d-ReLU-Linear(512, classes): 14,991,946 parameters and 313,463,808
    multiply-accumulates for a 32x32 CIFAR-10 image.

    A plain chain: the widths are the 13 convs' filters and the hidden linear's neurons, in
    forward order (the default width_groups). Images smaller than 32x32 (MNIST's 28x28) are
    zero-padded to 32x32 first, so the five pools leave a 1x1 map; the channels stay the
    dataset's."""

    default_widths = tuple(w for w in _LAYOUT if w != "M") + (512,)
    dropout_before = {}

    def __init__(self, input_shape, num_classes, widths=None):
        super().__init__(input_shape, num_classes, widths)
        convs, hidden = iter(self.widths[:-1]), self.widths[-1]
        self.adapter = ImageAdapter(channels=self.input_shape[0], min_size=32)
        layers, in_channels = [], self.input_shape[0]
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out_channels = next(convs)
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1),
                       nn.BatchNorm2d(out_channels), nn.ReLU()]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        flat = flat_size(lambda x: self.features(self.adapter(x)), self.input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(self.adapter(x))
        return self.classifier(x.flatten(1))
