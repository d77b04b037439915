"""L1-norm and SFP beside FPGM on the one structured pruner, and per-layer rates for every
method: exact selections against brute force, schedules, and one-line errors."""
import json

import pytest
import torch

import models
import pruning
from pruners import create_pruner, pruner_class
from pruners.base import parse_layer_rates
from pruners.criteria import SmallestNorm
from pruners.criteria.fpgm import pruned_count
from pruners.structured import StructuredPruner
from tests.conftest import run_script
from utils.masks import current_masks


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.9])
def test_smallest_norm_filters_match_brute_force(p, rate):
    torch.manual_seed(p)
    weight = torch.randn(37, 5, 3, 3)
    chosen = SmallestNorm(p).select_rows(weight, pruned_count(37, rate)).tolist()
    norms = [float(weight[i].abs().pow(p).sum() ** (1 / p)) for i in range(37)]
    expected = sorted(sorted(range(37), key=lambda i: norms[i])[:pruned_count(37, rate)])
    assert chosen == expected


@pytest.mark.parametrize("shape", [(64, 3, 7, 7), (512, 512, 3, 3), (1000, 2048), (5, 1)])
def test_l1_scores_are_the_float64_norms_of_the_float32_rows(shape):
    """The L1 scores are summed in float64 without a float64 copy, and are exactly the norms of
    the rows converted first: selections (and the records' results) do not move."""
    from pruners.criteria.base import GroupView
    torch.manual_seed(0)
    rows = torch.randn(shape) * torch.logspace(-4, 2, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    view = GroupView("g", [[i] for i in range(shape[0])], lambda: rows)
    assert torch.equal(SmallestNorm(1).scores(view), rows.flatten(1).double().norm(p=1, dim=1))


def test_the_methods_default_to_their_papers_schedules():
    assert create_pruner("fpgm").mode == "soft"
    assert create_pruner("l1norm").mode == "fixed"
    assert create_pruner("sfp").mode == "soft"
    assert create_pruner("l1norm", mode="soft").mode == "soft"
    for name in ("fpgm", "l1norm", "sfp"):
        assert issubclass(pruner_class(name), StructuredPruner)


def test_sfp_lets_a_zeroed_filter_regrow_and_leave_the_selection():
    model = models.create_model("lenet_300_100", (1, 1, 2), 3, widths=[5, 3])
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[3.0, 0], [0.1, 0], [2, 2], [0, -4], [1, 1]]))
    pruner = create_pruner("sfp", cut_rate=0.2)  # one of fc1's five, none of fc2's three
    groups = pruner.prunable_groups(model)
    pruner.soft_step(model, groups, epoch=1)
    assert pruner.selection["fc1"].tolist() == [1] and model.fc1.weight[1].abs().sum() == 0
    with torch.no_grad():  # training moves the zeroed filter far out
        model.fc1.weight[1] = torch.tensor([9.0, 9.0])
    entry = pruner.soft_step(model, groups, epoch=2)
    assert entry == {"epoch": 2, "zeroed": 1, "regrown": 1, "left": 1}
    assert pruner.selection["fc1"].tolist() == [4]
    assert model.fc1.weight[1].tolist() == [9.0, 9.0]


# ---- per-layer rates --------------------------------------------------------------------------

def test_layer_rates_parse_from_pairs_and_files(tmp_path):
    assert parse_layer_rates("conv1=0.34, fc1=0.92") == {"conv1": 0.34, "fc1": 0.92}
    path = tmp_path / "rates.json"
    path.write_text(json.dumps({"conv2": 0.88}))
    assert parse_layer_rates(str(path)) == {"conv2": 0.88}
    for bad, message in (("conv1", "expected NAME=RATE"), ("conv1=1.0", "must be in [0, 1)"),
                         ("conv1=x", "is not a number"), ("conv1=nan", "must be in [0, 1)"),
                         (str(tmp_path / "missing.json"), "cannot read")):
        with pytest.raises(Exception, match=message.replace("[", r"\[").replace(")", r"\)")):
            parse_layer_rates(bad)


@pytest.mark.parametrize("method", ["fpgm", "l1norm", "sfp"])
def test_filter_methods_apply_each_layer_rate_exactly(method):
    torch.manual_seed(0)
    model = models.create_model("lenet_5_caffe", (1, 28, 28), 10)
    pruner = create_pruner(method, cut_rate=0.4, layer_rates={"conv1": 0.25, "fc1": 0.9})
    groups = pruner.prunable_groups(model)
    selection = pruner.channel_pruner(model).select()
    assert {k: len(v) for k, v in selection.items()} == {"conv1": 5, "conv2": 20, "fc1": 450}


def test_songhan_applies_han_s_per_layer_targets_exactly():
    from pruners.songhan import SongHanPruner
    torch.manual_seed(0)
    model = models.create_model("lenet_5_caffe", (1, 28, 28), 10)
    # Han et al. Table 3: conv1 kept 66%, conv2 12%, fc1 8%; fc2 at --cut_rate (0.81)
    pruner = SongHanPruner(cut_rate=0.81, layer_rates={"conv1": 0.34, "conv2": 0.88, "fc1": 0.92})
    pruner.check_model(model)
    pruner.prune_step(model, 1)
    masks = current_masks(model)
    pruned = {k.split(".")[0]: int((~m).sum()) for k, m in masks.items()}
    sizes = {k.split(".")[0]: m.numel() for k, m in masks.items()}
    assert pruned == {"conv1": round(0.34 * sizes["conv1"]), "conv2": round(0.88 * sizes["conv2"]),
                      "fc1": round(0.92 * sizes["fc1"]), "fc2": round(0.81 * sizes["fc2"])}


@pytest.mark.parametrize("method,flags,message", [
    ("fpgm", ["--layer_rates=conv9=0.5"], "layer_rates names no layer or group of LeNet5Caffe: conv9"),
    ("songhan", ["--layer_rates=conv9=0.5"], "--layer_rates names no layer of LeNet5Caffe: conv9"),
    ("sfp", ["--layer_rates=conv1=1.5"], "the rate of conv1 must be in [0, 1)"),
    ("songhan", ["--layer_rates=fc1=0.9", "--quality=1"], "give either --layer_rates"),
    ("l1norm", ["--fpgm_distance=l1"], "--fpgm_distance do not apply to --pruning_method=l1norm"),
])
def test_bad_rates_and_foreign_flags_are_one_line(trained_checkpoint, capsys, method, flags, message):
    path, ckpt_dir, data_dir = trained_checkpoint("lenet_5_caffe")
    before = sorted(ckpt_dir.iterdir())
    code, _ = run_script(pruning.main, [f"--load_folder_model={path}", f"--pruning_method={method}",
                                        f"--data_dir={data_dir}", f"--checkpoint_dir={ckpt_dir}",
                                        "--no_download", "--no_verify_data", "--epochs=1", *flags])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted(ckpt_dir.iterdir()) == before


@pytest.mark.parametrize("method", ["l1norm", "sfp"])
def test_norm_methods_end_to_end(trained_checkpoint, tmp_path, method):
    from utils import checkpoints
    path, _, data_dir = trained_checkpoint("lenet_5_caffe")
    code, result = run_script(pruning.main, [
        f"--load_folder_model={path}", f"--pruning_method={method}", "--cut_rate=0.4",
        f"--data_dir={data_dir}", f"--checkpoint_dir={tmp_path}", "--no_download",
        "--no_verify_data", "--epochs=1", "--batch_size=64", "--no_progress",
        "--inference_sampling=2", "--inference_batch_size=8"])
    assert code == 0
    saved = checkpoints.load_checkpoint(result["path"])
    assert saved["config"]["widths"] == [12, 30, 300]
    assert saved["pruning"]["method"] == method and saved["pruning"]["compact_max_difference"] < 1e-5
    assert saved["pruning"]["mode"] == {"l1norm": "fixed", "sfp": "soft"}[method]
    assert saved["pruning"]["criterion"] == {"l1norm": "smallest L1 norm", "sfp": "smallest L2 norm"}[method]


# ---- sensitivity analysis -------------------------------------------------------------------

def test_sensitivity_rows_are_what_pruning_each_layer_alone_gives(trained_checkpoint, tmp_path):
    import csv
    import sensitivity
    from pruners.songhan import SongHanPruner
    from utils import checkpoints
    from utils.data import load_dataset, split_validation
    from utils.masks import make_permanent
    from utils.training import evaluate
    path, _, data_dir = trained_checkpoint("lenet_5")
    output = tmp_path / "sens.csv"
    code, result = run_script(sensitivity.main, [
        f"--load_folder_model={path}", f"--data_dir={data_dir}", "--no_download", "--no_verify_data",
        "--val_split=0.25", "--rates=0,0.5,0.9", f"--output={output}", "--no_progress",
        "--max_drop=0.05"])
    assert code == 0
    rows = list(csv.DictReader(output.open()))
    assert [(r["layer"], float(r["rate"])) for r in rows] == \
        [(layer, rate) for layer in ("conv1", "conv2", "fc1", "fc2") for rate in (0, 0.5, 0.9)]
    # one point recomputed by hand: fc1 alone at 50% by magnitude, on the same validation images
    train, _, _ = load_dataset("mnist", data_dir, download=False, verify=False)
    _, val = split_validation(train, 0.25, 0)
    model = checkpoints.build_model(checkpoints.load_checkpoint(str(path)))
    pruner = SongHanPruner(cut_rate=0.0, layer_rates={"fc1": 0.5}, adjust_dropout=False)
    pruner.check_model(model)
    pruner.prune_step(model, 1)
    expected = evaluate(make_permanent(model), val)
    row = next(r for r in rows if r["layer"] == "fc1" and float(r["rate"]) == 0.5)
    assert float(row["top1"]) == pytest.approx(expected["acc"])
    assert float(row["loss"]) == pytest.approx(expected["loss"], rel=1e-5)
    assert result["rates"] == json.loads(output.with_suffix(".json").read_text())
    assert set(result["rates"]) == {"conv1", "conv2", "fc1", "fc2"}


def test_sensitivity_never_reads_the_test_split_and_needs_a_validation_split(trained_checkpoint, capsys):
    import sensitivity
    path, _, data_dir = trained_checkpoint("lenet_5")
    code, _ = run_script(sensitivity.main, [f"--load_folder_model={path}", f"--data_dir={data_dir}",
                                            "--no_download", "--no_verify_data"])
    assert code == 2 and "recorded no validation split" in capsys.readouterr().err


def test_filter_sensitivity_and_a_proposal_for_a_target_compression(trained_checkpoint, tmp_path):
    import sensitivity
    from pruners.sensitivity import propose
    path, _, data_dir = trained_checkpoint("lenet_5_caffe")
    code, result = run_script(sensitivity.main, [
        f"--load_folder_model={path}", f"--data_dir={data_dir}", "--no_download", "--no_verify_data",
        "--val_split=0.2", "--method=l1norm", "--rates=0:0.8:0.4", f"--output={tmp_path / 's.csv'}",
        "--no_progress"])
    assert code == 0
    assert {r["layer"] for r in result["rows"]} == {"conv1", "conv2", "fc1"}
    rates, how = propose(result["rows"], target_compression=1.5)
    assert how["compression"] >= 1.5
    drops = [(r["layer"], r["rate"]) for r in result["rows"]]
    assert all((layer, rate) in drops for layer, rate in rates.items())
