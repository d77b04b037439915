"""Every error a user can cause on the command line is one line and exit code 2, found before any
work; help texts are whole; a Ctrl-C loses nothing that was trained."""
import os
import subprocess
import sys

from pathlib import Path

import pytest

import baseline
import calFLOP
import pruning
from tests.conftest import ROOT, run_script
from utils import checkpoints

SCRIPTS = {"baseline": baseline, "pruning": pruning, "calFLOP": calFLOP}
FAST = ["--no_download", "--no_verify_data", "--inference_sampling=2", "--inference_batch_size=8",
        "--no_progress", "--batch_size=64"]

BAD_NUMBERS = [
    ("--weight_decay=-0.1", "--weight_decay: must be a finite number in [0, inf)"),
    ("--weight_decay=nan", "--weight_decay: must be a finite number"),
    ("--momentum=-0.5", "--momentum: must be a finite number in [0, 1)"),
    ("--momentum=1.5", "--momentum: must be a finite number in [0, 1)"),
    ("--learning_rate=inf", "--learning_rate: must be a finite number in (0, inf)"),
    ("--learning_rate=0", "--learning_rate: must be a finite number in (0, inf)"),
    ("--seed=-1", "--seed: must be an integer from 0 to 18446744073709551615"),
    (f"--seed={2 ** 64}", "--seed: must be an integer from 0 to"),
    ("--seed=1.5", "--seed: expected a number, got '1.5'"),
    ("--epochs=-1", "--epochs: must be an integer at least 0"),
    ("--batch_size=0", "--batch_size: must be an integer at least 1"),
    ("--threads=0", "--threads: must be an integer at least 1"),
    ("--inference_sampling=0", "--inference_sampling: must be an integer at least 1"),
]


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("flag,message", BAD_NUMBERS)
@pytest.mark.parametrize("script", ["baseline", "pruning"])
def test_numeric_flags_out_of_their_domain(script, flag, message, capsys, tmp_path):
    argv = ["--model=lenet_5"] if script == "baseline" else ["--load_folder_model=x"]
    code, _ = run_script(SCRIPTS[script].main, argv + [f"--checkpoint_dir={tmp_path}", flag])
    assert code == 2
    assert message in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_torch_takes_every_seed_the_flag_accepts():
    import torch
    from utils.cli import MAX_SEED
    for seed in (0, MAX_SEED):
        torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if training starts: path errors must come first."""
    def refuse(*_, **__):
        raise AssertionError("training started before the flags were checked")
    monkeypatch.setattr(baseline, "fit", refuse)
    monkeypatch.setattr(baseline.script_setup, "load_data", refuse)


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(mnist_dir, tmp_path, capsys,
                                                                     no_training):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for folder, message in ((afile, "is a file, not a folder"),
                            (afile / "sub", "cannot be created: ")):
        code, _ = run_script(baseline.main, ["--model=lenet_5", f"--data_dir={mnist_dir}",
                                             f"--checkpoint_dir={folder}", *FAST])
        assert code == 2 and message in _one_line_error(capsys)


def test_an_unwritable_checkpoint_dir_is_refused_before_training(mnist_dir, tmp_path, capsys,
                                                                 no_training, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # chmod cannot lock out root (CI may run as root): deny write access the way os.access reports it
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) and mode & os.W_OK
                        else real_access(p, mode))
    code, _ = run_script(baseline.main, ["--model=lenet_5", f"--data_dir={mnist_dir}",
                                         f"--checkpoint_dir={locked}", *FAST])
    assert code == 2 and "--checkpoint_dir=" in _one_line_error(capsys)


def test_a_data_dir_that_is_a_file_is_refused_before_training(tmp_path, capsys, no_training):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _ = run_script(baseline.main, ["--model=lenet_5", f"--data_dir={afile}",
                                         f"--checkpoint_dir={tmp_path}", *FAST])
    assert code == 2 and "--data_dir=" in _one_line_error(capsys)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_is_whole(name, capsys):
    code, _ = run_script(SCRIPTS[name].main, ["--help"])
    out = capsys.readouterr().out
    assert code == 0
    description = " ".join(out.split("\n\n")[1].split())
    assert description.endswith(".") and description[0].isupper(), description
    assert "(default: None)" not in out
    for flag in ("--threads", "--data_dir", "--checkpoint_dir"):
        assert flag in out


def test_ctrl_c_while_importing_is_quiet(tmp_path):
    """A KeyboardInterrupt raised when torch starts to import, as a Ctrl-C then would."""
    code = ("import runpy, sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.argv = ['baseline.py', '--model=lenet_5']\n"
            "runpy.run_path('baseline.py', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 130
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ---- nothing trained is lost -----------------------------------------------------------------

def _interrupt(*_, **__):
    raise KeyboardInterrupt


def test_ctrl_c_while_timing_keeps_the_trained_baseline(mnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(baseline, "time_inference", _interrupt)
    code, _ = run_script(baseline.main, ["--model=lenet_300_100", f"--data_dir={mnist_dir}",
                                         f"--checkpoint_dir={tmp_path}", "--epochs=1", *FAST])
    assert code == 130
    (path,) = tmp_path.glob("*.pt")
    saved = checkpoints.load_checkpoint(str(path))
    assert saved["metrics"]["top1_acc"] > 0 and "inference" not in saved["metrics"]
    assert f"saved {path}" in capsys.readouterr().out


def test_ctrl_c_while_timing_keeps_the_pruned_model(trained_checkpoint, tmp_path, monkeypatch):
    path, _, data_dir = trained_checkpoint("lenet_300_100")
    monkeypatch.setattr(pruning, "measure_speed", _interrupt)
    code, _ = run_script(pruning.main, [f"--load_folder_model={path}", f"--data_dir={data_dir}",
                                        f"--checkpoint_dir={tmp_path}", "--epochs=1", *FAST])
    assert code == 130
    (saved,) = tmp_path.glob("lenet_300_100_songhan_*.pt")
    assert checkpoints.load_checkpoint(str(saved))["masks"]


def test_the_timed_figures_are_added_to_the_saved_file(mnist_dir, tmp_path):
    code, metrics = run_script(baseline.main, ["--model=lenet_300_100", f"--data_dir={mnist_dir}",
                                               f"--checkpoint_dir={tmp_path}", "--epochs=1", *FAST])
    assert code == 0
    saved = checkpoints.load_checkpoint(metrics["path"])
    assert saved["metrics"]["inference"]["samples"] == 2
    # updated in place, no temporary files left; beside it only the run's metrics file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(metrics["path"]).name, Path(metrics["path"]).stem + ".metrics.jsonl"])


def test_foreign_flags_are_found_through_argparse_public_api():
    """A method's flags are learnt by parsing nothing on a parser of their own; one given to a
    method that does not read them is named as its flag."""
    import argparse
    import script_setup

    def add_flags(group):
        group.add_argument("--fpgm_distance", choices=("l1", "l2"), default="l2")
        group.add_argument("--fpgm_norm_rate", type=float, default=0.0)

    defaults = script_setup.flag_defaults(add_flags)
    assert defaults == {"fpgm_distance": "l2", "fpgm_norm_rate": 0.0}
    groups = {"fpgm options": (defaults, {"fpgm"})}
    given = argparse.Namespace(fpgm_distance="l1", fpgm_norm_rate=0.0)
    assert script_setup.foreign_flags(given, "l1norm", groups) == ["--fpgm_distance"]
    assert script_setup.foreign_flags(given, "fpgm", groups) == []


def test_library_errors_name_the_keyword_argument_not_a_flag():
    from pruners import create_pruner
    from pruners.quantization import CompressionSettings
    from utils.errors import UserError
    with pytest.raises(UserError, match=r"^cut_rate must be in \[0, 1\), got 1.5$"):
        create_pruner("songhan", cut_rate=1.5)
    with pytest.raises(UserError, match=r"^bits_conv must be from 0"):
        CompressionSettings(bits_conv=99)
    with pytest.raises(UserError, match=r"^epochs must be zero or more"):
        CompressionSettings(epochs=-1)


def test_compression_settings_come_from_the_flags_only_with_quantize():
    import argparse
    from pruners.quantization import CompressionSettings
    off = argparse.Namespace(quantize=False)
    assert CompressionSettings.from_args(off) is None
    on = argparse.Namespace(quantize=True, quantize_bits_conv=6, quantize_bits_fc=4,
                            quantize_epochs=0, quantize_learning_rate=None)
    assert CompressionSettings.from_args(on) == CompressionSettings(6, 4, 0, None)
