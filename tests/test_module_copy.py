"""utils.module_copy.deepcopy_modules is copy.deepcopy for module trees: same classes, state,
sharing and independence, on the cases that make deepcopy's generic path matter."""
import copy

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
import torchvision

from utils.masks import detached_copy
from utils.module_copy import deepcopy_modules


class Tied(nn.Module):
    """A shared submodule, a tied weight, an aliased list, a hook and a module of its own copy."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.head = nn.Linear(6, 4)
        self.head.weight = nn.Parameter(self.embed.weight.t().detach().clone())
        self.tied = nn.Linear(6, 4)
        self.tied.weight = self.head.weight
        self.again = self.embed            # the same module under two names
        self.names = []
        self.also_names = self.names       # an aliased (empty) list
        self.widths = (4, 6)
        self.table = torch.arange(4.0)     # a plain tensor attribute, neither buffer nor parameter
        self.custom = Custom()
        self.register_buffer("scale", torch.ones(4))
        self.embed.register_forward_hook(_double)

    def forward(self, x):
        return self.tied(self.embed(x)) * self.scale + self.custom(x)


def _double(module, inputs, output):
    return output * 2


class Custom(nn.Module):
    copies = 0

    def __deepcopy__(self, memo):
        Custom.copies += 1
        new = Custom()
        memo[id(self)] = new
        return new

    def forward(self, x):
        return x


def _same(a: nn.Module, b: nn.Module):
    assert type(a) is type(b)
    assert [n for n, _ in a.named_modules(remove_duplicate=False)] == \
        [n for n, _ in b.named_modules(remove_duplicate=False)]
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_copy_matches_deepcopy_and_keeps_sharing():
    model = Tied()
    ours, theirs = deepcopy_modules(model), copy.deepcopy(model)
    for copied in (ours, theirs):
        _same(model, copied)
        assert copied.again is copied.embed and copied.tied.weight is copied.head.weight
        assert copied.also_names is copied.names and copied.names is not model.names
        assert torch.equal(copied.table, model.table) and copied.table is not model.table
        assert copied.embed.weight.data_ptr() != model.embed.weight.data_ptr()
        assert len(copied.embed._forward_hooks) == 1
        assert copied.embed._forward_hooks is not model.embed._forward_hooks
        x = torch.randn(3, 4)
        assert torch.equal(copied(x), model(x))
    before = Custom.copies
    deepcopy_modules(model)
    assert Custom.copies == before + 1  # a class with its own __deepcopy__ copies itself


def test_copy_of_a_masked_torchvision_model_is_independent():
    model = torchvision.models.mobilenet_v3_small(num_classes=5).eval()
    prune.l1_unstructured(model.features[0][0], "weight", amount=0.5)
    copied = detached_copy(model)  # deepcopy_modules after the mask's cache is made a leaf
    _same(model, copied)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(copied(x), model(x))
    with torch.no_grad():
        copied.features[0][0].weight_orig.zero_()
        copied.features[1].block[0][1].num_features = 0
    assert model.features[0][0].weight_orig.abs().sum() > 0
    assert model.features[1].block[0][1].num_features != 0
    empty = [d for d in ("_forward_hooks", "_buffers")
             if getattr(copied.classifier[0], d) is getattr(model.classifier[0], d)]
    assert not empty
