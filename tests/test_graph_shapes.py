"""The walk's shape-only layers (pruners/graph/shapes.py): the zero tensor it puts in place of a
convolution's or linear layer's output has exactly the shape the layer returns, and every case
it does not cover runs the layer."""
import pytest
import torch
import torch.nn as nn

from pruners.graph.shapes import shape_only_output

CASES = [
    (nn.Conv1d(3, 5, 3), (2, 3, 17)),
    (nn.Conv1d(3, 5, 4, stride=3, padding=2, dilation=2), (3, 17)),  # unbatched
    (nn.Conv2d(3, 8, 3, stride=2, padding=1), (2, 3, 15, 16)),
    (nn.Conv2d(4, 8, (3, 5), stride=(2, 1), padding=(0, 2), dilation=(1, 3), groups=2), (1, 4, 19, 23)),
    (nn.Conv2d(3, 6, 3, padding="same", dilation=2), (1, 3, 9, 10)),
    (nn.Conv2d(3, 6, 4, padding="valid"), (1, 3, 9, 10)),
    (nn.Conv2d(3, 6, 3, padding=2, padding_mode="circular", stride=2), (1, 3, 9, 10)),
    (nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect"), (3, 9, 10)),  # unbatched
    (nn.Conv3d(2, 4, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (1, 2, 5, 9, 9)),
    (nn.Linear(7, 3), (7,)),
    (nn.Linear(7, 3), (2, 5, 4, 7)),
    (nn.Linear(7, 3, bias=False), (2, 7)),
]


@pytest.mark.parametrize("layer, shape", CASES, ids=[f"{type(l).__name__}-{i}" for i, (l, _) in enumerate(CASES)])
def test_shape_only_output_has_the_shape_the_layer_returns(layer, shape):
    x = torch.randn(shape)
    out = shape_only_output(layer, (x,), {})
    assert out is not None
    assert out.shape == layer(x).shape
    assert out.dtype == x.dtype and not out.any()


class DoubledConv(nn.Conv2d):
    def forward(self, x):  # a subclass's own forward may return any shape
        return torch.cat([super().forward(x)] * 2, 1)


def test_layers_it_cannot_vouch_for_run():
    x = torch.randn(1, 3, 8, 8)
    hooked = nn.Conv2d(3, 4, 3)
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    assert shape_only_output(DoubledConv(3, 4, 3), (x,), {}) is None
    assert shape_only_output(hooked, (x,), {}) is None
    assert shape_only_output(nn.Conv2d(5, 4, 3), (x,), {}) is None        # wrong channels: its error
    assert shape_only_output(nn.Conv2d(3, 4, 9), (x,), {}) is None        # empty output: its error
    assert shape_only_output(nn.Conv2d(3, 4, 3).double(), (x,), {}) is None  # dtype mismatch
    assert shape_only_output(nn.Linear(5, 2), (torch.randn(2, 4),), {}) is None
    assert shape_only_output(nn.MaxPool2d(2), (x,), {}) is None
    assert shape_only_output(nn.Linear(8, 2), (x,), {"extra": 1}) is None


@pytest.mark.parametrize("layer, shape", [
    (nn.BatchNorm1d(5), (3, 5)), (nn.BatchNorm1d(5), (3, 5, 7)), (nn.BatchNorm2d(4), (2, 4, 6, 6)),
    (nn.BatchNorm2d(4, affine=False), (1, 4, 3, 3)), (nn.BatchNorm3d(2), (1, 2, 3, 3, 3)),
    (nn.ReLU(inplace=True), (2, 3, 4)), (nn.Hardswish(), (5,)), (nn.GELU(), (1, 7, 9)),
    (nn.SiLU(), (2, 3)), (nn.Sigmoid(), (2, 2, 2, 2))])
def test_batchnorm_and_activations_keep_the_input_shape(layer, shape):
    x = torch.randn(shape)
    out = shape_only_output(layer.eval(), (x,), {})
    assert out is not None and out.shape == layer(x.clone()).shape
    assert (out is x) == getattr(layer, "inplace", False)  # as the layer itself returns


def test_a_training_batchnorm_is_not_run_and_keeps_its_statistics():
    norm = nn.BatchNorm2d(3).train()
    assert shape_only_output(norm, (torch.randn(2, 3, 4, 4) + 5,), {}) is not None
    assert torch.equal(norm.running_mean, torch.zeros(3)) and int(norm.num_batches_tracked) == 0
    assert shape_only_output(nn.BatchNorm2d(3), (torch.randn(2, 4, 4, 4),), {}) is None
    assert shape_only_output(nn.BatchNorm2d(3), (torch.randn(3, 4, 4),), {}) is None
