"""AlexNet: a CPU-sized variant for 28x28 and 32x32 images, and torchvision's ImageNet layout."""
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model
from models.adapters import ImageAdapter
from models.base import PrunableNet, flat_size
from utils.errors import UserError


@register_model("alexnet")
class AlexNet(PrunableNet):
    """Five 3x3 conv layers (64-192-384-256-256 filters) with ReLU and max-pooling, then three
    linear layers with dropout. The first conv has stride 2 so a batch of 256 CIFAR-10 images
    costs about 22 GFLOP (13 on MNIST) instead of ImageNet AlexNet's 370."""

    default_widths = (64, 192, 384, 256, 256, 512, 512)
    dropout_before = {"fc1": "drop1", "fc2": "drop2"}

    def __init__(self, input_shape, num_classes, widths=None):
        super().__init__(input_shape, num_classes, widths)
        c1, c2, c3, c4, c5, h1, h2 = self.widths
        self.conv1 = nn.Conv2d(self.input_shape[0], c1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1)
        self.drop1 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(flat_size(self._features, self.input_shape), h1)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def _features(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        return F.max_pool2d(F.relu(self.conv5(x)), 2)

    def forward(self, x):
        x = self.drop1(self._features(x).flatten(1))
        x = self.drop2(F.relu(self.fc1(x)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model("alexnet_imagenet")
class AlexNetImageNet(PrunableNet):
    """torchvision's AlexNet (same module names, so its ImageNet weights load) with inputs
    resized to 224x224 and grey images repeated to three channels; the last layer has the
    dataset's classes. ``pretrained=True`` loads torchvision's weights when they can be reached."""

    default_widths = (64, 192, 384, 256, 256, 4096, 4096)
    dropout_before = {"classifier.1": "classifier.0", "classifier.4": "classifier.3"}
    image_size = 224

    def __init__(self, input_shape, num_classes, widths=None, pretrained=False):
        super().__init__(input_shape, num_classes, widths)
        c1, c2, c3, c4, c5, h1, h2 = self.widths
        self.adapter = ImageAdapter(channels=3, size=self.image_size)
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(c5 * 36, h1), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(h1, h2), nn.ReLU(inplace=True),
            nn.Linear(h2, num_classes),
        )
        if pretrained:
            self._load_imagenet_weights()

    def _load_imagenet_weights(self):
        if self.widths != self.default_widths:
            raise UserError("--pretrained needs alexnet_imagenet's original widths")
        from torchvision.models import AlexNet_Weights
        try:
            state = AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # no network, proxy, corrupt cache: all end the same way
            raise UserError(f"could not fetch torchvision's ImageNet AlexNet weights ({exc}); "
                            "put alexnet-owc7c1d6.pth in the torch hub cache or drop --pretrained")
        # The ImageNet classifier has 1000 outputs; ours keeps its own last layer.
        state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
        self.load_state_dict(state, strict=False)

    def forward(self, x):
        x = self.avgpool(self.features(self.adapter(x))).flatten(1)
        return self.classifier(x)
