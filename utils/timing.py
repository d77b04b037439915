"""Inference timing the way it should be done: eval mode, torch.inference_mode, warm-up first,
time.perf_counter around each forward pass (synchronised on CUDA), and the spread reported.
Two models are compared in alternating rounds, so a burst of load on a shared machine hits both
instead of deciding the ratio."""
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from utils.modes import eval_mode


def _sync(device: Optional[torch.device]):
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], samples: int, warmup: int = 0,
               device: Optional[torch.device] = None) -> List[float]:
    """Milliseconds per call of ``fn()``, each synchronised on CUDA, after ``warmup`` untimed
    calls. Timing a training step (benchmarks/train_speed.py) is this with autograd on."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def alternate_calls(fns: Dict[str, Callable[[], object]], rounds: int, samples: int,
                    warmup: int = 0, device: Optional[torch.device] = None
                    ) -> Dict[str, List[List[float]]]:
    """Per name, per round, the milliseconds of ``samples`` calls of that function after
    ``warmup`` untimed ones; the functions take turns round by round (the order rotating each
    round, so none always runs first after another's caches), so a burst of load on a shared
    machine hits all of them instead of deciding their ratios."""
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(time_calls(fns[name], samples, warmup, device))
    return times


@torch.inference_mode()
def _timed_passes(model: torch.nn.Module, images: torch.Tensor, samples: int, warmup: int) -> List[float]:
    with eval_mode(model):
        return time_calls(lambda: model(images), samples, warmup, images.device)


def summarize(times: List[float], batch_size: int) -> dict:
    ordered = sorted(times)
    return {
        "batch_size": batch_size,
        "samples": len(times),
        "mean_ms": statistics.fmean(times),
        "median_ms": statistics.median(times),
        "p95_ms": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        "var_ms2": statistics.variance(times) if len(times) > 1 else 0.0,
    }


def time_inference(model: torch.nn.Module, images: torch.Tensor, samples: int = 100,
                   warmup: int = 10) -> dict:
    """Milliseconds per forward pass of ``images`` (one batch): mean, median, p95, variance."""
    return summarize(_timed_passes(model, images, samples, warmup), len(images))


def compare_inference(models: Dict[str, torch.nn.Module], images: torch.Tensor, samples: int = 100,
                      rounds: int = 3, warmup: int = 10) -> Dict[str, dict]:
    """Each model timed for ``samples`` passes in all, split over ``rounds`` alternating rounds;
    statistics over all of a model's passes."""
    times = {name: [] for name in models}
    per_round = [samples // rounds + (1 if i < samples % rounds else 0) for i in range(rounds)]
    for count in per_round:
        for name, model in models.items():
            times[name] += _timed_passes(model, images, count, warmup)
    return {name: summarize(t, len(images)) for name, t in times.items()}


def inference_batch(split, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` test images (repeated if the split is smaller)."""
    images = split.images
    while len(images) < batch_size:
        images = torch.cat([images, split.images])
    return images[:batch_size]
