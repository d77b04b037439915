"""benchmarks/reproduce.py and the modules behind it: the README's results section rendered from
a fixed set of records, the marker replacement, the records file, the permissions of what it
writes, and a quick run end to end on synthetic MNIST."""
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

import models
from benchmarks import reproduce
from benchmarks.experiments import BY_ID, EXPERIMENTS, select
from benchmarks.records import append_record, latest, load_records
from benchmarks.results_plots import plot_weight_histogram
from benchmarks.results_report import PLOT_FILES, render_report, replace_between_markers
from tests.conftest import ROOT, run_script
from utils.errors import UserError
from utils.reporting.tables import flop_table, render_markdown

NA = "n/a"
MACHINE = {"cpu": "AMD EPYC", "cores": 2, "torch_threads": 2, "platform": "Linux", "python": "3.12"}


def fresh_table(name):
    return flop_table(models.create_model(name, (1, 28, 28), 10), (1, 28, 28))


def sparse_table():
    """A layer table as a songhan record holds it (Han's columns), written out by hand."""
    layers = [
        {"layer": "fc1", "weights": 235_500, "flops": 470_400, "nonzero": 14_081, "macs": 235_200,
         "nonzero_flops": 28_162, "weights_density": 0.06, "act_density": 0.62, "flop_density": 0.059},
        {"layer": "fc2", "weights": 30_100, "flops": 60_000, "nonzero": 7_047, "macs": 30_000,
         "nonzero_flops": 14_094, "weights_density": 0.234, "act_density": 0.75, "flop_density": 0.143},
        {"layer": "fc3", "weights": 1_010, "flops": 2_000, "nonzero": 578, "macs": 1_000,
         "nonzero_flops": 1_136, "weights_density": 0.572, "act_density": 1.0, "flop_density": 0.425},
    ]
    total = {"layer": "Total", "weights": 266_610, "flops": 532_400, "nonzero": 21_706,
             "macs": 266_200, "nonzero_flops": 43_392, "weights_density": 21_706 / 266_610,
             "act_density": None, "flop_density": 0.07}
    return {"model": "lenet_300_100", "input_shape": [1, 28, 28], "widths": [300, 100],
            "original_widths": None, "activation_images": 1000,
            "flop_convention": "FLOP = 2 x MACs", "layers": layers, "total": total}


def record(experiment, **fields):
    base = {"experiment": experiment, "quick": False, "dataset": "mnist", "method": None,
            "machine": MACHINE, "torch_version": "2.14.1", "date": "2025-03-04T05:06:07+00:00",
            "command": f"python something.py --for={experiment}"}
    return {**base, **fields}


RECORDS = [
    # superseded by the later record of the same experiment
    record("baseline_lenet_300_100", model="lenet_300_100", flags={"epochs": 1}, top1_acc=0.5,
           parameters=266_610, nonzero=266_610, flops=532_400, nonzero_flops=532_400,
           train_seconds=1.0, inference={"median_ms": 9.0, "batch_size": 256},
           checkpoint="checkpoints/old.pt", checkpoint_bytes=1, layers=fresh_table("lenet_300_100")),
    record("baseline_lenet_300_100", model="lenet_300_100", flags={"epochs": 30}, top1_acc=0.9838,
           parameters=266_610, nonzero=266_610, flops=532_400, nonzero_flops=532_400,
           train_seconds=25.31, inference={"median_ms": 0.98, "batch_size": 256},
           checkpoint="checkpoints/lenet_300_100_mnist_acc_0.9838_epoch_30.pt",
           checkpoint_bytes=1_070_229, layers=fresh_table("lenet_300_100"),
           date="2025-03-03T01:02:03+00:00"),
    record("songhan_12x_lenet_300_100", model="lenet_300_100", method="songhan",
           flags={"epochs": 8, "pruning_epochs": 4, "cut_rate": 0.92}, top1_acc=0.9831,
           parameters=266_610, nonzero=21_706, flops=532_400, nonzero_flops=42_592,
           parent_flops=532_400, train_seconds=61.04, inference={"median_ms": 0.614, "batch_size": 256},
           speedup=1.6066, checkpoint="checkpoints/lenet_300_100_songhan_mnist_acc_0.9831_epoch_8.pt",
           checkpoint_bytes=125_833, parent_checkpoint_bytes=1_070_229, layers=sparse_table()),
    record("fpgm_40_lenet_5_caffe", model="lenet_5_caffe", method="fpgm",
           flags={"epochs": 10, "pruning_epochs": 1, "cut_rate": 0.4}, top1_acc=0.9912,
           parameters=156_652, nonzero=156_652, flops=1_791_600, nonzero_flops=1_791_600,
           parent_flops=4_586_000, train_seconds=300.5, inference={"median_ms": 77.751, "batch_size": 256},
           speedup=2.0812, checkpoint="checkpoints/lenet_5_caffe_fpgm_mnist_acc_0.9912_epoch_10.pt",
           checkpoint_bytes=632_420, parent_checkpoint_bytes=1_728_653,
           layers=flop_table(models.create_model("lenet_5_caffe", (1, 28, 28), 10, (12, 30, 300)),
                             (1, 28, 28), original=models.create_model("lenet_5_caffe", (1, 28, 28), 10))),
]


def table_cells(text, first_header):
    """Cells of the markdown table whose header starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[0], rows[2:]


# --- the report from fixed records -----------------------------------------------------------

EXPECTED_RESULTS = [
    ["LeNet-300-100 baseline", "reference", "mnist", "lenet_300_100", "none", "98.13%"] + [NA] * 7,
    ["LeNet-300-100 baseline", "Han et al. 2015", "MNIST", "LeNet-300-100", "none",
     "98.36% (1.64% error)", "267K", NA, NA, NA, NA, NA, NA],
    ["LeNet-300-100 baseline", "ours", "mnist", "lenet_300_100", "none, 30 epochs", "98.38%",
     "266,610", "25.3 s", "0.98 ms", "266,610 (100.0%)", "532,400", "1,045.1 KB", "1.00x"],
    ["LeNet-5 (reference's) baseline", "reference", "mnist", "lenet_5", "none", "98.12%"] + [NA] * 7,
    ["LeNet-5 (reference's) baseline", "ours", "mnist", "lenet_5", "not run yet"] + [NA] * 8,
    ["LeNet-5 (Caffe) baseline", "Han et al. 2015", "MNIST", "LeNet-5 (Caffe)", "none",
     "99.20% (0.80% error)", "431K", NA, NA, NA, NA, NA, NA],
    ["LeNet-5 (Caffe) baseline", "ours", "mnist", "lenet_5_caffe", "not run yet"] + [NA] * 8,
    ["LeNet-300-100 songhan 50%", "reference", "mnist", "lenet_300_100", "songhan, cut 0.5",
     "92.72%"] + [NA] * 7,
    ["LeNet-300-100 songhan 50%", "ours", "mnist", "lenet_300_100", "not run yet"] + [NA] * 8,
    ["LeNet-5 (reference's) songhan 50%", "reference", "mnist", "lenet_5", "songhan, cut 0.5",
     "76.07%"] + [NA] * 7,
    ["LeNet-5 (reference's) songhan 50%", "ours", "mnist", "lenet_5", "not run yet"] + [NA] * 8,
    ["LeNet-300-100 songhan 12x", "Han et al. 2015", "MNIST", "LeNet-300-100", "magnitude, 12x",
     "98.41% (1.59% error)", "267K", NA, NA, "22K (8%)", "8% (Table 2)", NA, NA],
    ["LeNet-300-100 songhan 12x", "ours", "mnist", "lenet_300_100",
     "songhan, cut 0.92, 4 rounds x 8 epochs", "98.31%", "266,610", "61.0 s", "0.61 ms",
     "21,706 (8.1%)", "42,592 (-92.0%)", "122.9 KB (8.5x smaller)", "1.61x"],
    ["LeNet-5 (Caffe) songhan 12x", "Han et al. 2015", "MNIST", "LeNet-5 (Caffe)", "magnitude, 12x",
     "99.23% (0.77% error)", "431K", NA, NA, "36K (8%)", "16% (Table 3)", NA, NA],
    ["LeNet-5 (Caffe) songhan 12x", "ours", "mnist", "lenet_5_caffe", "not run yet"] + [NA] * 8,
    ["LeNet-5 (Caffe) fpgm 40%", "He et al. 2019", "CIFAR-10", "ResNet-56", "FPGM", "-0.10 points",
     NA, NA, NA, NA, "-52.6%", NA, NA],
    ["LeNet-5 (Caffe) fpgm 40%", "ours", "mnist", "lenet_5_caffe", "fpgm, 40% of filters, 10 epochs",
     "99.12%", "156,652", "300.5 s", "77.75 ms", "156,652 (100.0%)", "1,791,600 (-60.9%)",
     "617.6 KB (2.7x smaller)", "2.08x"],
]


TABLE_ROWS = sum(1 for e in EXPERIMENTS if e.in_results_table)


def test_results_table_from_fixed_records():
    text = render_report(RECORDS)
    header, rows = table_cells(text, "Experiment")
    assert header == ["Experiment", "Source", "Dataset", "Model", "Prune Method", "Top1 Acc",
                      "Parameters", "training time", "inference time", "Nonzero", "FLOPs",
                      "File size", "Speed-up"]
    assert rows[:len(EXPECTED_RESULTS)] == EXPECTED_RESULTS
    later = [e for e in EXPERIMENTS if e.in_results_table][-len(rows) + len(EXPECTED_RESULTS):]
    assert rows[len(EXPECTED_RESULTS):] == [[e.title, "ours", e.dataset, e.model, "not run yet"]
                                            + ["n/a"] * 8 for e in later]
    table_lines = [line for line in text.splitlines() if line.startswith("| ")][:len(rows) + 2]
    assert len({len(line) for line in table_lines}) == 1  # padded: the source reads as a table


def test_kept_table_layer_tables_and_commands_from_fixed_records():
    text = render_report(RECORDS, plots=["results/accuracy_vs_weights_kept.png"])
    header, rows = table_cells(text, "Model")
    assert header == ["Model", "Weights kept", "Top1 Acc", "Prune Method"]
    assert rows == [["lenet_300_100", "100.0%", "98.38%", "none, 30 epochs"],
                    ["lenet_300_100", "8.1%", "98.31%", "songhan, cut 0.92, 4 rounds x 8 epochs"]]
    found = latest(RECORDS)
    for experiment in ("baseline_lenet_300_100", "songhan_12x_lenet_300_100", "fpgm_40_lenet_5_caffe"):
        assert render_markdown(found[experiment]["layers"]).rstrip() in text
    total = next(line for line in text.splitlines() if line.startswith("| Total ") and "12.3x" in line)
    assert [c.strip() for c in total.strip("|").split("|")] == \
        ["Total", "266,610", "532,400", "21,706", "266,200", "8.1% (12.3x)", "", "7.0%"]
    commands = text.split("#### Commands behind each row")[1]
    assert commands.index("--for=baseline_lenet_300_100") < commands.index("--for=fpgm_40_lenet_5_caffe")
    assert "![accuracy vs weights kept](results/accuracy_vs_weights_kept.png)" in text
    assert "AMD EPYC, 2 cores (2 torch threads), torch 2.14.1, 2025-03-03 to 2025-03-04" in text
    assert "Quick smoke run" not in text


def test_quick_records_are_flagged_and_no_records_renders_placeholders():
    quick = [dict(r, quick=True) for r in RECORDS]
    assert render_report(quick).startswith("**Quick smoke run")
    _, rows = table_cells(render_report([]), "Experiment")
    assert [r[4] for r in rows if r[1] == "ours"] == ["not run yet"] * TABLE_ROWS


# --- replacing only what lies between the markers --------------------------------------------

README = "# Title\n\nintro\n<!-- results:begin -->\nold table\n<!-- results:end -->\n\n## After\n"


def test_replace_between_markers_keeps_everything_outside():
    once = replace_between_markers(README, "new\ntable\n")
    assert once == ("# Title\n\nintro\n<!-- results:begin -->\nnew\ntable\n"
                    "<!-- results:end -->\n\n## After\n")
    assert replace_between_markers(once, "new\ntable\n") == once


@pytest.mark.parametrize("text", ["no markers", "<!-- results:end -->\n<!-- results:begin -->",
                                  README + README])
def test_bad_markers_are_a_user_error(text):
    with pytest.raises(UserError, match="results:"):
        replace_between_markers(text, "x")


@pytest.fixture
def records_file(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_report_rewrites_the_readme_between_markers(tmp_path, records_file):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    argv = ["report", f"--records={records_file}", f"--readme={readme}", f"--plots_dir={tmp_path}"]
    code, _ = run_script(reproduce.main, argv)
    assert code == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n<!-- results:begin -->\n")
    assert text.endswith("<!-- results:end -->\n\n## After\n")
    assert "old table" not in text
    assert render_report(RECORDS, source=str(records_file)).rstrip() in text
    run_script(reproduce.main, argv)
    assert readme.read_text() == text  # idempotent


def test_report_to_stdout_and_to_a_file(tmp_path, records_file, capsys):
    (tmp_path / "weight_histogram.png").write_bytes(b"png")
    common = [f"--records={records_file}", f"--plots_dir={tmp_path}"]
    code, _ = run_script(reproduce.main, ["report", *common, "--output=-"])
    out = capsys.readouterr().out
    assert code == 0 and "| LeNet-300-100 baseline" in out
    target = tmp_path / "sub" / "report.md"
    code, _ = run_script(reproduce.main, ["report", *common, f"--output={target}"])
    assert code == 0
    # plot links are relative to the file that shows them
    assert "![weight histogram](../weight_histogram.png)" in target.read_text()


def test_readme_without_markers_exits_2(tmp_path, records_file, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    code, _ = run_script(reproduce.main, ["report", f"--records={records_file}", f"--readme={readme}"])
    assert code == 2 and "<!-- results:begin -->" in capsys.readouterr().err
    assert readme.read_text() == "# no markers here\n"


@pytest.fixture
def umask_027():
    """A umask under which the usual permissions (0o640) differ from mkstemp's private 0o600."""
    previous = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(previous)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_have_the_usual_umask_permissions(tmp_path, records_file, umask_027):
    expected = 0o666 & ~umask_027
    readme = tmp_path / "README.md"
    readme.write_text(README)
    os.chmod(readme, 0o644)  # rewritten in place: the new file takes the umask's, not the old's
    common = [f"--records={records_file}", f"--plots_dir={tmp_path}"]
    assert run_script(reproduce.main, ["report", *common, f"--readme={readme}"])[0] == 0
    target = tmp_path / "sub" / "report.md"
    assert run_script(reproduce.main, ["report", *common, f"--output={target}"])[0] == 0
    records = tmp_path / "new" / "runs.jsonl"
    append_record(records, RECORDS[0])
    append_record(records, RECORDS[1])
    assert [r["experiment"] for r in load_records(records)] == ["baseline_lenet_300_100"] * 2
    for path in (readme, target, records):
        assert mode(path) == expected, path
    assert not [p.name for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind

    pytest.importorskip("matplotlib")
    assert run_script(reproduce.main, ["plots", *common])[0] == 0
    weights = torch.randn(30, 40, generator=torch.Generator().manual_seed(0))
    histogram = tmp_path / "plots" / "histogram.png"
    plot_weight_histogram(weights, weights * (weights.abs() > 1), "fc1", "title", histogram)
    for path in (tmp_path / "accuracy_vs_weights_kept.png", histogram):
        assert path.read_bytes()[:4] == b"\x89PNG" and mode(path) == expected


def test_help_describes_the_script_in_whole_sentences(capsys):
    description = reproduce.get_args_parser().description
    assert description == " ".join(reproduce.__doc__.split("\n\n")[0].split())
    assert description.endswith("from those records alone.")
    assert run_script(reproduce.main, ["--list"])[0] == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed[:-1]] == [e.id for e in EXPERIMENTS]
    assert listed[-1].startswith("training epochs in all: lenet_300_100 ")


def test_bad_records_and_names_are_user_errors(tmp_path):
    bad = tmp_path / "runs.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(UserError, match="line 2 is not JSON"):
        load_records(bad)
    with pytest.raises(UserError, match="no records at"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="unknown experiment 'lenet_9'"):
        select(["lenet_9"])
    assert [e.id for e in select(["fpgm", "baseline_lenet_5"])] == \
        ["baseline_lenet_5", "fpgm_40_lenet_5_caffe", "fpgm_40_resnet20_fashion",
         "fpgm_40_residual_resnet20_fashion", "fpgm_mix_40_resnet20_fashion",
         "fpgm_30_mobilenet_v2_fashion", "fpgm_40_vit_tiny_fashion"]


def test_every_pruning_experiment_names_a_baseline_that_runs_before_it():
    order = [e.id for e in EXPERIMENTS]
    for experiment in EXPERIMENTS:
        if experiment.script == "pruning":
            assert order.index(experiment.parent) < order.index(experiment.id)
            assert BY_ID[experiment.parent].model == experiment.model


# --- running, end to end on synthetic MNIST --------------------------------------------------

def test_quick_run_records_baseline_and_songhan(tmp_path, mnist_dir, capsys):
    records = tmp_path / "runs.jsonl"
    common = [f"--records={records}", f"--data_dir={mnist_dir}", f"--checkpoint_dir={tmp_path / 'ckpt'}",
              "--no_verify_data"]
    code, _ = run_script(reproduce.main, ["run", "--quick", "--only", "songhan_50_lenet_300_100",
                                          *common])
    assert code == 2 and "run --only baseline_lenet_300_100" in capsys.readouterr().err

    code, _ = run_script(reproduce.main, ["run", "--quick", "--only", "baseline_lenet_300_100",
                                          "songhan_50_lenet_300_100", *common])
    assert code == 0
    baseline, pruned = load_records(records)
    assert baseline["experiment"] == "baseline_lenet_300_100" and baseline["quick"] is True
    assert baseline["flags"]["epochs"] == 1 and baseline["method"] is None
    assert baseline["parameters"] == baseline["nonzero"] == 266_610
    assert baseline["flops"] == 532_400 and "weights_density" not in baseline["layers"]["total"]
    assert pruned["method"] == "songhan" and pruned["flags"]["cut_rate"] == 0.5
    assert pruned["parent"] == Path(baseline["checkpoint"]).name
    assert pruned["nonzero"] < 0.55 * pruned["parameters"]
    assert pruned["layers"]["total"]["weights_density"] == pytest.approx(
        pruned["nonzero"] / pruned["parameters"])
    assert pruned["parent_flops"] == 532_400 and pruned["speedup"] > 0
    for r in (baseline, pruned):
        assert (ROOT / r["checkpoint"]).is_file()
        assert r["checkpoint_bytes"] > 0 and r["machine"]["cores"] >= 1 and r["date"]
        assert r["command"].startswith("python ") and "--seed=0" in r["argv"]
    assert pruned["checkpoint_bytes"] < baseline["checkpoint_bytes"]

    code, _ = run_script(reproduce.main, ["report", f"--records={records}", "--output=-"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("| ours ") == TABLE_ROWS and out.count("not run yet") == TABLE_ROWS - 2

    pytest.importorskip("matplotlib")
    code, _ = run_script(reproduce.main, ["plots", f"--records={records}", f"--plots_dir={tmp_path}",
                                          "--hist_experiment=songhan_50_lenet_300_100"])
    assert code == 0
    for name in PLOT_FILES:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_plots_need_matplotlib_and_say_so(tmp_path, records_file, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises
    code, _ = run_script(reproduce.main, ["plots", f"--records={records_file}",
                                          f"--plots_dir={tmp_path}"])
    assert code == 2 and "pip install matplotlib" in capsys.readouterr().err


def test_accuracy_plot_from_records_alone(tmp_path, records_file, capsys):
    pytest.importorskip("matplotlib")
    code, _ = run_script(reproduce.main, ["plots", f"--records={records_file}",
                                          f"--plots_dir={tmp_path}"])
    # these fixed records name no checkpoint on disk: the histogram is skipped, said so
    assert code == 0 and "no weight histogram" in capsys.readouterr().out
    assert (tmp_path / "accuracy_vs_weights_kept.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "weight_histogram.png").exists()


# --- side tables: methods on equal terms, Deep Compression ------------------------------------

def structured_record(experiment, method, top1, deployed_speedup=None, **flags):
    deployed = {} if deployed_speedup is None else {"deployed_speedup": deployed_speedup}
    return record(experiment, **deployed, model="resnet20", dataset="fashion_mnist", method=method,
                  flags={"epochs": 3, "cut_rate": 0.4, **flags}, top1_acc=top1,
                  parent="resnet20_base.pt", parent_top1_acc=0.921, parameters=165_784,
                  nonzero=165_784, nonzero_flops=38_301_248, parent_flops=61_642_496, speedup=1.08,
                  pruning={"mode": "soft", "finetune_epochs": 1})


def test_equal_terms_table_says_where_fpgm_is_not_better():
    records = [structured_record("fpgm_40_resnet20_fashion", "fpgm", 0.9057),
               structured_record("l1norm_40_resnet20_fashion", "l1norm", 0.9071),
               structured_record("sfp_40_resnet20_fashion", "sfp", 0.9001, deployed_speedup=1.37),
               structured_record("fpgm_mix_40_resnet20_fashion", "fpgm", 0.9057, cut_rate=0.3,
                                 fpgm_norm_rate=0.1)]
    from benchmarks.results_report import equal_terms_section
    text = "\n".join(equal_terms_section(latest(records)))
    header, rows = table_cells(text, "Method")
    assert header[:3] == ["Method", "Schedule", "Top1 before -> after"]
    assert [r[0] for r in rows] == ["FPGM (He et al. 2019)", "L1 norm (Li et al. 2017)",
                                    "SFP (He et al. 2018)", "FPGM-mix (30% median + 10% norm)"]
    assert rows[1][2] == "92.10% -> 90.71%" and rows[0][3] == "-37.9%"
    assert [r[-1] for r in rows] == ["n/a", "n/a", "1.37x", "n/a"]  # deployed: where recorded
    assert ("FPGM is not better here: L1 norm (Li et al. 2017) (90.71%), FPGM-mix (30% median + "
            "10% norm) (90.57%) reach at least FPGM's 90.57%") in text


def test_deep_compression_table_from_the_records_compression_figures():
    from benchmarks.results_report import deep_compression_section
    rec = record("deep_compression_lenet_300_100", model="lenet_300_100", method="songhan",
                 checkpoint="checkpoints/x.pt",
                 flags={"epochs": 10, "pruning_epochs": 4, "cut_rate": 0.92, "quantize": True},
                 compression={"sizes": {"dense": 1_066_440, "pruned": 126_000, "quantized": 30_000,
                                        "huffman": 25_000},
                              "accuracy": {"dense": 0.9838, "pruned": 0.9836, "quantized": 0.9837,
                                           "huffman": 0.9837},
                              "dense_parameters": 266_610, "ratio": 1_066_440 / 25_000,
                              "path": "checkpoints/x.compressed"})
    text = "\n".join(deep_compression_section(latest([rec])))
    _, rows = table_cells(text, "Run")
    assert {r[0] for r in rows} == {"LeNet-300-100"}  # the experiment's title names the run
    assert [r[1:5] for r in rows] == [
        ["dense float32 weights", "1,066,440", "1.0x", "98.38%"],
        ["pruned", "126,000", "8.5x", "98.36%"],
        ["pruned + quantized", "30,000", "35.5x", "98.37%"],
        ["pruned + quantized + Huffman", "25,000", "42.7x", "98.37%"]]
    assert "LeNet-300-100: 42.7x against the target 40x (met); top-1 +0.01 points" in text
    assert "(within 0.1)" in text
