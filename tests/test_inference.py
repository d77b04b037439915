"""BatchNorm folded for inference: the same function without the BatchNorm passes, for every
registered architecture, dense and compact."""
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import models
from pruners.compact import compact_model, pruned_sets, zero_channels
from pruners.graph import build_graph
from models.inference import batchnorm_count, fold_batchnorm, for_deployment
from tests.test_graph import ARCHITECTURES, _random_batchnorm, _selection, small_widths


@pytest.mark.parametrize("name,options", ARCHITECTURES)
def test_folded_model_computes_what_the_model_does(name, options):
    torch.manual_seed(0)
    shape = (3, 32, 32) if name.startswith(("resnet", "vgg")) else (1, 28, 28)
    model = models.create_model(name, shape, 10, widths=small_widths(name, **options), **options)
    _random_batchnorm(model)
    graph = build_graph(model, model.input_shape)
    selection = _selection(graph, True, random.Random(name), "random")
    zero_channels(model, graph, pruned_sets(graph, selection))
    x = torch.randn(3, *shape)
    for candidate in (model, compact_model(model, selection, graph)):
        candidate.train()
        folded = fold_batchnorm(candidate)
        assert candidate.training, "the model given is left in its own mode"
        assert batchnorm_count(candidate) == 0 or batchnorm_count(folded) < batchnorm_count(candidate)
        deployed = for_deployment(candidate)
        candidate.eval()
        with torch.no_grad():
            torch.testing.assert_close(folded(x), candidate(x), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(deployed(x), candidate(x), atol=1e-4, rtol=1e-4)
        for conv in (m for m in deployed.modules() if isinstance(m, nn.Conv2d)):
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_every_batchnorm_of_the_cifar_networks_is_folded():
    for name in ("resnet20", "vgg16_bn"):
        model = models.create_model(name, (3, 32, 32), 10, widths=small_widths(name))
        assert batchnorm_count(model) > 0 and batchnorm_count(fold_batchnorm(model)) == 0


def test_a_batchnorm_whose_input_has_another_reader_stays():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = Branch().eval()
    _random_batchnorm(model)
    x = torch.randn(2, 1, 8, 8)
    folded = fold_batchnorm(model)
    assert batchnorm_count(folded) == 1
    torch.testing.assert_close(folded(x), model(x))


def test_masked_models_are_refused():
    model = models.create_model("lenet_300_100", (1, 28, 28), 10)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    prune.l1_unstructured(first, "weight", amount=0.5)
    with pytest.raises(ValueError, match="deployable"):
        fold_batchnorm(model)
