"""Chains of runs on one model: pruned weights stay pruned through re-pruning and fine-tuning,
masks only grow, and the retraining rate comes from the root baseline of the chain."""
import pytest
import torch

import baseline
import pruning
from models.base import weight_layers
from tests.conftest import run_script
from utils import checkpoints

FAST = ["--no_download", "--no_verify_data", "--inference_sampling=2", "--inference_batch_size=8",
        "--no_progress", "--batch_size=64", "--epochs=1"]


def _prune(path, folder, data_dir, *flags):
    code, result = run_script(pruning.main, [f"--load_folder_model={path}", f"--data_dir={data_dir}",
                                             f"--checkpoint_dir={folder}", *FAST, *flags])
    assert code == 0
    return result


def _pruned_positions(path):
    """Boolean map of pruned (masked-out) weight entries, by layer, from the file alone."""
    loaded = checkpoints.load_checkpoint(str(path))
    return {k: ~m for k, m in loaded["masks"].items()}, loaded


@pytest.fixture(scope="module")
def chain(trained_checkpoint, tmp_path_factory):
    """baseline -> songhan 50% (saved as ``first``)."""
    path, _, data_dir = trained_checkpoint("lenet_300_100")
    folder = tmp_path_factory.mktemp("chain")
    first = _prune(path, folder, data_dir, "--cut_rate=0.5")["path"]
    return {"baseline": path, "first": first, "data_dir": data_dir, "folder": folder}


def test_re_pruning_only_adds_to_the_masks(chain, capsys):
    first_pruned, first = _pruned_positions(chain["first"])
    result = _prune(chain["first"], chain["folder"], chain["data_dir"], "--cut_rate=0.75",
                    "--pruning_epochs=2")
    second_pruned, second = _pruned_positions(result["path"])
    weights = sum(m.numel() for m in second_pruned.values())
    assert sum(int(m.sum()) for m in second_pruned.values()) == round(0.75 * weights)
    for key, was in first_pruned.items():
        assert torch.all(second_pruned[key][was]), key  # everything pruned before is still pruned
        assert torch.all(second["state_dict"][key][second_pruned[key]] == 0)
    # the schedule starts where the parent is: round 1 of 2 is already past 50%
    rounds = second["pruning"]["rounds"]
    assert rounds[0]["sparsity"] > 0.5 and rounds[-1]["sparsity"] == pytest.approx(0.75, abs=1e-4)
    assert second["pruning"]["start_sparsity"] == pytest.approx(0.5, abs=1e-4)
    out = capsys.readouterr().out
    assert f"{round(0.75 * weights):,} of {weights:,} prunable entries pruned (75.00%)" in out


@pytest.mark.parametrize("rate", ["0.3", "0.5"])
def test_a_rate_the_model_already_has_is_refused_before_retraining(chain, capsys, rate, monkeypatch):
    before = sorted(chain["folder"].iterdir())
    monkeypatch.setattr(pruning.script_setup, "load_data", lambda *a, **k: pytest.fail("data loaded"))
    code, _ = run_script(pruning.main, [f"--load_folder_model={chain['first']}",
                                        f"--data_dir={chain['data_dir']}",
                                        f"--checkpoint_dir={chain['folder']}", *FAST,
                                        f"--cut_rate={rate}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would prune nothing more" in err[0] and "give a rate above 0.5" in err[0]
    assert sorted(chain["folder"].iterdir()) == before


def test_fine_tuning_a_pruned_checkpoint_keeps_it_pruned(chain, tmp_path):
    first_pruned, first = _pruned_positions(chain["first"])
    code, result = run_script(baseline.main, [
        "--model=lenet_300_100", f"--load_folder_model={chain['first']}",
        f"--data_dir={chain['data_dir']}", f"--checkpoint_dir={tmp_path}", *FAST,
        "--epochs=2", "--learning_rate=0.01"])
    assert code == 0
    tuned_pruned, tuned = _pruned_positions(result["path"])
    assert {k: v.tolist() for k, v in tuned_pruned.items()} == \
        {k: v.tolist() for k, v in first_pruned.items()}
    for key, pruned in first_pruned.items():
        assert torch.all(tuned["state_dict"][key][pruned] == 0)
        assert not torch.equal(tuned["state_dict"][key], first["state_dict"][key])  # it trained
    assert result["nonzero"] <= first["metrics"]["after"]["nonzero"]
    model = checkpoints.build_model(tuned)
    zeros = sum(int((m.weight == 0).sum()) for _, m in weight_layers(model))
    assert zeros >= sum(int(p.sum()) for p in first_pruned.values())


def test_the_retraining_rate_comes_from_the_root_baseline(chain):
    root_rate = checkpoints.load_checkpoint(str(chain["baseline"]))["flags"]["learning_rate"]
    first = checkpoints.load_checkpoint(chain["first"])
    assert first["flags"]["learning_rate"] == pytest.approx(root_rate / 10)
    assert first["root_learning_rate"] == root_rate
    second = _prune(chain["first"], chain["folder"], chain["data_dir"], "--cut_rate=0.6")
    again = checkpoints.load_checkpoint(second["path"])
    assert again["flags"]["learning_rate"] == pytest.approx(root_rate / 10)  # not root / 100
    assert again["root_learning_rate"] == root_rate


def test_fpgm_refuses_a_magnitude_pruned_checkpoint(chain, capsys):
    code, _ = run_script(pruning.main, [f"--load_folder_model={chain['first']}",
                                        f"--data_dir={chain['data_dir']}",
                                        f"--checkpoint_dir={chain['folder']}", *FAST,
                                        "--pruning_method=fpgm", "--cut_rate=0.4"])
    assert code == 2
    assert "magnitude-pruned" in capsys.readouterr().err
