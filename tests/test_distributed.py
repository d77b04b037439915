"""Distributed training under torchrun with gloo on the CPU: 2 processes with batch B end with
the weights of 1 process with batch 2B (same seed); pruning runs end with one model on every
rank (each run checks the ranks' weight digests) and one file on disk."""
import os
import socket
import subprocess
import sys

import pytest
import torch

import baseline
from tests.conftest import ROOT, run_script
from utils import checkpoints, distributed
from utils.data import Split
from utils.data.loader import BatchLoader, shard_batches


def _as_rank(monkeypatch, rank, world):
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


@pytest.mark.parametrize("count", [64, 70, 65])
def test_ranks_shares_make_up_the_one_process_batches(monkeypatch, count):
    """Step by step, the ranks' batches of size B together are one process's batch of 2B (the
    last global batch loses at most world-1 images so the ranks stay in step)."""
    _as_rank(monkeypatch, 0, 1)
    one = [m.tolist() for _, m, _ in shard_batches(count, 16, True, torch.Generator().manual_seed(4))]
    shares = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        shares.append([m.tolist() for _, m, _ in
                       shard_batches(count, 8, True, torch.Generator().manual_seed(4))])
    dropped = len(one[-1]) < 2  # a last batch of one image cannot be shared by two ranks
    assert len(shares[0]) == len(shares[1]) == len(one) - dropped
    for batch, a, b in zip(one, *shares):
        assert len(a) == len(b)
        assert a + b == batch[:len(a) + len(b)]
    assert sum(len(b) for b in one) - sum(len(a) + len(b) for a, b in zip(*shares)) == count % 2


def test_augmented_shares_are_the_one_process_batch(monkeypatch):
    split = Split(torch.randn(32, 3, 8, 8), torch.arange(32))
    _as_rank(monkeypatch, 0, 1)
    (one, _), = list(BatchLoader(split, 32, True, True, torch.Generator().manual_seed(1)))
    parts = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        (x, _), = list(BatchLoader(split, 16, True, True, torch.Generator().manual_seed(1)))
        parts.append(x)
    assert torch.equal(torch.cat(parts), one)


def test_evaluation_shards_cover_each_image_once(monkeypatch):
    split = Split(torch.zeros(10, 1, 1, 1), torch.arange(10))
    seen = []
    for rank in range(3):
        _as_rank(monkeypatch, rank, 3)
        seen += [y.tolist() for _, y in split.batches(4)]
    assert sorted(sum(seen, [])) == list(range(10))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script, *flags, processes=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               "--nnodes=1", f"--master_port={_free_port()}", script, *flags]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _data_flags(data_dir, ckpt_dir):
    return [f"--data_dir={data_dir}", f"--checkpoint_dir={ckpt_dir}", "--no_download",
            "--no_verify_data", "--no_progress", "--inference_sampling=1",
            "--inference_batch_size=4"]


def _state(path):
    return checkpoints.build_model(checkpoints.load_checkpoint(str(path))).state_dict()


def test_two_processes_with_batch_b_match_one_process_with_batch_2b(tmp_path, mnist_dir):
    flags = ["--model=lenet_300_100", "--dataset=mnist", "--epochs=2", "--seed=7"]
    one, two = tmp_path / "one", tmp_path / "two"
    code, metrics = run_script(baseline.main, flags + _data_flags(mnist_dir, one) + ["--batch_size=64"])
    assert code == 0
    done = _torchrun("baseline.py", *flags, *_data_flags(mnist_dir, two), "--batch_size=32")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("saved ") == 1  # one report: the other rank's output is silenced
    (a,), (b,) = one.glob("*.pt"), two.glob("*.pt")
    sa, sb = _state(a), _state(b)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-4, atol=1e-5)
    assert f"test acc {metrics['history'][-1]['test_acc']:.4f}" in done.stdout


@pytest.mark.parametrize("method", [
    ["--pruning_method=songhan", "--cut_rate=0.7", "--pruning_epochs=2", "--epochs=1"],
    ["--pruning_method=fpgm", "--cut_rate=0.4", "--epochs=2", "--finetune_epochs=1"],
], ids=["songhan", "fpgm"])
def test_pruning_under_two_processes_ends_with_one_model_and_one_file(tmp_path, trained_checkpoint,
                                                                     method):
    parent, _, data_dir = trained_checkpoint("lenet_5")
    out = tmp_path / "out"
    done = _torchrun("pruning.py", f"--load_folder_model={parent}", *method, "--batch_size=32",
                     *_data_flags(data_dir, out))
    assert done.returncode == 0, done.stderr[-2000:]  # each run compares the ranks' digests
    assert len(list(out.glob("*.pt"))) == 1
    assert len(list(out.glob("*.metrics.jsonl"))) == 1


def test_sync_bn_is_refused_where_it_cannot_work(mnist_dir, tmp_path, capsys):
    code, _ = run_script(baseline.main, ["--model=resnet20", f"--data_dir={mnist_dir}",
                                         f"--checkpoint_dir={tmp_path}", "--sync_bn"])
    assert code == 2
    assert "this run has one process" in capsys.readouterr().err


def test_batchnorm_comes_back_from_syncbatchnorm_with_the_same_tensors():
    """fit() trains a SyncBatchNorm copy of the architecture and puts BatchNorm2d back, so
    tracing, compaction and saving see the model they built, with the trained statistics."""
    from models import create_model
    from utils.training.loop import _plain_batchnorm
    model = create_model("resnet20", (3, 32, 32), 10)
    before = {name: id(t) for name, t in model.state_dict(keep_vars=True).items()}
    types = [type(m) for m in model.modules()]
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    _plain_batchnorm(converted)
    assert [type(m) for m in converted.modules()] == types
    assert {name: id(t) for name, t in converted.state_dict(keep_vars=True).items()} == before
