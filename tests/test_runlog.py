"""The per-run metrics log (utils/training/runlog.py) and its training-curves plot
(utils/reporting/curves.py): rows round-trip as JSON, a resumed run keeps exactly the rows it
resumed from, the log follows its checkpoint's name, TensorBoard gets the same numbers, and
missing packages or damaged files are one-line errors."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_script
from utils.errors import UserError
from utils.training.runlog import (MISSING_TENSORBOARD, RunLog, check_tensorboard,
                                   metrics_path_for, read_rows)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(step, phase="train", epoch=None, **metrics):
    base = {"phase": phase, "epoch": step if epoch is None else epoch, "step": step,
            "loss": 1.0 / step, "train_acc": 0.5 + step / 100, "val_acc": 0.4 + step / 100,
            "learning_rate": 0.1 / step}
    base.update(metrics)
    return base


def test_rows_round_trip_with_scalars_converted(tmp_path):
    path = tmp_path / "run.metrics.jsonl"
    with RunLog(path) as run_log:
        run_log.log(row(1))
        written = run_log.log({"phase": "soft", "epoch": np.int64(1), "step": torch.tensor(2),
                               "loss": torch.tensor(0.25), "train_acc": np.float32(0.5),
                               "val_loss": float("nan"), "val_acc": float("inf"),
                               "sparsity": np.float64(0.75), "seconds": 3})
    rows = read_rows(path)
    assert rows == [row(1), written]
    assert rows[1] == {"phase": "soft", "epoch": 1, "step": 2, "loss": 0.25, "train_acc": 0.5,
                       "val_loss": None, "val_acc": None, "sparsity": 0.75, "seconds": 3}
    assert type(rows[1]["epoch"]) is int and type(rows[1]["loss"]) is float
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_each_row_is_on_disk_as_soon_as_it_is_logged(tmp_path):
    path = tmp_path / "live.jsonl"
    with RunLog(path) as run_log:
        run_log.log(row(1))
        assert [r["step"] for r in read_rows(path)] == [1]
        run_log.log(row(2))
        assert [r["step"] for r in read_rows(path)] == [1, 2]


def test_rows_missing_required_keys_or_holding_non_scalars_are_refused(tmp_path):
    with RunLog(tmp_path / "bad.jsonl") as run_log:
        with pytest.raises(ValueError, match="step"):
            run_log.log({"phase": "train", "epoch": 1, "loss": 0.5})
        with pytest.raises(TypeError, match="loss"):
            run_log.log(row(1, loss=torch.ones(3)))
        with pytest.raises(TypeError, match="model"):
            run_log.log(row(1, model=torch.nn.Linear(1, 1)))


def test_a_fresh_log_replaces_an_old_file(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(row(1, phase="old")) + "\n")
    with RunLog(path) as run_log:
        run_log.log(row(1))
    assert read_rows(path) == [row(1)]


def test_resume_keeps_exactly_the_first_rows_then_appends(tmp_path):
    path = tmp_path / "run.jsonl"
    with RunLog(path) as run_log:
        for step in range(1, 6):
            run_log.log(row(step, loss=float(step)))
    with RunLog(path, keep_rows=3) as run_log:
        run_log.log(row(4, loss=40.0))
    assert [(r["step"], r["loss"]) for r in read_rows(path)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    with RunLog(path, keep_rows=0) as run_log:
        run_log.log(row(1, loss=10.0))
    assert [(r["step"], r["loss"]) for r in read_rows(path)] == [(1, 10.0)]


def test_resume_drops_a_line_cut_short_by_a_kill(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(row(1)) + "\n" + json.dumps(row(2)) + "\n" + '{"phase": "tr')
    with RunLog(path, keep_rows=5) as run_log:
        run_log.log(row(3))
    assert [r["step"] for r in read_rows(path)] == [1, 2, 3]


def test_resume_without_an_earlier_log_starts_one(tmp_path):
    path = tmp_path / "lost.jsonl"
    with RunLog(path, keep_rows=4) as run_log:
        run_log.log(row(5))
    assert [r["step"] for r in read_rows(path)] == [5]


def test_move_to_renames_and_keeps_appending(tmp_path):
    path = tmp_path / "run.partial.jsonl"
    run_log = RunLog(path)
    run_log.log(row(1))
    final = tmp_path / "lenet_songhan.metrics.jsonl"
    assert run_log.move_to(final) == final and run_log.path == final
    assert not path.exists()
    run_log.log(row(2))
    run_log.close()
    assert [r["step"] for r in read_rows(final)] == [1, 2]
    again = tmp_path / "closed.jsonl"
    assert run_log.move_to(again) == again and [r["step"] for r in read_rows(again)] == [1, 2]


def test_metrics_path_sits_next_to_the_checkpoint(tmp_path):
    assert metrics_path_for(tmp_path / "lenet_5.pt") == tmp_path / "lenet_5.metrics.jsonl"


def test_read_rows_names_the_file_and_line_of_damage(tmp_path):
    missing = tmp_path / "none.jsonl"
    with pytest.raises(UserError, match="none.jsonl does not exist"):
        read_rows(missing)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text(json.dumps(row(1)) + "\n" + json.dumps(row(2))[:-7] + "\n")
    with pytest.raises(UserError, match=r"damaged.jsonl, line 2: not a JSON metrics row"):
        read_rows(damaged)
    not_a_row = tmp_path / "list.jsonl"
    not_a_row.write_text(json.dumps(row(1)) + "\n[1, 2]\n")
    with pytest.raises(UserError, match=r"list.jsonl, line 2: not a metrics row"):
        read_rows(not_a_row)


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_each_metric_at_the_global_step(tmp_path):
    pytest.importorskip("tensorboard")
    tb = tmp_path / "tb"
    with RunLog(tmp_path / "run.jsonl", tensorboard_dir=tb) as run_log:
        run_log.log(row(1))
        run_log.log(row(2, phase="round 1", epoch=1, val_loss=float("nan")))
    scalars = _scalars(tb)
    assert set(scalars) == {"loss", "train_acc", "val_acc", "learning_rate"}
    for tag in scalars:
        assert [s for s, _ in scalars[tag]] == [1, 2]
        assert [v for _, v in scalars[tag]] == pytest.approx([row(1)[tag], row(2)[tag]])


def test_tensorboard_forgets_the_redone_epochs_of_a_resumed_run(tmp_path):
    pytest.importorskip("tensorboard")
    tb, path = tmp_path / "tb", tmp_path / "run.jsonl"
    with RunLog(path, tensorboard_dir=tb) as run_log:
        for step in (1, 2, 3):
            run_log.log(row(step, loss=float(step)))
    with RunLog(path, tensorboard_dir=tb, keep_rows=2) as run_log:
        run_log.log(row(3, loss=30.0))
    assert _scalars(tb)["loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_missing_tensorboard_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(UserError) as caught:
        check_tensorboard()
    assert str(caught.value) == MISSING_TENSORBOARD and "\n" not in MISSING_TENSORBOARD
    path = tmp_path / "kept.jsonl"
    path.write_text(json.dumps(row(1)) + "\n")
    with pytest.raises(UserError, match="pip install tensorboard"):
        RunLog(path, tensorboard_dir=tmp_path / "tb", keep_rows=0)
    assert read_rows(path) == [row(1)] and not (tmp_path / "tb").exists()


def _phased_log(path):
    with RunLog(path) as run_log:
        step = 0
        for phase, epochs in (("train", 4), ("round 1", 2), ("round 2", 2), ("finetune", 3)):
            for epoch in range(1, epochs + 1):
                step += 1
                run_log.log(row(step, phase=phase, epoch=epoch))
    return path


def test_plot_is_a_png_next_to_the_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    from utils.reporting.curves import plot_curves
    metrics = _phased_log(tmp_path / "run.metrics.jsonl")
    out = plot_curves(metrics)
    assert out == tmp_path / "run.metrics.png"
    assert out.read_bytes().startswith(PNG_MAGIC)
    other = plot_curves(metrics, tmp_path / "plots" / "curves.png")
    assert other.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "curves.png", "plots", "run.metrics.jsonl", "run.metrics.png"]  # no temporary files


def test_plot_with_a_metric_missing_and_a_gap(tmp_path):
    pytest.importorskip("matplotlib")
    from utils.reporting.curves import plot_curves
    path = tmp_path / "sparse.jsonl"
    with RunLog(path) as run_log:
        run_log.log({"phase": "train", "epoch": 1, "step": 1, "loss": math.nan, "train_acc": 0.3})
        run_log.log({"phase": "train", "epoch": 2, "step": 2, "loss": 0.5, "train_acc": 0.6,
                     "test_acc": 0.55})
    assert plot_curves(path).read_bytes().startswith(PNG_MAGIC)


def test_plot_of_an_empty_log_is_a_user_error(tmp_path):
    pytest.importorskip("matplotlib")
    from utils.reporting.curves import plot_curves
    RunLog(tmp_path / "empty.jsonl").close()
    with pytest.raises(UserError, match="no rows"):
        plot_curves(tmp_path / "empty.jsonl")
    assert not (tmp_path / "empty.png").exists()


def test_missing_matplotlib_is_one_line(tmp_path, monkeypatch):
    from utils.reporting.curves import plot_curves
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError, match="pip install matplotlib"):
        plot_curves(_phased_log(tmp_path / "run.jsonl"))


def test_cli_on_a_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from utils.reporting import curves
    code, _ = run_script(curves.main, [str(tmp_path / "none.jsonl")])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "none.jsonl does not exist" in lines[0]


def test_cli_on_a_damaged_file_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("matplotlib")
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text(json.dumps(row(1)) + "\n{not json\n")
    result = subprocess.run([sys.executable, "-m", "utils.reporting.curves", str(damaged)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "line 2" in lines[0]
    assert not (tmp_path / "damaged.png").exists()
