"""MagnitudePruner: Han et al.'s magnitude pruning as a step for any model's own loop. Exact
counts, the same selection as torch.nn.utils.prune's L1 pruning, masks that only grow, pruned
weights that stay zero through training, per-layer rates and exclusions, clear errors."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

from pruners import MagnitudePruner
from tests.user_models import tiny_net
from utils.errors import UserError
from utils.layers import weight_layers


def _model():
    torch.manual_seed(0)
    return tiny_net(num_classes=10)


def _weights(model):
    return {name: module.weight.detach().clone() for name, module in weight_layers(model)}


def test_global_step_removes_exactly_the_smallest_like_torch_l1():
    model, reference = _model(), _model()
    sparsity = MagnitudePruner(model, rate=0.6).step()
    prune.global_unstructured([(m, "weight") for _, m in weight_layers(reference)],
                              pruning_method=prune.L1Unstructured, amount=0.6)
    total = sum(m.weight.numel() for _, m in weight_layers(model))
    zeros = sum(int((m.weight == 0).sum()) for _, m in weight_layers(model))
    assert zeros == round(0.6 * total)
    for (name, ours), (_, theirs) in zip(weight_layers(model), weight_layers(reference)):
        assert torch.equal(ours.weight_mask, theirs.weight_mask), name
    assert "head" in sparsity, "the classifier is pruned too, as in Han et al."


def test_layer_scope_rates_and_exclusions():
    model = _model()
    sparsity = MagnitudePruner(model, rate=0.5, scope="layer", layer_rates={"stem": 0.25},
                               exclude=["head"]).step()
    layers = dict(weight_layers(model))
    assert sparsity["stem"] == pytest.approx(round(0.25 * layers["stem"].weight.numel()) / layers["stem"].weight.numel())
    for name in ("expand", "project", "se.reduce"):
        assert sparsity[name] == pytest.approx(0.5, abs=1 / layers[name].weight.numel())
    assert "head" not in sparsity and not hasattr(layers["head"], "weight_mask")


def test_masks_only_grow_and_pruned_weights_stay_zero_through_training():
    model = _model()
    pruner = MagnitudePruner(model, rate=0.5)
    pruner.step()
    first = {n: m.weight_mask.clone() for n, m in weight_layers(model)}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(5):
        loss = F.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, module in weight_layers(model):
        assert not module.weight[first[name] == 0].any(), name
    pruner.step(rate=0.3)  # a lower rate removes nothing back
    pruner.step(rate=0.8)
    for name, module in weight_layers(model):
        assert not (module.weight_mask.bool() & ~first[name].bool()).any(), name
    total = sum(m.weight.numel() for _, m in weight_layers(model))
    assert sum(int((m.weight_mask == 0).sum()) for _, m in weight_layers(model)) == round(0.8 * total)


def test_biases_too_when_asked():
    model = _model()
    MagnitudePruner(model, rate=0.5, tensors=("weight", "bias")).step()
    assert hasattr(dict(weight_layers(model))["stem"], "bias_mask")


@pytest.mark.parametrize("kwargs, message", [
    ({"rate": 1.0}, "rate"),
    ({"rate": 0.5, "scope": "block"}, "scope must be one of"),
    ({"rate": 0.5, "layer_rates": {"norm": 0.5}}, "no Conv2d or Linear layer"),
    ({"rate": 0.5, "exclude": ["nothing"]}, "no Conv2d or Linear layer"),
])
def test_bad_arguments_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        MagnitudePruner(_model(), **kwargs)


def test_any_model_with_conv_and_linear_layers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 5))
    MagnitudePruner(model, rate=0.9).step()
    zeros = sum(int((m.weight == 0).sum()) for m in (model[0], model[3]))
    assert zeros == round(0.9 * (8 * 27 + 5 * 7200))
