"""Resumable runs: a run killed after epoch k and resumed with --resume ends with exactly the
weights of the uninterrupted run (same seed, CPU), for baseline training, songhan's rounds and
FPGM's soft phase, compaction and fine-tuning; the metrics file holds each epoch once."""
import json

import pytest
import torch

import baseline
import pruning
from tests.conftest import run_script
from utils import checkpoints
from utils.training.run import TrainingRun


def _interrupt_after(monkeypatch, saves: int):
    """The k-th write of the resumable state is followed by a Ctrl-C, as if the run were
    killed right after it."""
    original = TrainingRun._save
    count = {"saves": 0}

    def save_then_stop(self, current):
        original(self, current)
        count["saves"] += 1
        if count["saves"] == saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingRun, "_save", save_then_stop)


def _weights(path) -> dict:
    return checkpoints.build_model(checkpoints.load_checkpoint(str(path))).state_dict()


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _final(ckpt_dir):
    (path,) = [p for p in ckpt_dir.glob("*.pt") if not p.name.endswith(".resume.pt")]
    return path


def _rows(ckpt_dir):
    (path,) = ckpt_dir.glob("*.metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run_interrupted_then_resumed(monkeypatch, main, argv, saves):
    _interrupt_after(monkeypatch, saves)
    code, _ = run_script(main, argv)
    assert code == 130
    monkeypatch.undo()
    ckpt_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("--checkpoint_dir="))
    from pathlib import Path
    (state,) = Path(ckpt_dir).glob("*.resume.pt")
    code, _ = run_script(main, [f"--resume={state}", "--no_progress"])
    assert code == 0
    assert not state.exists()  # the finished run removed the state that served it


def _baseline_args(data_dir, ckpt_dir):
    return ["--model=lenet_300_100", "--dataset=mnist", f"--data_dir={data_dir}",
            f"--checkpoint_dir={ckpt_dir}", "--no_download", "--no_verify_data", "--epochs=3",
            "--batch_size=64", "--seed=5", "--save_every=1", "--inference_sampling=1",
            "--inference_batch_size=4", "--no_progress"]


@pytest.mark.parametrize("saves", [1, 2])
def test_baseline_resumed_after_epoch_k_ends_with_the_uninterrupted_weights(
        tmp_path, mnist_dir, monkeypatch, saves):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_script(baseline.main, _baseline_args(mnist_dir, whole))[0] == 0
    _run_interrupted_then_resumed(monkeypatch, baseline.main, _baseline_args(mnist_dir, parts),
                                  saves)
    _assert_same(_weights(_final(whole)), _weights(_final(parts)))
    rows = _rows(parts)
    assert [(r["phase"], r["epoch"], r["step"]) for r in rows] == [
        ("train", 1, 1), ("train", 2, 2), ("train", 3, 3)]
    assert [r["loss"] for r in rows] == [r["loss"] for r in _rows(whole)]


def _pruning_args(parent, data_dir, ckpt_dir, *extra):
    return [f"--load_folder_model={parent}", f"--data_dir={data_dir}",
            f"--checkpoint_dir={ckpt_dir}", "--no_download", "--no_verify_data",
            "--batch_size=64", "--seed=2", "--save_every=1", "--inference_sampling=1",
            "--inference_batch_size=4", "--no_progress", *extra]


def test_songhan_resumed_inside_its_second_round_matches(tmp_path, trained_checkpoint,
                                                         monkeypatch):
    parent, _, data_dir = trained_checkpoint("lenet_300_100")
    flags = ("--pruning_method=songhan", "--cut_rate=0.8", "--pruning_epochs=2", "--epochs=2")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_script(pruning.main, _pruning_args(parent, data_dir, whole, *flags))[0] == 0
    # Saves 1, 2 in round 1; the third is round 2's first epoch: round 1 is restored, not rerun.
    _run_interrupted_then_resumed(monkeypatch, pruning.main,
                                  _pruning_args(parent, data_dir, parts, *flags), 3)
    _assert_same(_weights(_final(whole)), _weights(_final(parts)))
    assert [(r["phase"], r["epoch"]) for r in _rows(parts)] == [
        ("round 1", 1), ("round 1", 2), ("round 2", 1), ("round 2", 2)]


@pytest.mark.parametrize("saves", [1, 3], ids=["inside the soft phase", "inside fine-tuning"])
def test_fpgm_resumed_matches_including_selection_and_compaction(tmp_path, trained_checkpoint,
                                                                 monkeypatch, saves):
    parent, _, data_dir = trained_checkpoint("lenet_5")
    flags = ("--pruning_method=fpgm", "--cut_rate=0.4", "--epochs=2", "--finetune_epochs=2")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_script(pruning.main, _pruning_args(parent, data_dir, whole, *flags))[0] == 0
    _run_interrupted_then_resumed(monkeypatch, pruning.main,
                                  _pruning_args(parent, data_dir, parts, *flags), saves)
    a, b = (checkpoints.load_checkpoint(str(_final(d))) for d in (whole, parts))
    assert a["pruning"]["pruned_filters"] == b["pruning"]["pruned_filters"]
    assert a["pruning"]["epochs"] == b["pruning"]["epochs"]  # the soft steps' log, restored
    _assert_same(_weights(_final(whole)), _weights(_final(parts)))


def test_resume_refuses_changed_flags_and_other_files(tmp_path, mnist_dir, monkeypatch, capsys):
    ckpt_dir = tmp_path / "ck"
    _interrupt_after(monkeypatch, 1)
    assert run_script(baseline.main, _baseline_args(mnist_dir, ckpt_dir))[0] == 130
    (state,) = ckpt_dir.glob("*.resume.pt")
    capsys.readouterr()
    assert run_script(baseline.main, [f"--resume={state}", "--epochs=5"])[0] == 2
    assert "leave out --epochs" in capsys.readouterr().err
    assert run_script(pruning.main, [f"--resume={state}"])[0] == 2
    assert "python baseline.py --resume" in capsys.readouterr().err
    damaged = tmp_path / "damaged.resume.pt"
    damaged.write_bytes(state.read_bytes()[:100])
    assert run_script(baseline.main, [f"--resume={damaged}"])[0] == 2
    err = capsys.readouterr().err
    assert "not a readable resumable state" in err and len(err.strip().splitlines()) == 1


def test_the_fp16_loss_scale_is_saved_and_restored(tmp_path, monkeypatch):
    """fp16 needs CUDA; a CPU GradScaler stands in for it: its scale doubles every step here, so
    a resumed run that started from the default scale again would step differently."""
    import models
    from tests.test_training import _toy_split
    from utils.training import TrainingSettings, fit, seed_everything
    from utils.training.acceleration import TrainingAccelerator
    from utils.training.run import TrainingRun, load_state

    scalers = []

    def with_scaler(cls, settings, device, model=None):
        accelerator = TrainingAccelerator(device=device)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0, growth_interval=1)
        scalers.append(accelerator.scaler)
        return accelerator

    monkeypatch.setattr(TrainingAccelerator, "from_settings", classmethod(with_scaler))
    settings = TrainingSettings(epochs=2, batch_size=64, learning_rate=0.01, progress=False)
    state_path = tmp_path / "run.resume.pt"

    def train(run, epochs):
        model = models.create_model("lenet_300_100", (1, 28, 28), 10)
        fit(model, _toy_split(), _toy_split(64, 1), settings, generator=seed_everything(0),
            run=run, epochs=epochs, print_fn=lambda *_: None)

    train(TrainingRun("baseline", [], state_path=state_path, save_every=1), epochs=1)
    saved = load_state(state_path)["current"]["accelerator"]["scaler"]
    assert saved["scale"] == scalers[-1].get_scale() == 2.0 * 2 ** 4  # 256 images / 64: 4 steps
    train(TrainingRun("baseline", [], resumed=load_state(state_path)), epochs=2)
    assert scalers[-1].get_scale() == 2.0 * 2 ** 8  # resumed at 32, four more steps


def test_songhan_resumed_inside_quantize_fine_tuning_keeps_one_pruned_checkpoint(
        tmp_path, trained_checkpoint, monkeypatch):
    parent, _, data_dir = trained_checkpoint("lenet_300_100")
    flags = ("--pruning_method=songhan", "--cut_rate=0.8", "--pruning_epochs=1", "--epochs=1",
             "--quantize", "--quantize_epochs=2")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_script(pruning.main, _pruning_args(parent, data_dir, whole, *flags))[0] == 0
    # Save 1 ends the pruning round; save 2 is the first quantized fine-tuning epoch.
    _run_interrupted_then_resumed(monkeypatch, pruning.main,
                                  _pruning_args(parent, data_dir, parts, *flags), 2)
    names = lambda d: sorted(p.name for p in d.iterdir())  # noqa: E731
    assert names(parts) == names(whole)  # the same files: no second copy of the pruned model
    pruned = [p for p in parts.glob("*.pt") if "quantized" not in p.name]
    assert len(pruned) == 1
    _assert_same(_weights(pruned[0]), _weights(whole / pruned[0].name))
