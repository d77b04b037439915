"""calFLOP.py and utils/reporting/counting.py: the reference tables exactly, FLOPs equal to torch's
FlopCounterMode, Han et al.'s Weights%/Act%/FLOP% on a model whose weights and inputs the tests
choose, every output format, bad input."""
import csv
import io
import json

import pytest
import torch

import calFLOP
import models
from tests.conftest import run_script
from utils.checkpoints import load_checkpoint, build_model, make_checkpoint, save_checkpoint
from utils.reporting.counting import activation_density, count_flops, flop_fractions, layer_stats, weighted_total
from utils.reporting.tables import flop_table, render_csv, render_markdown

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def markdown_rows(text):
    """Cells of every table row (header and separator left out)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def calflop(capsys, *argv):
    code, table = run_script(calFLOP.main, list(argv))
    captured = capsys.readouterr()
    return code, table, captured.out, captured.err


# --- the reference README's tables -----------------------------------------------------------

REFERENCE = {
    "lenet_300_100": [["fc1", "235,500", "470,400"], ["fc2", "30,100", "60,000"],
                      ["fc3", "1,010", "2,000"], ["Total", "266,610", "532,400"]],
    "lenet_5": [["conv1", "60", "73,008"], ["conv2", "330", "78,408"], ["fc1", "27,776", "55,296"],
                ["fc2", "1,290", "2,560"], ["Total", "29,456", "209,272"]],
}


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_reference_tables_exactly(capsys, model):
    code, table, out, _ = calflop(capsys, f"--model={model}", "--dataset=mnist")
    assert code == 0
    rows = markdown_rows(out)
    assert [row[:3] for row in rows] == REFERENCE[model]
    # a fresh model has every weight nonzero; MACs are half the FLOPs
    assert [row[3] for row in rows] == [row[1] for row in REFERENCE[model]]
    assert all(2 * layer["macs"] == layer["flops"] for layer in table["layers"] + [table["total"]])
    assert "FLOP = 2 x multiply-accumulate" in out.split("| Total")[1]


# --- FLOPs equal torch's own counter ---------------------------------------------------------

# The 224x224 layouts at their real widths are tens of millions of weights; the counting does
# not depend on width.
def small_widths(name):
    defaults = models.model_class(name).widths_for()
    return [max(2, w // 8) for w in defaults] if name in ("alexnet_imagenet", "resnet18",
                                                         "resnet50") else None


@pytest.mark.parametrize("name", models.model_names())
@pytest.mark.parametrize("input_shape", [MNIST, CIFAR], ids=["mnist", "cifar10"])
def test_flops_equal_flop_counter_mode(name, input_shape):
    torch.manual_seed(0)
    model = models.create_model(name, input_shape, 10, small_widths(name))
    table = flop_table(model, input_shape)
    assert table["total"]["flops"] == count_flops(model, input_shape) > 0
    # the rows are conv and linear layers; BatchNorm's scale and shift are counted beside them
    batchnorm = sum(p.numel() for m in model.modules()
                    if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for p in m.parameters())
    assert table["batchnorm_parameters"] == batchnorm
    assert table["total"]["weights"] + batchnorm == sum(p.numel() for p in model.parameters())
    # the whole count is printed, so no reader has to add the two
    assert table["parameters"] == sum(p.numel() for p in model.parameters())
    if batchnorm:
        assert (f"Parameters: {table['parameters']:,} in all, the rows' {table['total']['weights']:,} "
                f"weights and biases plus BatchNorm's {batchnorm:,}") in render_markdown(table)


@pytest.mark.parametrize("name", models.model_names())
def test_compact_widths_equal_flop_counter_mode(name):
    """A compact (FPGM) model is the same class with smaller widths: counted the same way."""
    default = small_widths(name) or models.model_class(name).widths_for()
    widths = [max(1, w // 2 - 1) for w in default]
    model = models.create_model(name, MNIST, 10, widths)
    assert flop_table(model, MNIST)["total"]["flops"] == count_flops(model, MNIST)


# --- Han et al.'s rule and columns -----------------------------------------------------------

# (Weights%, Act%, FLOP%) per layer and the total FLOP% of Han et al. 2015, Tables 2 and 3.
HAN_TABLES = {
    "lenet_300_100": ([8, 9, 26], [38, 65, 100], [8, 4, 17], 8),
    "lenet_5_caffe": ([66, 12, 8, 19], [88, 72, 55, 100], [66, 10, 6, 10], 16),
}


@pytest.mark.parametrize("name", sorted(HAN_TABLES))
def test_the_rule_reproduces_han_tables(name):
    weights, act, flop, total = HAN_TABLES[name]
    # in a chain a layer reads the previous layer's output: its input density is that Act%
    fractions = flop_fractions([w / 100 for w in weights], [1.0] + [a / 100 for a in act[:-1]])
    # the paper's inputs are rounded to whole percents, so its outputs are matched within a point
    assert [100 * f for f in fractions] == pytest.approx(flop, abs=1)
    dense = [s.flops for s in layer_stats(models.create_model(name, MNIST, 10), MNIST)]
    assert 100 * weighted_total(fractions, dense) == pytest.approx(total, abs=1)


def tiny_mlp():
    """lenet_300_100 on 2x2 images: fc1 4->3, fc2 3->2, fc3 2->2, weights chosen by hand."""
    model = models.create_model("lenet_300_100", (1, 2, 2), 2, (3, 2))
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1., 0, 0, 0], [-1, 0, 0, 0], [1, 1, 1, 1]]))
        model.fc1.bias.zero_()
        model.fc2.weight.copy_(torch.tensor([[1., 0, 0], [0, 0, -1]]))
        model.fc2.bias.zero_()
        model.fc3.weight.copy_(torch.tensor([[1., 1], [0, 1]]))
        model.fc3.bias.copy_(torch.tensor([0.5, 0]))
    return model


def test_weights_act_and_flop_percent_on_a_hand_built_model():
    model = tiny_mlp()
    images = torch.stack([torch.ones(1, 2, 2), -torch.ones(1, 2, 2)])
    # image +1: fc1 -> relu [1, 0, 4], fc2 -> relu [1, 0], logits [1.5, 0]
    # image -1: fc1 -> relu [0, 1, 0], fc2 -> relu [0, 0], logits [0.5, 0]
    assert activation_density(model, images) == {"fc1": 3 / 6, "fc2": 1 / 4, "fc3": 2 / 4}

    table = flop_table(model, (1, 2, 2), images=images)
    rows = {row["layer"]: row for row in table["layers"]}
    # Weights% counts biases as the Weights column does: (6+0)/15, (2+0)/8, (3+1)/6
    assert [rows[n]["weights_density"] for n in ("fc1", "fc2", "fc3")] == \
        pytest.approx([6 / 15, 2 / 8, 4 / 6])
    # FLOP% = weight-tensor density x previous Act%, image dense: 6/12 x 1, 2/6 x 1/2, 3/4 x 1/4
    assert [rows[n]["flop_density"] for n in ("fc1", "fc2", "fc3")] == \
        pytest.approx([1 / 2, 1 / 6, 3 / 16])
    total = table["total"]
    assert total["weights_density"] == pytest.approx(12 / 29)
    # weighted by dense FLOPs 24, 12, 8
    assert total["flop_density"] == pytest.approx((12 + 2 + 1.5) / 44)
    assert total["act_density"] is None
    text = render_markdown(table)
    assert markdown_rows(text)[-1][5:8] == ["41.4% (2.4x)", "", "35.2%"]
    assert "over 2 test images" in text


def test_act_percent_is_read_after_relu_and_pooling():
    """lenet_5's conv1 feeds conv2 through ReLU and max-pooling: a conv1 whose outputs are all
    negative leaves conv2 nothing to multiply."""
    model = models.create_model("lenet_5", MNIST, 10)
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.bias.fill_(-1.0)
    table = flop_table(model, MNIST, images=torch.randn(4, *MNIST), chain=True)
    rows = {row["layer"]: row for row in table["layers"]}
    assert rows["conv1"]["act_density"] == 0.0
    assert rows["conv1"]["flop_density"] == 0.0  # its own weights are all zero
    assert rows["conv2"]["flop_density"] == 0.0  # its input is all zero
    assert rows["conv1"]["weights_density"] == pytest.approx(6 / 60)  # only the biases
    assert rows["fc2"]["act_density"] == 1.0     # logits: the biases are nonzero


# --- checkpoints through calFLOP.py: sparse, compact, formats, errors ------------------------

@pytest.fixture(scope="module")
def sparse_checkpoint(trained_checkpoint, tmp_path_factory):
    """The trained lenet_300_100 with three quarters of fc1's weights zeroed."""
    path, _, data_dir = trained_checkpoint("lenet_300_100")
    loaded = load_checkpoint(str(path))
    model = build_model(loaded)
    with torch.no_grad():
        weight = model.fc1.weight
        weight.mul_((weight.abs() >= weight.abs().flatten().quantile(0.75)).float())
    out = tmp_path_factory.mktemp("sparse") / "lenet_300_100_songhan_mnist.pt"
    save_checkpoint(make_checkpoint(model, "mnist", {}, {}, parent=path.name, sparse=True), out)
    return out, data_dir


def test_sparse_checkpoint_gets_han_columns(capsys, sparse_checkpoint):
    path, data_dir = sparse_checkpoint
    code, table, out, _ = calflop(capsys, f"--load_folder_model={path}", f"--data_dir={data_dir}", "--no_verify_data",
                                  "--act_images=100")
    assert code == 0
    rows = {row["layer"]: row for row in table["layers"]}
    assert rows["fc1"]["flop_density"] == pytest.approx(0.25, abs=1e-3)  # input image dense
    assert rows["fc2"]["flop_density"] == pytest.approx(rows["fc1"]["act_density"])  # fc2 dense
    assert 0 < rows["fc1"]["act_density"] < 1  # ReLU zeroes some of fc1's outputs
    assert table["activation_images"] == 100
    header = out.splitlines()[2]
    assert "Weights%" in header and "Act%" in header and "FLOP%" in header


def test_dense_checkpoint_has_no_han_columns(capsys, trained_checkpoint):
    path, _, data_dir = trained_checkpoint("lenet_300_100")
    code, table, out, _ = calflop(capsys, f"--load_folder_model={path}", f"--data_dir={data_dir}", "--no_verify_data")
    assert code == 0 and "weights_density" not in table["total"] and "Act%" not in out


def test_compact_checkpoint_reports_reduction_against_original_widths(capsys, tmp_path):
    model = models.create_model("lenet_300_100", MNIST, 10, (150, 50))
    path = save_checkpoint(make_checkpoint(model, "mnist", {}, {}), tmp_path / "compact.pt")
    code, table, out, _ = calflop(capsys, f"--load_folder_model={path}", "--format=json")
    assert code == 0
    assert table["widths"] == [150, 50] and table["original_widths"] == [300, 100]
    assert table["total"]["flops"] == 2 * (784 * 150 + 150 * 50 + 50 * 10)
    assert table["total"]["original_flops"] == 532_400
    assert table["total"]["original_weights"] == 266_610
    code, _, out, _ = calflop(capsys, f"--load_folder_model={path}")
    assert "against the original [300, 100]" in out
    assert markdown_rows(out)[-1][-1] == f"{table['total']['flops'] / 532_400 - 1:+.1%}"


def test_widths_flag_builds_a_compact_model(capsys):
    code, table, _, _ = calflop(capsys, "--model=lenet_5_caffe", "--widths", "12", "30", "300")
    assert code == 0 and table["total"]["original_flops"] == 4_586_000


def test_every_format_parses(capsys, sparse_checkpoint):
    path, data_dir = sparse_checkpoint
    common = [f"--load_folder_model={path}", f"--data_dir={data_dir}", "--no_verify_data", "--act_images=50"]
    _, table, out, _ = calflop(capsys, *common, "--format=json")
    parsed = json.loads(out)
    assert parsed["total"]["flops"] == 532_400 and len(parsed["layers"]) == 3

    _, _, out, _ = calflop(capsys, *common, "--format=csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["layer"] for row in rows] == ["fc1", "fc2", "fc3", "Total"]
    assert [int(row["nonzero"]) for row in rows] == \
        [layer["nonzero"] for layer in parsed["layers"]] + [parsed["total"]["nonzero"]]
    assert float(rows[0]["flop_density"]) == pytest.approx(parsed["layers"][0]["flop_density"])
    assert rows[-1]["act_density"] == ""

    _, _, out, _ = calflop(capsys, *common, "--format=markdown")
    cells = markdown_rows(out)
    assert [row[0] for row in cells] == ["fc1", "fc2", "fc3", "Total"]
    assert len({len(row) for row in cells}) == 1


def test_render_csv_of_a_fresh_model_round_trips():
    table = flop_table(models.create_model("lenet_5", MNIST, 10), MNIST)
    rows = list(csv.DictReader(io.StringIO(render_csv(table))))
    assert [int(r["flops"]) for r in rows] == [73_008, 78_408, 55_296, 2_560, 209_272]


@pytest.mark.parametrize("argv, message", [
    (["--load_folder_model=no_such_checkpoint"], "no checkpoint 'no_such_checkpoint'"),
    ([], "give --model"),
    (["--model=lenet_5", "--dataset=mnist", "--load_folder_model={ckpt}"],
     "holds lenet_300_100, but --model asks for lenet_5"),
    (["--dataset=cifar10", "--load_folder_model={ckpt}"], "--dataset asks for cifar10"),
    (["--load_folder_model={ckpt}", "--widths", "3", "3"], "--widths is for a model built"),
    (["--model=lenet_5", "--widths", "3"], "needs 3 positive widths"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, trained_checkpoint, argv, message):
    path, ckpt_dir, _ = trained_checkpoint("lenet_300_100")
    argv = [a.format(ckpt=path) for a in argv] + [f"--checkpoint_dir={ckpt_dir}"]
    code, _, out, err = calflop(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_unknown_model_name_exits_2(capsys):
    code, _, out, err = calflop(capsys, "--model=resnet_9000")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "unknown model 'resnet_9000'; choose one of: alexnet," in err and "torchvision.<name>" in err
    code, _, _, err = calflop(capsys, "--model=lenet_5", "--format=xml")
    assert code == 2 and err.count("\n") == 1 and "--format" in err


@pytest.mark.parametrize("builder", ["convnext_tiny", "mobilenet_v3_small", "regnet_y_400mf"])
def test_rows_of_torchvision_models_equal_flop_counter_mode(builder):
    """A Linear on channels-last feature maps (ConvNeXt's blocks) multiplies every pixel: its
    row counts each weight once per position, as the convs' rows do."""
    import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, builder)(num_classes=10).eval()
    shape = (3, 64, 64)
    assert sum(s.flops for s in layer_stats(model, shape)) == count_flops(model, shape)
