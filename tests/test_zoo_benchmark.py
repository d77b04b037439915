"""benchmarks/zoo.py on two small torchvision models at 64x64, without torch-pruning: every
row pruned both ways with compact == masked, and the last line's counts computed from them."""
import pytest

from benchmarks import zoo
from utils.errors import UserError

MODELS = ["mobilenet_v3_small", "squeezenet1_1"]


def test_zoo_rows_and_last_line(tmp_path, capsys):
    out = tmp_path / "zoo.md"
    rows = zoo.main(["--models", *MODELS, "--image_size", "64", "--no_torch_pruning",
                     "--output", str(out)])
    printed = capsys.readouterr().out
    assert [r["model"] for r in rows] == MODELS
    for row in rows:
        assert row["status"] == "pruned" and row["input"] == 64
        for variant in (row["ours"], row["residual"]):
            assert variant["status"] == "pruned"
            assert variant["diff"] <= 1e-4
            assert variant["params_after"] < row["params"]
            assert variant["flops_after"] < row["flops"]
        assert row["residual"]["prunable"] >= row["ours"]["prunable"] > 0
    lines = printed.strip().splitlines()
    assert lines[-1] == "2/2 pruned, 0 refused, 0 mismatched"
    table = [l for l in lines if l.startswith("| ")]
    assert len(table) == 2 + len(MODELS)  # the header, its rule, one row per model
    assert all(f"| {m} " in printed for m in MODELS)
    assert out.read_text() == printed
    csv_lines = out.with_suffix(".csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(MODELS)
    # An existing output is never overwritten without --overwrite.
    with pytest.raises(UserError, match="--overwrite"):
        zoo.main(["--models", MODELS[1], "--no_torch_pruning", "--output", str(out)])


def test_last_line_counts_refusals_and_mismatches():
    rows = [{"status": "pruned"}, {"status": "refused"}, {"status": "mismatched"},
            {"status": "failed"}]
    assert zoo.summary(rows) == "1/4 pruned, 1 refused, 1 mismatched, 1 failed"


def test_unknown_model_is_one_error():
    with pytest.raises(UserError, match="no torchvision classification model named nonet"):
        zoo.main(["--models", "nonet", "--no_torch_pruning"])


def test_repeats_time_each_side_again_and_keep_the_median_run():
    rows = zoo.main(["--models", "squeezenet1_1", "--image_size", "64", "--no_torch_pruning",
                     "--repeats", "3"])
    for variant in (rows[0]["ours"], rows[0]["residual"]):
        assert variant["status"] == "pruned" and variant["repeats"] == 3
    runs = [{"build_s": 1.0, "compact_s": t, "run": i} for i, t in enumerate((5.0, 1.0, 3.0, 9.0))]
    chosen = zoo.median_run(runs, zoo.ours_total)
    assert chosen["run"] == 0 and chosen["repeats"] == 4  # totals 6, 2, 4, 10: 6 is the upper middle
