import math
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import models
from utils.data import Split
from utils.timing import compare_inference, time_inference
from utils.training import (TrainingDiverged, TrainingSettings, evaluate, fit, make_optimizer, make_scheduler,
                            seed_everything, train_one_epoch)
from utils.data import BatchLoader


def _toy_split(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randn(n, 1, 28, 28, generator=g) * 0.1
    images[torch.arange(n), 0, labels, labels] = 3.0  # a learnable signal
    return Split(images, labels)


def _train(seed):
    generator = seed_everything(seed)
    model = models.create_model("lenet_5", (1, 28, 28), 10)
    settings = TrainingSettings(epochs=3, batch_size=32, learning_rate=0.01, progress=False)
    history = fit(model, _toy_split(), _toy_split(128, 1), settings, generator=generator,
                  print_fn=lambda *_: None)
    return model, history


def test_same_seed_same_result_on_cpu():
    (a, ha), (b, hb) = _train(3), _train(3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    c, _ = _train(4)
    assert not torch.equal(a.fc2.weight, c.fc2.weight)


def test_fit_learns_and_reports_each_epoch():
    lines = []
    generator = seed_everything(0)
    model = models.create_model("lenet_300_100", (1, 28, 28), 10)
    settings = TrainingSettings(epochs=4, batch_size=32, learning_rate=0.05, optimizer="sgd",
                                lr_schedule="constant", momentum=0.9, progress=False)
    history = fit(model, _toy_split(), _toy_split(128, 1), settings, generator=generator,
                  print_fn=lines.append)
    assert len(history) == len(lines) == 4 and lines[0].startswith("epoch   1/4")
    assert history[-1]["test_acc"] > 0.9 and history[-1]["loss"] < history[0]["loss"]


def test_evaluate_counts_exactly():
    class Oracle(nn.Module):  # predicts the label hidden in pixel (0, 0) for half of the images
        def forward(self, x):
            return nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()

    labels = torch.arange(10).repeat(3)
    images = torch.zeros(30, 1, 2, 2)
    images[:15, 0, 0, 0] = labels[:15].float()
    assert evaluate(Oracle(), Split(images, labels), batch_size=7)["acc"] == pytest.approx(
        (15 + 3 - 2) / 30)  # the 15 coded ones, plus label 0 images among the rest (3), minus the 2 counted twice


def test_non_finite_loss_stops_training():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    loader = BatchLoader(_toy_split(64), 16)
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1"):
        train_one_epoch(model, loader, make_optimizer("adam", model.parameters(), 0.001),
                        progress=False)


def test_cosine_schedule_decays_to_zero():
    optimizer = make_optimizer("sgd", [nn.Parameter(torch.zeros(1))], 0.1)
    scheduler = make_scheduler("cosine", optimizer, 10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.1 and all(a > b for a, b in zip(rates, rates[1:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_inference_timing_statistics():
    model = nn.Linear(8, 2).train()
    stats = time_inference(model, torch.randn(4, 8), samples=20, warmup=2)
    assert stats["samples"] == 20 and stats["batch_size"] == 4
    assert 0 < stats["median_ms"] <= stats["p95_ms"] and stats["var_ms2"] >= 0
    assert math.isfinite(stats["mean_ms"])
    assert model.training  # restored


def test_compare_inference_times_each_model_for_all_samples_in_rounds():
    calls = []

    class Recorder(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x

    stats = compare_inference({"a": Recorder("a"), "b": Recorder("b")}, torch.zeros(3, 2),
                              samples=10, rounds=3, warmup=1)
    assert stats["a"]["samples"] == stats["b"]["samples"] == 10
    assert stats["a"]["batch_size"] == 3
    assert len(stats["a"]["round_medians_ms"]) == len(stats["b"]["round_medians_ms"]) == 3
    # round by round (1 warm-up + 4, 3, 3 passes), the order rotating so neither always goes first
    assert calls == ["a"] * 5 + ["b"] * 5 + ["b"] * 4 + ["a"] * 4 + ["a"] * 4 + ["b"] * 4


def test_speedup_is_the_median_of_paired_round_ratios():
    from utils.timing import alternate_calls, paired_ratios, speedup, speedup_quartiles
    # a burst of load slows both models in rounds 2 and 4; round by round the ratio stays 2 or 3
    before = {"round_medians_ms": [10.0, 100.0, 10.0, 90.0, 12.0]}
    after = {"round_medians_ms": [5.0, 50.0, 5.0, 30.0, 4.0]}
    assert paired_ratios(before["round_medians_ms"], after["round_medians_ms"]) == [2, 2, 2, 3, 3]
    assert speedup(before, after) == 2.0
    # the ratio of pooled medians mixes rounds: 12 ms against 5 ms
    assert sorted(before["round_medians_ms"])[2] / sorted(after["round_medians_ms"])[2] == 2.4
    assert speedup_quartiles(before, after) == (2.0, 3.0)
    assert speedup_quartiles({"round_medians_ms": [6.0]}, {"round_medians_ms": [2.0]}) == (3.0, 3.0)
    with pytest.raises(ValueError, match="2 rounds against 3"):
        paired_ratios([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="2 sample counts for 3 rounds"):
        alternate_calls({"a": lambda: None}, rounds=3, samples=[1, 2])


def test_a_contended_timing_says_so():
    from utils.reporting.console import format_timing
    calm = {"median_ms": 1.0, "mean_ms": 1.1, "p95_ms": 1.4, "var_ms2": 0.01, "batch_size": 8,
            "samples": 20}
    assert "contended" not in format_timing(calm)
    busy = dict(calm, p95_ms=40.0)
    assert "contended: p95 is 40.0x the median" in format_timing(busy)


FAULTS_PER_CYCLE = """
import resource, sys, torch
sys.path.insert(0, {root!r})
if {keep}:
    from utils.timing import keep_freed_memory
    assert keep_freed_memory()
def cycle():  # four 12 MB activations, freed together, as a conv net's pass frees them
    blocks = [torch.ones(3_000_000) for _ in range(4)]
    del blocks
for _ in range(5):  # glibc settles its thresholds on the first cycles
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_timed_passes_do_not_fault_freed_activations_back_in():
    """Left to itself, glibc trims the freed heap in some processes and not in others (of six fresh
    processes running this loop, one faulted its 48 MB back in on every cycle, the rest settled
    at none), so how much a model's passes pay for it varies from run to run; keep_freed_memory
    makes every process settle."""
    code = FAULTS_PER_CYCLE.format(root=str(Path(__file__).resolve().parent.parent), keep=True)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 100  # 12,000 pages per cycle where the heap is trimmed
