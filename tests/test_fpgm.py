"""FPGM: the criterion on hand-built filters, the soft and fixed schedules, physical removal for
every registered model, checkpoints of compact models, and pruning.py end to end."""
import shutil

import pytest
import torch
import torch.nn as nn

import models
import pruning
from models.base import weight_layers
from pruners.compact import compact_model
from pruners import ChannelPruner, PruneContext, create_pruner
from pruners.criteria.fpgm import DISTANCES, GeometricMedian, pruned_count
from tests.conftest import run_script
from utils import checkpoints
from utils.data import load_dataset
from utils.errors import UserError
from utils.training import TrainingSettings


def fpgm_args(**overrides):
    """The flags pruning.py would hand the pruner, with its defaults."""
    args = pruning.get_args_parser().parse_args(["--pruning_method=fpgm"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def fpgm_select(filters, rate, distance="l2", norm_amount=0.0):
    """FPGM's choice among ``filters`` at ``rate`` (plus FPGM-mix's norm share)."""
    criterion = GeometricMedian(distance, norm_amount)
    return criterion.select_rows(filters, pruned_count(len(filters), rate) + criterion.extra(len(filters)))


def as_filters(points):
    """Each point becomes one conv filter of shape (1, 1, len(point))."""
    return torch.tensor(points, dtype=torch.float32).view(len(points), 1, 1, -1)


# ---- the criterion -------------------------------------------------------------------------

@pytest.mark.parametrize("distance", sorted(DISTANCES))
def test_filter_at_the_known_centre_is_chosen(distance):
    centre = [2.0, 1.0, -1.0, 3.0]
    points = [centre]
    for axis in range(4):  # a symmetric star of filters around the centre, in every direction
        for sign in (1.0, -1.0):
            p = list(centre)
            p[axis] += sign * 1.5
            points.append(p)
    filters = as_filters(points[1:5] + [points[0]] + points[5:])  # centre in the middle: index 4
    chosen = fpgm_select(filters, 0.12, distance)  # floor(9 x 0.12) = 1
    assert chosen.tolist() == [4]


def test_distances_really_switch():
    # Sums of L1 distances: (4, 0) -> 7+2+4+6 = 19, (3, 1) -> 7+6+6+2 = 21, so L1 picks index 4;
    # L2 picks (3, 1); cosine ignores length and picks (4, -4), whose direction is central.
    filters = as_filters([[-2, -1], [3, 1], [4, -4], [-2, 0], [4, 0]])
    chosen = {d: fpgm_select(filters, 0.2, d).tolist() for d in DISTANCES}
    assert chosen == {"l2": [1], "l1": [4], "cos": [2]}


@pytest.mark.parametrize("filters,rate,expected", [
    (10, 0.25, 2), (10, 0.4, 4), (100, 0.29, 29), (6, 0.4, 2), (20, 0.0, 0), (3, 0.3, 0)])
def test_floor_of_n_times_rate(filters, rate, expected):
    assert pruned_count(filters, rate) == expected
    weight = torch.randn(filters, 3, 3, 3)
    chosen = fpgm_select(weight, rate)
    assert len(chosen) == expected and len(set(chosen.tolist())) == expected


def test_mix_removes_smallest_norms_then_measures_among_survivors():
    # 1-D filters. Over all seven the median is 4; once the two smallest-norm ones (0.1, -0.2)
    # are gone, the median of {3, 4, 5, 8, 9} is 5.
    filters = as_filters([[5.0], [0.1], [9.0], [3.0], [-0.2], [8.0], [4.0]])
    plain = fpgm_select(filters, 0.15)                    # floor(7 x .15) = 1
    mix = fpgm_select(filters, 0.15, norm_amount=0.3)     # + floor(7 x .3) = 2
    assert plain.tolist() == [6]
    assert mix.tolist() == [0, 1, 4]


# ---- physical removal ----------------------------------------------------------------------

CHAINS = ("lenet_300_100", "lenet_5", "lenet_5_caffe", "alexnet", "alexnet_imagenet")
SMALL_WIDTHS = {"alexnet_imagenet": (8, 12, 16, 16, 12, 32, 24)}  # 57M parameters otherwise


def soft_pruned(name, input_shape, rate=0.4, **flags):
    """A random model of ``name`` with FPGM's selection zeroed, and the pruner that chose it."""
    torch.manual_seed(0)
    model = models.create_model(name, input_shape, 10, widths=SMALL_WIDTHS.get(name))
    pruner = create_pruner("fpgm", fpgm_args(cut_rate=rate, **flags))
    pruner.soft_step(model, pruner.prunable_groups(model), epoch=1)
    return model, pruner


@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", CHAINS)
def test_compact_chain_equals_masked_model(name, input_shape):
    """Plain chains: every hidden layer is a group and loses floor(width x rate) filters (the
    architectures with shortcuts are tested in tests/test_graph.py)."""
    model, pruner = soft_pruned(name, input_shape)
    small = compact_model(model, {k: v.tolist() for k, v in pruner.selection.items()})
    assert type(small) is type(model)
    assert list(small.widths) == [w - pruned_count(w, 0.4) for w in model.widths]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    model.eval(), small.eval()
    x = torch.randn(3, *input_shape)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=0)
    # the classifier keeps every class
    assert weight_layers(small)[-1][1].weight.shape[0] == 10


def test_compact_keeps_the_right_columns_after_flatten():
    # Index misalignment at conv -> flatten -> linear (the official repo's issues 38 and 40):
    # the first linear's columns must be the H x W block of each kept channel, in order.
    model, pruner = soft_pruned("lenet_5_caffe", (1, 28, 28))
    small = compact_model(model, {k: v.tolist() for k, v in pruner.selection.items()})
    kept = [c for c in range(50) if c not in pruner.selection["conv2"].tolist()]
    block = model.fc1.in_features // 50
    kept_fc1 = [r for r in range(500) if r not in pruner.selection["fc1"].tolist()]
    expected = model.fc1.weight.detach().view(500, 50, block)[kept_fc1][:, kept].reshape(len(kept_fc1), -1)
    assert torch.equal(small.fc1.weight, expected)


def test_excluded_layers_keep_their_width():
    model, pruner = soft_pruned("lenet_5_caffe", (1, 28, 28), exclude=["conv1,fc1"])
    assert set(pruner.selection) == {"conv2"}
    small = compact_model(model, {k: v.tolist() for k, v in pruner.selection.items()})
    assert list(small.widths) == [20, 30, 500]


def test_widths_round_trip_through_a_checkpoint(tmp_path):
    model, pruner = soft_pruned("lenet_5_caffe", (1, 28, 28))
    small = compact_model(model, {k: v.tolist() for k, v in pruner.selection.items()}).eval()
    path = checkpoints.save_checkpoint(
        checkpoints.make_checkpoint(small, "mnist", {}, {}, pruning=pruner.metadata()),
        tmp_path / "small.pt")
    loaded = checkpoints.load_checkpoint(str(path))
    assert loaded["config"]["widths"] == [12, 30, 300]
    rebuilt = checkpoints.build_model(loaded).eval()
    assert rebuilt.widths == (12, 30, 300)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small(x))


# ---- soft and fixed schedules --------------------------------------------------------------

def test_soft_step_lets_a_regrown_filter_leave_the_selection():
    model = models.create_model("lenet_300_100", (1, 1, 2), 3, widths=[5, 3])
    layer = model.fc1
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-2.0, -1], [3, 1], [4, -4], [-2, 0], [4, 0]]))
    pruner = create_pruner("fpgm", fpgm_args(cut_rate=0.2))  # floor(5 x 0.2) = 1, floor(3 x 0.2) = 0
    groups = pruner.prunable_groups(model)
    first = pruner.soft_step(model, groups, epoch=1)
    assert pruner.selection["fc1"].tolist() == [1] and pruner.selection["fc2"].tolist() == []
    assert layer.weight[1].abs().sum() == 0 and layer.bias[1] == 0
    assert first == {"epoch": 1, "zeroed": 1, "regrown": 0, "left": 0}
    with torch.no_grad():  # training moves the zeroed filter far out; (4, 0) is now central
        layer.weight[1] = torch.tensor([30.0, 30.0])
    second = pruner.soft_step(model, groups, epoch=2)
    assert second == {"epoch": 2, "zeroed": 1, "regrown": 1, "left": 1}
    assert pruner.selection["fc1"].tolist() == [4]
    assert layer.weight[1].tolist() == [30.0, 30.0]  # no longer selected: not zeroed again


class RecordingContext(PruneContext):
    """Retrains as usual and checks, after every optimizer step, what a test asks for."""
    check_step = None

    def retrain(self, model, epochs=None, after_step=None, on_epoch_end=None, phase="retrain"):
        def step():
            if after_step is not None:
                after_step()
            if self.check_step is not None:
                self.check_step(model)
        return super().retrain(model, epochs, after_step=step, on_epoch_end=on_epoch_end,
                               phase=phase)


def tiny_context(mnist_dir, epochs):
    train, test, _ = load_dataset("mnist", mnist_dir, download=False, verify=False)
    settings = TrainingSettings(epochs=epochs, batch_size=64, learning_rate=1e-3, progress=False)
    return RecordingContext(train=train, test=test, settings=settings,
                            generator=torch.Generator().manual_seed(0), print_fn=lambda *a: None)


def test_soft_mode_filters_regrow_during_training(mnist_dir):
    torch.manual_seed(0)
    model = models.create_model("lenet_5_caffe", (1, 28, 28), 10, widths=(6, 8, 16))
    pruner = create_pruner("fpgm", fpgm_args(cut_rate=0.4))
    context = tiny_context(mnist_dir, epochs=3)
    seen_nonzero = []

    def check(m):  # after the first zeroing, the zeroed conv filters move again under training
        if pruner.selection:
            seen_nonzero.append(bool(m.conv2.weight[pruner.selection["conv2"]].abs().sum() > 0))
    context.check_step = check
    selection = pruner.train_masked(model, context)
    assert [e["epoch"] for e in pruner.epoch_log] == [1, 2, 3]
    assert seen_nonzero and all(seen_nonzero)
    assert all(e["regrown"] > 0 for e in pruner.epoch_log[1:])
    for name, index in selection.items():  # the final selection is zero, the rest is not
        weight = getattr(model, name).weight.detach().flatten(1)
        assert weight[index].abs().sum() == 0
        assert (weight.abs().sum(1) > 0).sum() == weight.shape[0] - len(index)


def test_fixed_mode_keeps_the_first_selection_at_zero(mnist_dir):
    torch.manual_seed(0)
    model = models.create_model("lenet_5_caffe", (1, 28, 28), 10, widths=(6, 8, 16))
    first = {name: fpgm_select(getattr(model, name).weight, 0.4)
             for name in ("conv1", "conv2", "fc1")}
    before_fc2 = model.fc2.weight.detach().clone()
    pruner = create_pruner("fpgm", fpgm_args(cut_rate=0.4, prune_mode="fixed"))
    context = tiny_context(mnist_dir, epochs=2)
    steps = []

    def check(m):  # during training the layers are masked: the effective weights stay zero
        steps.append(all(getattr(m, n).weight[i].abs().sum() == 0 and getattr(m, n).bias[i].abs().sum() == 0
                         for n, i in first.items()))
    context.check_step = check
    selection = pruner.train_masked(model, context)
    assert steps and all(steps)
    assert {n: i.tolist() for n, i in selection.items()} == {n: i.tolist() for n, i in first.items()}
    assert not torch.equal(model.fc2.weight, before_fc2)  # it did train
    # masks made permanent: plain parameters again, pruned filters zero
    assert not hasattr(model.conv1, "weight_orig") and isinstance(model.conv1.weight, nn.Parameter)
    assert all(getattr(model, n).weight[i].abs().sum() == 0 for n, i in first.items())


# ---- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"norm_rate": 1.2}, "norm_rate must be in"),
    ({"mode": "hard"}, "mode must be one of soft, fixed"),
    ({"finetune_epochs": -1}, "finetune_epochs must be zero or more"),
    ({"distance": "l3"}, "unknown distance 'l3'"),
])
def test_bad_keywords_raise_before_anything(kwargs, message):
    with pytest.raises(UserError, match=message):
        create_pruner("fpgm", **kwargs)


def test_bad_layer_input_raises_before_training():
    model = models.create_model("lenet_5_caffe", (1, 28, 28), 10)
    with pytest.raises(UserError, match="would remove all 20 channels of conv1"):
        create_pruner("fpgm", fpgm_args(cut_rate=0.5, fpgm_norm_rate=0.5)).prunable_groups(model)
    with pytest.raises(UserError, match="exclude names no layer or group of LeNet5Caffe: conv9; its groups are conv1"):
        create_pruner("fpgm", fpgm_args(exclude=["conv9"])).prunable_groups(model)


# ---- pruning.py end to end -----------------------------------------------------------------

@pytest.fixture
def caffe_checkpoint(trained_checkpoint, tmp_path):
    """A private copy of the trained lenet_5_caffe checkpoint, so writes can be counted."""
    path, _, data_dir = trained_checkpoint("lenet_5_caffe")
    shutil.copy(path, tmp_path / path.name)
    return path.name, tmp_path, data_dir


def pruning_argv(name, ckpt_dir, data_dir, *extra):
    return [f"--load_folder_model={name}", f"--checkpoint_dir={ckpt_dir}", f"--data_dir={data_dir}",
            "--pruning_method=fpgm", "--epochs=1", "--batch_size=64", "--inference_sampling=2",
            "--inference_batch_size=8", "--no_progress", "--no_download", "--no_verify_data", *extra]


def test_pruning_script_end_to_end(caffe_checkpoint):
    name, ckpt_dir, data_dir = caffe_checkpoint
    code, result = run_script(pruning.main, pruning_argv(name, ckpt_dir, data_dir, "--cut_rate=0.4"))
    assert code == 0
    assert result["after"]["flops"] < 0.5 * result["before"]["flops"]
    assert result["after"]["parameters"] < result["before"]["parameters"]
    saved = checkpoints.load_checkpoint(result["path"])
    assert saved["config"]["widths"] == [12, 30, 300]
    assert saved["pruning"]["method"] == "fpgm" and saved["pruning"]["original_widths"] == [20, 50, 500]
    assert [e["epoch"] for e in saved["pruning"]["epochs"]] == [1]
    assert saved["pruning"]["compact_max_difference"] < 1e-5
    # the file alone rebuilds the compact model, with the accuracy the script measured
    from utils.training import evaluate
    _, test, _ = load_dataset("mnist", data_dir, download=False, verify=False)
    assert evaluate(checkpoints.build_model(saved), test)["acc"] == result["after"]["top1_acc"]


@pytest.mark.parametrize("extra,message", [
    (["--cut_rate=1.0"], "--cut_rate: must be a finite number in [0, 1)"),
    (["--cut_rate=0.5", "--fpgm_norm_rate=0.5"], "would remove all"),
    (["--fpgm_exclude=conv9"], "exclude names no layer"),
    (["--fpgm_norm_rate=-0.1"], "--fpgm_norm_rate: must be a finite number in [0, 1)"),
    (["--pruning_epochs=3"], "--pruning_epochs do not apply to --pruning_method=fpgm"),
    (["--quality=1.0", "--prune_scope=layer"], "--prune_scope, --quality do not apply"),
])
def test_pruning_script_bad_input_exits_2_and_writes_nothing(caffe_checkpoint, capsys, extra, message):
    name, ckpt_dir, data_dir = caffe_checkpoint
    before = sorted(p.name for p in ckpt_dir.iterdir())
    code, _ = run_script(pruning.main, pruning_argv(name, ckpt_dir, data_dir, *extra))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == before


def test_unknown_distance_is_an_argparse_error(caffe_checkpoint):
    name, ckpt_dir, data_dir = caffe_checkpoint
    code, _ = run_script(pruning.main, pruning_argv(name, ckpt_dir, data_dir, "--fpgm_distance=l3"))
    assert code == 2


def test_speed_benchmark_prints_conv_rates_per_width_and_layout():
    from benchmarks import fpgm_speed
    rates = fpgm_speed.main(["--conv_rates", "--arch_batch_size=1", "--rounds=1", "--samples=1",
                             "--warmup=0"])["conv_rates"]
    assert set(rates) == set(fpgm_speed.CONV_SHAPES)
    assert all(r["contiguous"] > 0 and r["channels_last"] > 0 for r in rates.values())


def test_speed_benchmark_runs_and_reports_ratios(trained_checkpoint):
    from benchmarks import fpgm_speed
    path, _, data_dir = trained_checkpoint("lenet_5_caffe")
    results = fpgm_speed.main([f"--load_folder_model={path}", f"--data_dir={data_dir}", "--no_verify_data",
                               "--batch_size=8", "--rounds=1", "--samples=1", "--warmup=1",
                               "--alexnet_images=32", "--alexnet_samples=1",
                               "--architectures", "resnet56_residual_aligned", "vit_tiny", "--arch_batch_size=2",
                               "--arch_rounds=3"])
    # the FLOP ratio is exact: widths (20, 50, 500) -> (12, 30, 300) on 28x28 inputs
    assert results["lenet_5_caffe"]["flop_ratio"] == pytest.approx(4_586_000 / 1_791_600)
    assert results["alexnet"]["flop_ratio"] > 2
    assert all(r["throughput_speedup"] > 0 and r["latency_speedup"] > 0 for r in results.values())
    # conv nets are timed as trained and deployed (BatchNorm folded, channels_last)
    assert set(results["resnet56_residual_aligned"]["forms"]) == {"eager", "deployed"}
    assert set(results["lenet_5_caffe"]["forms"]) == {"eager", "deployed"}
    assert results["resnet56_residual_aligned"]["flop_ratio"] > 2.5
    # the small ViT, 17 tokens of 192 channels: 6 heads of 32 -> 4, MLP 768 -> 461 in each of 6
    # blocks (q, k, v and output projections, the two products between tokens, the MLP); the
    # patch embedding and the classifier stay
    def vit_macs(inner, mlp, tokens=17, embed=192):
        block = tokens * (4 * inner * embed + 2 * mlp * embed) + 2 * tokens * tokens * inner
        return 6 * block + 192 * 3 * 7 * 7 * 16 + 192 * 10
    assert results["vit_tiny"]["flops"] == {"dense": 2 * vit_macs(192, 768),
                                            "compact": 2 * vit_macs(128, 461), "paper_counting": None}


def test_finetune_epochs_train_the_compact_model_and_the_report_counts_parameters(
        caffe_checkpoint, capsys):
    name, ckpt_dir, data_dir = caffe_checkpoint
    code, result = run_script(pruning.main, pruning_argv(name, ckpt_dir, data_dir, "--cut_rate=0.4",
                                                         "--finetune_epochs=1"))
    assert code == 0
    saved = checkpoints.load_checkpoint(result["path"])
    assert saved["pruning"]["finetune_epochs"] == 1
    assert saved["pruning"]["finetune_acc"] == result["after"]["top1_acc"]
    out = capsys.readouterr().out
    assert "fine-tuning the compact model for 1 epochs" in out
    # a compact model is dense: the report says how many parameters are gone, not "sparsity"
    reduction = 1 - result["after"]["parameters"] / result["before"]["parameters"]
    assert f"({reduction:.1%} fewer" in out and "sparsity" not in out
    assert "speed-up, deployed" in out  # a conv net: timed channels_last too


@pytest.mark.parametrize("filters,rate,multiple,expected", [
    (16, 0.4, 8, 8),     # keeps 10 -> nearest multiple of 8 is 8
    (32, 0.4, 8, 8),     # keeps 20 -> 16 and 24 are as near: keep more
    (64, 0.4, 8, 24),    # keeps 39 -> 40
    (8, 0.4, 8, 3),      # a group no larger than the multiple keeps the paper's count
    (16, 0.1, 8, 0),     # keeps 15 -> 16: nothing pruned
    (64, 0.4, 1, 25),    # 1: the paper's floor(N x rate)
])
def test_channel_multiple_rounds_what_is_kept(filters, rate, multiple, expected):
    model = models.create_model("lenet_300_100", (1, 1, 4), 3, widths=[filters, 4])
    pruner = ChannelPruner(model, model.input_shape, rate=rate, channel_multiple=multiple,
                           layer_rates={"fc2": 0.0})
    assert pruner.count(pruner.graph.group("fc1")) == expected
    assert len(pruner.step()["fc1"]) == expected


def test_channel_multiple_with_fpgm_mix_takes_from_the_distance_share_first():
    model = models.create_model("lenet_300_100", (1, 1, 4), 3, widths=[32, 4])
    criterion = GeometricMedian(norm_rate=0.2)
    pruner = ChannelPruner(model, model.input_shape, criterion=criterion, rate=0.2,
                           channel_multiple=8, layer_rates={"fc2": 0.0})
    group = pruner.graph.group("fc1")
    assert pruner.count(group) == 8  # floor 6 + floor 6 keeps 20 -> 24: 8 pruned
    assert criterion.extra(32) == 6  # of which 6 by norm, 2 by distance
