"""Han et al. 2015 magnitude pruning: exact selection, scopes, schedule, masks that hold under
real optimizers, the dropout rule, sparse checkpoints and inference, and pruning.py end to end."""
import math
from argparse import Namespace

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import models
import pruning
from models.base import weight_layers
from pruners import PruneContext, create_pruner
from pruners.magnitude import (MagnitudeUnstructured, find_cut, magnitude_keys,
                               magnitude_unstructured, smallest_k_masks)
from pruners.songhan import SongHanPruner, adjusted_dropout, schedule_sparsity
from tests.conftest import run_script
from utils import checkpoints
from utils.data import Split
from utils.errors import UserError
from utils.masks import current_masks, make_permanent
from utils.training import TrainingSettings
from pruners.sparse_linear import (AUTO_MAX_DENSITY, AUTO_MIN_BATCH, AUTO_MIN_WEIGHTS, SparseLinear,
                                 sparse_layers, sparsify_linear_layers)

MNIST = (1, 28, 28)


def _args(**overrides):
    base = dict(cut_rate=0.5, quality=None, prune_scope="global", pruning_epochs=1,
                prune_bias=False, adjust_dropout=True, sparse_inference="auto", layer_rates=None)
    return Namespace(**{**base, **overrides})


def _reference_removed(tensors, k, masks):
    """Positions (in the concatenation) of the k smallest |t|: entries masked before first,
    then by magnitude, ties by position (a stable sort)."""
    flat = torch.cat([t.reshape(-1).abs() for t in tensors])
    was_pruned = torch.cat([(m == 0).reshape(-1) if m is not None else
                            torch.zeros(t.numel(), dtype=torch.bool) for t, m in zip(tensors, masks)])
    key = torch.where(was_pruned, torch.full_like(flat, -1.0), flat)
    removed = torch.zeros(len(flat), dtype=torch.bool)
    removed[torch.sort(key, stable=True).indices[:k]] = True
    return removed


@pytest.mark.parametrize("seed", range(12))
def test_exactly_the_k_smallest_magnitudes_are_removed(seed):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 400, (3,), generator=gen).tolist()
    if seed % 2:  # few distinct values: many ties, exact zeros, negative and positive twins
        tensors = [torch.randint(-3, 4, (n,), generator=gen).float() for n in sizes]
    else:
        tensors = [torch.randn(n, generator=gen) for n in sizes]
    masks = [(torch.rand(n, generator=gen) > 0.3).float() if seed % 3 else None for n in sizes]
    total = sum(sizes)
    already = sum(int((m == 0).sum()) for m in masks if m is not None)
    for k in sorted({already, (already + total) // 2, total - 1, total}):
        got = smallest_k_masks(tensors, k, masks)
        removed = torch.cat([(g == 0).reshape(-1) for g in got])
        assert int(removed.sum()) == k
        assert torch.equal(removed, _reference_removed(tensors, k, masks))


def test_ties_go_by_position_and_signs_do_not_matter():
    weight = torch.tensor([[0.5, -0.5, 0.5], [-0.5, 0.5, 0.1]])
    (mask,) = smallest_k_masks([weight], 3)
    # the 0.1 first, then the two earliest of the five tied |0.5|, whatever their sign
    assert mask.tolist() == [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    # the reference's bug pruned every negative weight; by magnitude a large negative survives
    (mask,) = smallest_k_masks([torch.tensor([-9.0, 0.2, -0.1, 3.0])], 2)
    assert mask.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_the_cut_is_the_kth_value_on_a_large_tensor():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(300_001, generator=gen)
    k = 123_457
    cut = find_cut([magnitude_keys(values)], k)
    assert cut.threshold() == torch.kthvalue(values.abs(), k).values.item()


def test_criterion_through_torch_prune_holds_weight_equals_orig_times_mask():
    layer = nn.Linear(20, 10)
    MagnitudeUnstructured.apply(layer, "weight", amount=0.3)
    assert hasattr(layer, "weight_orig") and hasattr(layer, "weight_mask")
    assert int((layer.weight_mask == 0).sum()) == 60
    assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)
    kept = layer.weight_orig.abs()[layer.weight_mask == 1].min()
    assert kept >= layer.weight_orig.abs()[layer.weight_mask == 0].max()
    # the functional form, like prune.l1_unstructured; a second call counts within survivors
    functional = magnitude_unstructured(nn.Linear(20, 10), "weight", amount=50)
    assert int((functional.weight_mask == 0).sum()) == 50
    magnitude_unstructured(functional, "weight", amount=0.5)
    assert int((functional.weight_mask == 0).sum()) == 125
    # Han's quality rule: a threshold instead of a count
    other = nn.Linear(20, 10)
    threshold = other.weight.abs().median().item()
    MagnitudeUnstructured.apply(other, "weight", threshold=threshold)
    assert torch.equal(other.weight_mask.bool(), other.weight_orig.abs() >= threshold)


def _two_scale_model():
    """lenet_300_100 with fc2 scaled up 10x: global magnitude prunes it far less than fc1."""
    torch.manual_seed(0)
    model = models.create_model("lenet_300_100", MNIST, 10, widths=[32, 16])
    with torch.no_grad():
        model.fc2.weight.mul_(10)
    return model


def test_global_scope_cuts_the_whole_network_at_one_threshold():
    model = _two_scale_model()
    weights = {name: m.weight.detach().clone() for name, m in weight_layers(model)}
    total = sum(w.numel() for w in weights.values())
    SongHanPruner.from_args(_args(cut_rate=0.6, prune_scope="global")).prune_step(model, 1)
    pruned = {name: int((m.weight_mask == 0).sum()) for name, m in weight_layers(model)}
    assert sum(pruned.values()) == round(0.6 * total)
    assert pruned["fc2"] / weights["fc2"].numel() < pruned["fc1"] / weights["fc1"].numel()
    removed = torch.cat([weights[n].abs()[m.weight_mask == 0] for n, m in weight_layers(model)])
    kept = torch.cat([weights[n].abs()[m.weight_mask == 1] for n, m in weight_layers(model)])
    assert removed.max() <= kept.min()


def test_layer_scope_cuts_every_layer_by_the_rate():
    model = _two_scale_model()
    SongHanPruner.from_args(_args(cut_rate=0.6, prune_scope="layer")).prune_step(model, 1)
    for _, m in weight_layers(model):
        assert int((m.weight_mask == 0).sum()) == round(0.6 * m.weight_mask.numel())
        assert not hasattr(m, "bias_mask")


def test_bias_flag_prunes_biases_too():
    model = _two_scale_model()
    SongHanPruner.from_args(_args(cut_rate=0.5, prune_scope="layer", prune_bias=True)).prune_step(model, 1)
    for _, m in weight_layers(model):
        assert int((m.bias_mask == 0).sum()) == round(0.5 * m.bias.numel())


def test_quality_prunes_below_q_times_the_layer_std():
    model = _two_scale_model()
    pruner = SongHanPruner.from_args(_args(quality=1.0))
    stds = {n: m.weight.detach().std().item() for n, m in weight_layers(model)}
    originals = {n: m.weight.detach().clone() for n, m in weight_layers(model)}
    pruner.prune(model, _NoRetrain())
    for name, m in weight_layers(model):
        assert torch.equal(m.weight != 0, originals[name].abs() >= stds[name])
    assert pruner.metadata()["quality"] == 1.0


def test_schedule_reaches_the_target_at_the_last_round():
    steps = schedule_sparsity(0.92, 4)
    assert len(steps) == 4 and steps[-1] == 0.92
    assert all(a < b for a, b in zip(steps, steps[1:]))
    # each round removes the same share of the weights still alive
    alive = [1 - s for s in [0.0] + steps]
    assert all(b / a == pytest.approx(alive[1] / alive[0]) for a, b in zip(alive, alive[1:]))
    assert schedule_sparsity(0.5, 1) == [0.5]


class _NoRetrain:
    """Stands in for PruneContext where retraining is beside the point; records the masks."""

    def __init__(self):
        self.epochs, self.seen = 0, []
        self.test = Split(torch.zeros(4, *MNIST), torch.zeros(4, dtype=torch.long))

    monitor_name = "test"

    def print_fn(self, *_):
        pass

    def accuracy(self, model, history=None):
        return 0.0

    def retrain(self, model, *_, **__):
        self.seen.append({n: m.weight_mask.clone() for n, m in weight_layers(model)})
        return []


def test_iterative_rounds_follow_the_schedule_with_nested_masks_kept_for_the_checkpoint():
    model = _two_scale_model()
    total = sum(m.weight.numel() for _, m in weight_layers(model))
    pruner = SongHanPruner.from_args(_args(cut_rate=0.9, pruning_epochs=3))
    context = _NoRetrain()
    result = pruner.prune(model, context)
    assert set(current_masks(result)) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    make_permanent(result)
    targets = [round(s * total) for s in schedule_sparsity(0.9, 3)]
    assert [sum(int((m == 0).sum()) for m in masks.values()) for masks in context.seen] == targets
    for before, after in zip(context.seen, context.seen[1:]):  # pruned stays pruned
        assert all(torch.all(after[n][before[n] == 0] == 0) for n in before)
    assert not any(prune.is_pruned(m) for _, m in weight_layers(result))
    assert set(result.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                        "fc3.weight", "fc3.bias"}
    assert sum(int((m.weight == 0).sum()) for _, m in weight_layers(result)) == targets[-1]
    meta = pruner.metadata()
    assert meta["method"] == "songhan" and meta["cut_rate"] == 0.9 and meta["pruning_rounds"] == 3
    assert meta["scope"] == "global" and len(meta["rounds"]) == 3
    assert meta["layers"]["fc1.weight"]["nonzero"] == int(torch.count_nonzero(result.fc1.weight))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_pruned_entries_stay_zero_after_real_optimizer_steps(optimizer):
    torch.manual_seed(0)
    model = models.create_model("lenet_300_100", MNIST, 10, widths=[16, 8])
    SongHanPruner.from_args(_args(cut_rate=0.7)).prune_step(model, 1)
    masks = {n: m.weight_mask.clone() for n, m in weight_layers(model)}
    originals = {n: m.weight_orig.detach().clone() for n, m in weight_layers(model)}
    data = Split(torch.randn(64, *MNIST), torch.randint(0, 10, (64,)))
    # Adam is the shared loop's fused Adam; SGD with momentum and weight decay, both of which
    # would push a zero weight away from zero if the mask were not applied in every forward.
    settings = TrainingSettings(epochs=2, batch_size=16, learning_rate=0.05, optimizer=optimizer,
                                momentum=0.9, weight_decay=0.01, lr_schedule="constant",
                                progress=False)
    context = PruneContext(train=data, test=data, settings=settings, print_fn=lambda *_: None)
    context.retrain(model)
    for name, m in weight_layers(model):
        assert not torch.equal(m.weight_orig, originals[name])  # training did move the weights
        model(data.images[:1])  # the forward pre-hook recomputes weight from orig x mask
        assert torch.all(m.weight[masks[name] == 0] == 0)
        assert torch.equal(m.weight, m.weight_orig * masks[name])
        prune.remove(m, "weight")
        assert torch.all(m.weight[masks[name] == 0] == 0)


def test_dropout_rule_and_its_use_on_lenet_5():
    assert adjusted_dropout(0.5, 100, 25) == pytest.approx(0.25)
    assert adjusted_dropout(0.5, 100, 100) == 0.5
    assert adjusted_dropout(0.4, 1000, 90) == pytest.approx(0.4 * math.sqrt(0.09))
    torch.manual_seed(0)
    model = models.create_model("lenet_5", MNIST, 10)
    pruner = SongHanPruner.from_args(_args(cut_rate=0.8, prune_scope="layer"))
    pruner.prune(model, _NoRetrain())
    for layer, dropout in model.dropout_before.items():
        module = model.get_submodule(layer)
        kept = int(torch.count_nonzero(module.weight))
        expected = 0.5 * math.sqrt(kept / module.weight.numel())
        assert model.get_submodule(dropout).p == pytest.approx(expected)
        assert pruner.metadata()["dropout"][dropout] == pytest.approx(expected)
    plain = models.create_model("lenet_5", MNIST, 10)
    SongHanPruner.from_args(_args(cut_rate=0.8, adjust_dropout=False)).prune(plain, _NoRetrain())
    assert plain.drop1.p == 0.5 and plain.drop2.p == 0.5


def test_bad_flags_are_user_errors_at_construction():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="quality must be a positive number"):
            SongHanPruner.from_args(_args(quality=bad))
    with pytest.raises(UserError, match=r"^cut_rate must be in \[0, 1\)"):
        SongHanPruner.from_args(_args(cut_rate=1.0))
    assert isinstance(create_pruner("songhan", _args()), SongHanPruner)


def _pruned_lenet(density: float, widths=(300, 100)) -> nn.Module:
    torch.manual_seed(0)
    model = models.create_model("lenet_300_100", MNIST, 10, widths=list(widths))
    SongHanPruner.from_args(_args(cut_rate=1 - density, prune_scope="layer")).prune(model, _NoRetrain())
    return make_permanent(model).eval()


@pytest.mark.parametrize("batch", [1, 3, AUTO_MIN_BATCH, 64])
def test_sparse_inference_equals_dense(batch):
    model = _pruned_lenet(0.08)
    x = torch.randn(batch, *MNIST)
    with torch.inference_mode():
        dense = model(x)
        for mode in ("on", "auto"):
            fast = sparsify_linear_layers(model, mode).eval()
            torch.testing.assert_close(fast(x), dense, atol=1e-5, rtol=1e-5)
    layer = SparseLinear(model.fc2)
    y = torch.randn(2, 5, 300)  # any leading dimensions, like nn.Linear
    with torch.inference_mode():
        torch.testing.assert_close(layer(y), model.fc2(y), atol=1e-5, rtol=1e-5)


def test_sparse_inference_modes_pick_layers_by_density():
    sparse = _pruned_lenet(0.05)
    assert sparse_layers(sparsify_linear_layers(sparse, "on")) == ("fc1", "fc2", "fc3")
    # auto: only layers sparse and big enough (fc1, 235,200 weights; not fc2's 30,000)
    assert sparse.fc2.weight.numel() < AUTO_MIN_WEIGHTS <= sparse.fc1.weight.numel()
    assert sparse_layers(sparsify_linear_layers(sparse, "auto")) == ("fc1",)
    assert sparsify_linear_layers(sparse, "off") is sparse
    assert sparse_layers(sparse) == ()  # the original model is never modified
    half = _pruned_lenet(0.5)
    assert 0.5 > AUTO_MAX_DENSITY and sparse_layers(sparsify_linear_layers(half, "auto")) == ()
    assert sparse_layers(sparsify_linear_layers(half, "on")) == ("fc1", "fc2", "fc3")
    dense = models.create_model("lenet_300_100", MNIST, 10)
    assert sparsify_linear_layers(dense, "on") is dense  # nothing pruned, nothing to swap


def test_sparse_checkpoint_round_trip_is_exact_and_small(tmp_path):
    model = _pruned_lenet(1 / 12)
    dense_path = checkpoints.save_checkpoint(
        checkpoints.make_checkpoint(model, "mnist", {}, {}), tmp_path / "dense.pt")
    sparse_path = checkpoints.save_checkpoint(
        checkpoints.make_checkpoint(model, "mnist", {}, {}, sparse=True, pruning={"method": "songhan"}),
        tmp_path / "sparse.pt")
    torch.load(sparse_path, weights_only=True)  # plain types only
    loaded = checkpoints.load_checkpoint(str(sparse_path))
    assert loaded["pruning"] == {"method": "songhan"}
    state = model.state_dict()
    assert loaded["state_dict"].keys() == state.keys()
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in state.items())
    assert sparse_path.stat().st_size * 6 <= dense_path.stat().st_size


# ---------------------------------------------------------------- pruning.py end to end

def _listing(folder):
    """Checkpoints and anything else, but each run's metrics file (.metrics.jsonl)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".metrics.jsonl"))


def test_pruning_script_end_to_end(trained_checkpoint):
    path, ckpt_dir, data_dir = trained_checkpoint("lenet_300_100")
    before = _listing(ckpt_dir)
    code, result = run_script(pruning.main, [
        f"--load_folder_model={path.name}", "--pruning_method=songhan", "--cut_rate=0.75",
        "--pruning_epochs=2", "--epochs=1", "--batch_size=64", f"--data_dir={data_dir}",
        f"--checkpoint_dir={ckpt_dir}", "--no_download", "--no_verify_data", "--inference_sampling=2",
        "--inference_batch_size=32", "--sparse_inference=on", "--no_progress"])
    assert code == 0
    assert len(_listing(ckpt_dir)) == len(before) + 1
    saved = checkpoints.load_checkpoint(result["path"])
    assert saved["pruning"]["method"] == "songhan" and saved["pruning"]["pruning_rounds"] == 2
    assert saved["parent"] == path.name
    model = checkpoints.build_model(saved)
    weights = sum(m.weight.numel() for _, m in weight_layers(model))
    zeros = sum(int((m.weight == 0).sum()) for _, m in weight_layers(model))
    assert zeros == round(0.75 * weights)
    assert result["after"]["nonzero"] == result["before"]["parameters"] - zeros
    assert result["after"]["nonzero_flops"] < result["before"]["nonzero_flops"]
    assert result["sizes"]["after"] < result["sizes"]["before"] / 2


def test_pruning_script_prunes_a_conv_net_with_dropout(trained_checkpoint):
    path, ckpt_dir, data_dir = trained_checkpoint("lenet_5")
    code, result = run_script(pruning.main, [
        f"--load_folder_model={path}", "--pruning_method=songhan", "--cut_rate=0.5",
        "--prune_scope=layer", "--epochs=1", "--batch_size=128", f"--data_dir={data_dir}",
        f"--checkpoint_dir={ckpt_dir}", "--no_download", "--no_verify_data", "--inference_sampling=2",
        "--inference_batch_size=8", "--no_progress"])
    assert code == 0
    saved = checkpoints.load_checkpoint(result["path"])
    layers = saved["pruning"]["layers"]
    assert set(layers) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert all(abs(v["sparsity"] - 0.5) < 0.01 for v in layers.values())
    assert set(saved["pruning"]["dropout"]) == {"drop1", "drop2"}


@pytest.mark.parametrize("flags, message", [
    (["--quality=0"], "--quality: must be a finite number in (0, inf)"),
    (["--quality=-2"], "--quality: must be a finite number in (0, inf)"),
    (["--quality=nan"], "--quality: must be a finite number in (0, inf)"),
    (["--quality=1", "--cut_rate=0.9"], "give either --cut_rate"),
    (["--cut_rate=1"], "--cut_rate: must be a finite number in [0, 1)"),
    (["--cut_rate=-0.1"], "--cut_rate: must be a finite number in [0, 1)"),
    (["--fpgm_mode=fixed"], "--prune_mode do not apply to --pruning_method=songhan"),
    (["--fpgm_distance=l1"], "--fpgm_distance do not apply to --pruning_method=songhan"),
    (["--finetune_epochs=2"], "--finetune_epochs do not apply"),
    (["--model=lenet_5"], "holds lenet_300_100, but --model asks for lenet_5"),
    (["--load_folder_model=no_such_checkpoint"], "no checkpoint 'no_such_checkpoint'"),
    (["--load_folder_model="], "--load_folder_model is required"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(trained_checkpoint, capsys, flags, message):
    path, ckpt_dir, data_dir = trained_checkpoint("lenet_300_100")
    before = _listing(ckpt_dir)
    argv = [f"--load_folder_model={path.name}", "--pruning_method=songhan", "--epochs=1",
            f"--data_dir={data_dir}", f"--checkpoint_dir={ckpt_dir}", "--no_download",
            "--no_verify_data", "--no_progress"] + flags
    code, _ = run_script(pruning.main, argv)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert _listing(ckpt_dir) == before


def test_the_mask_helpers_read_what_torch_prune_holds():
    """utils.masks is the one reader of torch.nn.utils.prune's <t>_orig / <t>_mask naming."""
    import torch.nn as nn
    import torch.nn.utils.prune as torch_prune
    from utils.masks import mask_of, masked_value, trained_tensor
    layer = nn.Linear(3, 2)
    assert mask_of(layer) is None and trained_tensor(layer) is layer.weight
    keep = torch.tensor([[1., 0, 1], [0, 1, 1]])
    torch_prune.custom_from_mask(layer, "weight", keep)
    assert torch.equal(mask_of(layer), keep) and trained_tensor(layer) is layer.weight_orig
    assert mask_of(layer, "bias") is None
    parameters = dict(layer.named_parameters())
    assert torch.equal(masked_value(layer, "weight_orig", parameters["weight_orig"]),
                       layer.weight_orig * keep)
    assert masked_value(layer, "bias", parameters["bias"]) is parameters["bias"]
