"""The LeNet family of the reference tables and of Han et al. 2015."""
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model
from models.base import PrunableNet, flat_size


@register_model("lenet_300_100")
class LeNet300100(PrunableNet):
    """784-300-100-10 multilayer perceptron (266,610 parameters on MNIST)."""

    default_widths = (300, 100)
    dropout_before = {}

    def __init__(self, input_shape, num_classes, widths=None):
        super().__init__(input_shape, num_classes, widths)
        h1, h2 = self.widths
        c, h, w = self.input_shape
        self.fc1 = nn.Linear(c * h * w, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model("lenet_5")
class LeNet5(PrunableNet):
    """The reference's small LeNet-5: 3x3 convs with 6 channels (29,456 parameters on MNIST)."""

    default_widths = (6, 6, 128)
    dropout_before = {"fc1": "drop1", "fc2": "drop2"}

    def __init__(self, input_shape, num_classes, widths=None):
        super().__init__(input_shape, num_classes, widths)
        c1, c2, h = self.widths
        self.conv1 = nn.Conv2d(self.input_shape[0], c1, 3)
        self.conv2 = nn.Conv2d(c1, c2, 3)
        self.drop1 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(flat_size(self._features, self.input_shape), h)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(h, num_classes)

    def _features(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return F.max_pool2d(F.relu(self.conv2(x)), 2, padding=1)

    def forward(self, x):
        x = self.drop1(self._features(x).flatten(1))
        x = self.drop2(F.relu(self.fc1(x)))
        return self.fc2(x)


@register_model("lenet_5_caffe")
class LeNet5Caffe(PrunableNet):
    """Caffe's LeNet-5, the one Han et al. 2015 pruned (431,080 parameters on MNIST).
    As in Caffe's prototxt, the convolutions have no nonlinearity after them."""

    default_widths = (20, 50, 500)
    dropout_before = {}

    def __init__(self, input_shape, num_classes, widths=None):
        super().__init__(input_shape, num_classes, widths)
        c1, c2, h = self.widths
        self.conv1 = nn.Conv2d(self.input_shape[0], c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(flat_size(self._features, self.input_shape), h)
        self.fc2 = nn.Linear(h, num_classes)

    def _features(self, x):
        x = F.max_pool2d(self.conv1(x), 2)
        return F.max_pool2d(self.conv2(x), 2)

    def forward(self, x):
        x = F.relu(self.fc1(self._features(x).flatten(1)))
        return self.fc2(x)
