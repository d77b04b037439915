"""Every input a user can get wrong ends in one line on stderr and exit code 2, with no
traceback, no advice to load unsafely, and nothing left on disk that the failed run started
(issue 19); and the figures the scripts print are those of the files on disk."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import baseline
import calFLOP
import pruning
import sensitivity
from tests.conftest import ROOT, run_script, write_image_folder
from utils import checkpoints
from utils.checkpoints import compressed as cz
from utils.errors import UserError
from utils.export import main as export_main


def _files(folder: Path) -> list:
    return sorted(p.relative_to(folder) for p in Path(folder).rglob("*"))


def _one_line(capsys) -> str:
    """The run's stderr, checked to be one 'error: ...' line with no traceback or unsafe advice."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0] and "weights_only=False" not in err[0], err
    return err[0]


# ---------------------------------------------------------------- files that are not checkpoints

def _foreign_files(folder: Path, compressed_file: Path) -> dict:
    """kind -> a file of that kind, each a wrong thing to hand over as a checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"random bytes": folder / "random.pt", "empty": folder / "empty.pt",
             "text": folder / "text.pt", "pickled module": folder / "module.pt",
             "foreign bytes named .compressed": folder / "foreign.compressed",
             "truncated archive": folder / "truncated.pt"}
    files["random bytes"].write_bytes(os.urandom(4096))
    files["empty"].write_bytes(b"")
    files["text"].write_text("conv1: 0.5\n")
    torch.save(nn.Linear(3, 2), files["pickled module"])  # what torch suggests unpickling
    files["foreign bytes named .compressed"].write_bytes(b"PK\x03\x04" + os.urandom(300))
    torch.save({"state_dict": {"w": torch.ones(1000)}}, files["truncated archive"])
    data = files["truncated archive"].read_bytes()
    files["truncated archive"].write_bytes(data[:len(data) // 2])
    files["compressed file"] = compressed_file
    return files


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, trained_checkpoint):
    from pruners.quantization import WeightSharing  # noqa: F401  (the format's writer is there)
    import torch.nn.utils.prune as prune
    import models
    path, ckpt_dir, data_dir = trained_checkpoint("lenet_300_100")
    model = checkpoints.build_model(checkpoints.load_checkpoint(str(path)))
    for _, module in models.weight_layers(model):
        prune.l1_unstructured(module, "weight", amount=0.9)
    folder = tmp_path_factory.mktemp("foreign")
    compressed_file, _ = cz.save_compressed(model, folder / "model.compressed", {},
                                            dataset="mnist", parent=path.name)
    return _foreign_files(folder, compressed_file), data_dir


SCRIPTS = {
    "baseline.py": (baseline.main, ["--model=lenet_300_100", "--do_training=False"]),
    "pruning.py": (pruning.main, ["--pruning_method=songhan", "--epochs=1"]),
    "sensitivity.py": (sensitivity.main, ["--val_split=0.1"]),
    "calFLOP.py": (calFLOP.main, []),
    "utils.export": (export_main, ["--format", "state_dict"]),
}
READ_COMPRESSED = {"calFLOP.py", "utils.export"}  # the scripts that read compressed files
KINDS = ["random bytes", "empty", "text", "pickled module", "foreign bytes named .compressed",
         "truncated archive", "compressed file"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_file_that_is_no_checkpoint_is_one_line_in_every_script(foreign, tmp_path, capsys,
                                                                      script):
    files, data_dir = foreign
    main, flags = SCRIPTS[script]
    out = tmp_path / "out"
    out.mkdir()
    for kind in KINDS:
        if kind == "compressed file" and script in READ_COMPRESSED:
            continue  # read, not refused: see test_calflop_reads_a_compressed_file
        before = _files(files[kind].parent)
        code, _ = run_script(main, [f"--load_folder_model={files[kind]}", f"--checkpoint_dir={out}",
                                    f"--data_dir={data_dir}", "--no_download", *flags])
        assert code == 2, (script, kind)
        line = _one_line(capsys)
        assert str(files[kind]) in line, line
        if kind == "compressed file":  # names the scripts that do read it, and its checkpoint
            assert "calFLOP.py and python -m utils.export read compressed files" in line
        elif kind == "foreign bytes named .compressed":
            assert "compressed" in line and "are not the format's signature" in line
        elif kind == "pickled module":
            assert "never unpickles" in line
        else:
            assert "expected a checkpoint written by baseline.py or pruning.py" in line
        assert _files(out) == [] and _files(files[kind].parent) == before, (script, kind)


def test_calflop_reads_a_compressed_file(foreign, capsys):
    files, data_dir = foreign
    code, table = run_script(calFLOP.main, [f"--load_folder_model={files['compressed file']}",
                                            f"--data_dir={data_dir}", "--no_download",
                                            "--act_images=0"])
    assert code == 0
    decoded = checkpoints.build_model(cz.load_compressed(files["compressed file"]), masks=False)
    nonzero = sum(int(torch.count_nonzero(p)) for p in decoded.parameters())
    assert table["total"]["nonzero"] == nonzero
    assert table["total"]["weights"] == table["parameters"] == 266_610
    assert "Parameters: 266,610 in all" in capsys.readouterr().out


# ---------------------------------------------------------------- --layer_rates files and entries

RATE_FILES = {
    "bad.yaml": ("conv1: [0.3\n", "is not valid YAML (expected ',' or ']'"),
    "tabs.yaml": ("conv1:\t0.3\n\tfc1: 0.5\n", "is not valid YAML"),
    "bad.json": ('{"conv1": 0.3,', "is not valid JSON"),
    "twice.yaml": ("conv1: 0.3\nfc1: 0.9\nconv1: 0.5\n", "conv1 is given twice (rates 0.3 and 0.5)"),
    "twice.json": ('{"fc1": 0.9, "fc1": 0.92}', "fc1 is given twice (rates 0.9 and 0.92)"),
    "list.yaml": ("- conv1\n- fc1\n", "must hold a mapping of layer names to rates"),
    "list.json": ('[["conv1", 0.5]]', "must hold a mapping of layer names to rates"),
    "binary.json": (b"\xff\xfe\x00\x01", "is not a text file"),
    "yes.yaml": ("conv1: yes\n", "the rate of conv1 is not a number: True"),
    "missing.yaml": (None, "cannot read"),
}


@pytest.mark.parametrize("name", sorted(RATE_FILES))
def test_every_bad_layer_rates_file_is_one_line(trained_checkpoint, tmp_path, capsys, name):
    content, message = RATE_FILES[name]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    ckpt, ckpt_dir, data_dir = trained_checkpoint("lenet_5_caffe")
    before = _files(ckpt_dir)
    code, _ = run_script(pruning.main, [f"--load_folder_model={ckpt}", f"--checkpoint_dir={ckpt_dir}",
                                        f"--data_dir={data_dir}", "--no_download", "--epochs=1",
                                        f"--layer_rates={path}"])
    assert code == 2
    line = _one_line(capsys)
    assert message in line and "--layer_rates" in line, line
    assert _files(ckpt_dir) == before


@pytest.mark.parametrize("flag,message", [
    ("--layer_rates=conv1=0.3,fc1=0.9,conv1=0.5", "conv1 is given twice (rates 0.3 and 0.5)"),
    ("--layer_rates=fc1=0.9, fc1 =0.9", "fc1 is given twice"),
])
def test_a_layer_named_twice_is_refused(trained_checkpoint, capsys, flag, message):
    ckpt, ckpt_dir, data_dir = trained_checkpoint("lenet_5_caffe")
    code, _ = run_script(pruning.main, [f"--load_folder_model={ckpt}", f"--checkpoint_dir={ckpt_dir}",
                                        f"--data_dir={data_dir}", "--no_download", flag])
    assert code == 2 and message in _one_line(capsys)


def test_songhan_refuses_a_rate_for_a_module_it_never_prunes(trained_checkpoint, capsys):
    """lenet_5 has dropout modules; resnet20 BatchNorms and blocks: a rate for them would prune
    nothing, silently."""
    from models.registry import create_model
    from pruners.songhan import SongHanPruner
    ckpt, ckpt_dir, data_dir = trained_checkpoint("lenet_5")
    before = _files(ckpt_dir)
    code, _ = run_script(pruning.main, [f"--load_folder_model={ckpt}", f"--checkpoint_dir={ckpt_dir}",
                                        f"--data_dir={data_dir}", "--no_download", "--epochs=1",
                                        "--layer_rates=fc1=0.9,drop1=0.5"])
    assert code == 2
    line = _one_line(capsys)
    assert "--layer_rates names drop1 (Dropout), which songhan never prunes" in line
    assert "(conv1, conv2, fc1, fc2)" in line and _files(ckpt_dir) == before
    model = create_model("resnet20", (3, 32, 32), 10)
    for name, kind in (("bn1", "BatchNorm2d"), ("layer1", "Sequential"), ("layer1.0", "BasicBlock")):
        with pytest.raises(UserError, match=rf"names {name} \({kind}\), which songhan never prunes"):
            SongHanPruner(layer_rates={name: 0.5}).check_model(model)
    SongHanPruner(layer_rates={"layer1.0.conv1": 0.5}).check_model(model)  # a conv: accepted


# ---------------------------------------------------------------- images that are not images

def _broken_folder(root: Path, kind: str) -> Path:
    write_image_folder(root, classes=2, train_per_class=6, val_per_class=2, size=34)
    target = root / "train" / "class_1"
    if kind == "text named .png":
        (target / "notes.png").write_text("not an image at all\n")
    elif kind == "zero-byte .jpg":
        (target / "empty.jpg").write_bytes(b"")
    elif kind == "truncated png":  # a real PNG signature, then nothing decodable
        data = (target / "0.png").read_bytes()
        (target / "cut.png").write_bytes(data[:40])
    return target


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind,message", [
    ("text named .png", "notes.png is not an image (its first bytes are no JPEG, PNG"),
    ("zero-byte .jpg", "empty.jpg is empty (zero bytes)"),
    ("truncated png", "cut.png cannot be read as an image"),
])
def test_a_file_that_is_no_image_is_one_line_naming_it(tmp_path, capsys, kind, message, workers):
    """Signatures are checked while the folder is indexed (before training); a file that passes
    but does not decode is named when a worker, or the main process, reads it."""
    from utils.training.run import discard_unfinished_runs
    target = _broken_folder(tmp_path / "data", kind)
    out = tmp_path / "ck"
    code, _ = run_script(baseline.main, [
        "--model=lenet_5", "--dataset=folder", f"--data_dir={tmp_path / 'data'}", "--image_size=32",
        f"--checkpoint_dir={out}", "--epochs=1", "--batch_size=4", "--no_progress",
        "--inference_sampling=1", "--inference_batch_size=4", f"--workers={workers}"])
    assert code == 2
    line = _one_line(capsys)
    assert message in line and str(target) in line, line
    discard_unfinished_runs()  # what the interpreter does at exit (atexit): see the next test
    assert _files(out) == []


def test_a_failed_run_leaves_nothing_on_disk(tmp_path):
    """As a user runs it: a separate process that fails in its first epoch (an image that does
    not decode) exits 2 with one line and leaves no metrics file, no checkpoint."""
    target = _broken_folder(tmp_path / "data", "truncated png")
    out = tmp_path / "ck"
    done = subprocess.run(
        [sys.executable, "baseline.py", "--model=lenet_5", "--dataset=folder",
         f"--data_dir={tmp_path / 'data'}", "--image_size=32", f"--checkpoint_dir={out}",
         "--epochs=1", "--batch_size=4", "--no_progress", "--workers=0", "--threads=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {target / 'cut.png'} cannot be read"), err
    assert _files(out) == []


# ---------------------------------------------------------------- resumable states

def _interrupted_state(tmp_path, mnist_dir, monkeypatch) -> tuple:
    """A baseline run killed after its first epoch: (its resumable state, checkpoint folder)."""
    from utils.training.run import TrainingRun
    original = TrainingRun._save

    def save_then_stop(self, current):
        original(self, current)
        raise KeyboardInterrupt
    ckpt_dir = tmp_path / "ck"
    monkeypatch.setattr(TrainingRun, "_save", save_then_stop)
    code, _ = run_script(baseline.main, [
        "--model=lenet_300_100", f"--data_dir={mnist_dir}", "--no_download", "--no_verify_data",
        f"--checkpoint_dir={ckpt_dir}", "--epochs=3", "--batch_size=64", "--save_every=1",
        "--no_progress", "--inference_sampling=1", "--inference_batch_size=8"])
    monkeypatch.undo()
    assert code == 130
    (state,) = ckpt_dir.glob("*.resume.pt")
    return state, ckpt_dir


def _tamper_shape(state):
    key = next(iter(state["current"]["model"]))
    state["current"]["model"][key] = torch.zeros(3, 3)


def _tamper_rng(state):
    state["current"]["rng"]["generator"] = torch.zeros(5056, dtype=torch.uint8)


def _tamper_epoch(state):
    state["current"]["epoch"] = 40


def _tamper_moments(state):
    moments = state["current"]["optimizer"]["state"][0]
    moments["exp_avg"] = torch.zeros(7)


@pytest.mark.parametrize("tamper,message", [
    (_tamper_shape, "does not fit this run's model, phase 1 (shapes differ: fc1.weight (3, 3)"),
    (_tamper_rng, "does not hold together (the phase under way's generator generator state is "
                  "damaged (Invalid mt19937 state))"),
    (_tamper_epoch, "does not hold together (the phase under way says epoch 40 but holds 1 "
                    "epochs' figures)"),
    (_tamper_moments, "its optimizer's exp_avg for parameter 0 does not fit this run's model"),
])
def test_a_resumable_state_that_does_not_hold_together_is_refused(tmp_path, mnist_dir, monkeypatch,
                                                                  capsys, tamper, message):
    state_path, ckpt_dir = _interrupted_state(tmp_path, mnist_dir, monkeypatch)
    state = torch.load(state_path, weights_only=True)
    tamper(state)
    torch.save(state, state_path)
    before = _files(ckpt_dir)
    capsys.readouterr()
    code, _ = run_script(baseline.main, [f"--resume={state_path}", "--no_progress"])
    assert code == 2
    line = _one_line(capsys)
    assert message in line and f"--resume={state_path}" in line, line
    # no checkpoint named for epochs that never ran; the state stays to be looked at
    assert [p for p in _files(ckpt_dir) if p not in before] == []
    assert not [p for p in ckpt_dir.glob("*epoch_*.pt")]


def test_a_state_beyond_its_own_epochs_is_refused(tmp_path, mnist_dir, monkeypatch, capsys):
    state_path, _ = _interrupted_state(tmp_path, mnist_dir, monkeypatch)
    state = torch.load(state_path, weights_only=True)
    assert state["current"]["epochs"] == 3  # saved with the phase's length
    state["current"]["epoch"] = 5
    state["current"]["history"] *= 5
    torch.save(state, state_path)
    capsys.readouterr()
    assert run_script(baseline.main, [f"--resume={state_path}", "--no_progress"])[0] == 2
    assert "the phase under way is at epoch 5 of 3" in _one_line(capsys)


# ---------------------------------------------------------------- outputs never overwritten

def test_sensitivity_never_writes_over_an_earlier_analysis(trained_checkpoint, tmp_path):
    ckpt, _, data_dir = trained_checkpoint("lenet_300_100")
    output = tmp_path / "s.csv"
    argv = [f"--load_folder_model={ckpt}", f"--data_dir={data_dir}", "--no_download",
            "--no_verify_data", "--val_split=0.25", "--rates=0,0.9", f"--output={output}",
            "--no_progress"]
    output.with_suffix(".json").write_text("mine\n")  # one of the three taken is enough
    code, result = run_script(sensitivity.main, argv)
    assert code == 0 and result["csv"] == str(tmp_path / "s_2.csv")
    assert output.with_suffix(".json").read_text() == "mine\n" and not output.exists()
    first = (tmp_path / "s_2.csv").read_text()
    code, result = run_script(sensitivity.main, argv)
    assert code == 0 and result["csv"] == str(tmp_path / "s_3.csv")
    assert (tmp_path / "s_2.csv").read_text() == first
    assert json.loads((tmp_path / "s_3.json").read_text()) == result["rates"]
    code, result = run_script(sensitivity.main, argv[:-1] + [f"--output={tmp_path / 's_2.csv'}",
                                                             "--overwrite"])
    assert code == 0 and result["csv"] == str(tmp_path / "s_2.csv")


# ---------------------------------------------------------------- printed figures are on disk

def test_calflop_prints_the_whole_parameter_count(capsys):
    code, table = run_script(calFLOP.main, ["--model=resnet56", "--dataset=cifar10"])
    assert code == 0
    out = capsys.readouterr().out
    assert table["total"]["weights"] == 848_954 and table["parameters"] == 853_018
    assert ("Parameters: 853,018 in all, the rows' 848,954 weights and biases plus BatchNorm's "
            "4,064") in out
    code, table = run_script(calFLOP.main, ["--model=lenet_300_100", "--dataset=mnist"])
    assert table["parameters"] == table["total"]["weights"] == 266_610
    assert "Parameters: 266,610 in all (the rows' weights and biases)." in capsys.readouterr().out
