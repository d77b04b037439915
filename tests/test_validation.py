"""A validation split held out of training, fixed by the seed, recorded in the checkpoint and
kept out of every later run; the test split evaluated once."""
import torch

import baseline
import pruning
from tests.conftest import run_script
from utils import checkpoints
from utils.data import Split, held_out, split_validation

FAST = ["--no_download", "--no_verify_data", "--inference_sampling=2", "--inference_batch_size=8",
        "--no_progress", "--batch_size=64"]


def _numbered(n=100):
    return Split(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n) % 10)


def test_the_split_is_disjoint_complete_and_fixed_by_the_seed():
    rest, val = split_validation(_numbered(), 0.2, seed=3)
    ids = lambda split: split.images.flatten().long().tolist()  # noqa: E731
    assert len(val) == 20 and len(rest) == 80
    assert not set(ids(rest)) & set(ids(val)) and sorted(ids(rest) + ids(val)) == list(range(100))
    assert ids(rest) == sorted(ids(rest))  # the original order is kept
    torch.manual_seed(123)  # other draws on the global generator change nothing
    again_rest, again_val = split_validation(_numbered(), 0.2, seed=3)
    assert ids(again_val) == ids(val)
    assert ids(split_validation(_numbered(), 0.2, seed=4)[1]) != ids(val)
    assert held_out(_numbered(), None)[1] is None
    assert ids(held_out(_numbered(), {"fraction": 0.2, "seed": 3})[1]) == ids(val)


def test_baseline_records_the_split_and_pruning_keeps_it_out(mnist_dir, tmp_path, capsys):
    code, metrics = run_script(baseline.main, [
        "--model=lenet_300_100", f"--data_dir={mnist_dir}", f"--checkpoint_dir={tmp_path}",
        "--epochs=1", "--val_split=0.25", "--seed=5", *FAST])
    assert code == 0
    out = capsys.readouterr().out
    assert "val acc" in out and "test acc" not in out
    saved = checkpoints.load_checkpoint(metrics["path"])
    assert saved["validation"] == {"fraction": 0.25, "seed": 5}
    assert 0 <= metrics["val_acc"] <= 1
    code, result = run_script(pruning.main, [
        f"--load_folder_model={metrics['path']}", f"--data_dir={mnist_dir}",
        f"--checkpoint_dir={tmp_path}", "--epochs=1", *FAST])
    assert code == 0
    out = capsys.readouterr().out
    assert "val acc" in out and "test acc" not in out.split("top-1 accuracy")[0]
    assert checkpoints.load_checkpoint(result["path"])["validation"] == {"fraction": 0.25, "seed": 5}
