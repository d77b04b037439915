"""utils.modes: a model's modes are switched for a while and each module's flag is put back."""
import pytest
import torch
import torch.nn as nn

from pruners.graph import build_graph
from utils.modes import eval_mode, training_mode


def frozen_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout())
    model.train()
    model[1].eval()  # a BatchNorm its user froze
    return model


def flags(model):
    return [m.training for m in model.modules()]


def test_eval_mode_and_building_a_graph_put_every_flag_back():
    model = frozen_model()
    before = flags(model)
    with eval_mode(model):
        assert not any(flags(model))
    assert flags(model) == before
    with pytest.raises(RuntimeError):
        with training_mode(True, model):
            assert all(flags(model))
            raise RuntimeError("inside")
    assert flags(model) == before
    build_graph(model, torch.randn(1, 3, 8, 8))
    assert flags(model) == before


class KeepsNormFrozen(nn.Sequential):
    def train(self, mode: bool = True):
        super().train(mode)
        self[1].eval()
        return self


def test_a_class_with_its_own_train_is_asked():
    model = KeepsNormFrozen(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.eval()
    with training_mode(True, model):
        assert model.training and model[0].training and not model[1].training
    assert not any(flags(model))
