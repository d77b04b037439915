"""Inference timing the way it should be done: eval mode, torch.inference_mode, warm-up first,
time.perf_counter around each forward pass (synchronised on CUDA), and the spread reported.
Two models are compared in alternating rounds, so a burst of load on a shared machine hits both
instead of deciding the ratio."""
import ctypes
import ctypes.util
import statistics
import time
from functools import lru_cache, partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from utils.modes import eval_mode


def _sync(device: Optional[torch.device]):
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64 bits
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


@lru_cache(maxsize=None)  # once per process
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process: blocks up to 32 MiB come from the
    heap, and the heap is never trimmed. PyTorch's CPU tensors come from malloc, which by default
    may hand large freed blocks back to the system and fault them in, zeroed, on the next pass;
    whether it does varies from process to process (glibc adapts its thresholds to what was
    freed before), and it costs in proportion to the activations' size, not to the arithmetic. Timed in a fresh process, that
    made a dense ResNet-56's passes about a quarter slower than in one that had run other models,
    and so inflated what pruning appeared to buy. Every timing here (``time_calls``) calls it
    first, so models are compared on their computation; the process keeps its peak memory from
    then on. Returns whether it applied (glibc only; a no-op elsewhere)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


def time_calls(fn: Callable[[], object], samples: int, warmup: int = 0,
               device: Optional[torch.device] = None) -> List[float]:
    """Milliseconds per call of ``fn()``, each synchronised on CUDA, after ``warmup`` untimed
    calls. Timing a training step (benchmarks/train_speed.py) is this with autograd on."""
    keep_freed_memory()
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


def alternate_calls(fns: Dict[str, Callable[[], object]], rounds: int,
                    samples: Union[int, Sequence[int]], warmup: int = 0,
                    device: Optional[torch.device] = None) -> Dict[str, List[List[float]]]:
    """Per name, per round, the milliseconds of ``samples`` calls of that function (one count for
    every round, or a count per round) after ``warmup`` untimed ones; the functions take turns
    round by round (the order rotating each round, so none always runs first after another's
    caches), so a burst of load on a shared machine hits all of them instead of deciding their
    ratios."""
    per_round = [samples] * rounds if isinstance(samples, int) else list(samples)
    if len(per_round) != rounds:
        raise ValueError(f"{len(per_round)} sample counts for {rounds} rounds")
    names = list(fns)
    times = {name: [] for name in names}
    for r, count in enumerate(per_round):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(time_calls(fns[name], count, warmup, device))
    return times


def paired_ratios(before: Sequence[float], after: Sequence[float]) -> List[float]:
    """Round by round, ``before / after`` of two timings taken in the same alternating rounds."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} rounds against {len(after)}")
    return [b / a for b, a in zip(before, after)]


def speedup(before: dict, after: dict) -> float:
    """How many times faster ``after`` ran than ``before``: the median over rounds of the
    round's ratio, from two summaries ``compare_inference`` took in the same rounds. The two ran
    back to back in each round, so load from other processes, which comes and goes between
    rounds, moves both sides of a ratio alike; a ratio of pooled medians lets a burst that hit
    one model's round and spared the other's decide it."""
    return statistics.median(paired_ratios(before["round_medians_ms"], after["round_medians_ms"]))


def speedup_quartiles(before: dict, after: dict) -> Tuple[float, float]:
    """The lower and upper quartile of the rounds' ratios behind ``speedup``: how much the rounds
    disagreed."""
    ratios = paired_ratios(before["round_medians_ms"], after["round_medians_ms"])
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    low, _, high = statistics.quantiles(ratios, n=4)
    return low, high


@torch.inference_mode()
def _timed_passes(model: torch.nn.Module, images: torch.Tensor, samples: int, warmup: int) -> List[float]:
    with eval_mode(model):
        return time_calls(lambda: model(images), samples, warmup, images.device)


def summarize(times: List[float], batch_size: int, per_round: Optional[List[List[float]]] = None) -> dict:
    """Statistics of a model's passes; with the passes split by round, also each round's median
    (what ``speedup`` pairs)."""
    ordered = sorted(times)
    summary = {
        "batch_size": batch_size,
        "samples": len(times),
        "mean_ms": statistics.fmean(times),
        "median_ms": statistics.median(times),
        "p95_ms": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        "var_ms2": statistics.variance(times) if len(times) > 1 else 0.0,
    }
    if per_round is not None:
        summary["round_medians_ms"] = [statistics.median(r) for r in per_round]
    return summary


def time_inference(model: torch.nn.Module, images: torch.Tensor, samples: int = 100,
                   warmup: int = 10) -> dict:
    """Milliseconds per forward pass of ``images`` (one batch): mean, median, p95, variance."""
    return summarize(_timed_passes(model, images, samples, warmup), len(images))


def compare_inference(models: Dict[str, torch.nn.Module], images: torch.Tensor, samples: int = 100,
                      rounds: int = 5, warmup: int = 10) -> Dict[str, dict]:
    """Each model timed for ``samples`` passes in all, split over ``rounds`` alternating rounds
    (``alternate_calls``), in eval mode under torch.inference_mode: statistics over all of a
    model's passes, and each round's median for ``speedup``."""
    rounds = min(rounds, samples)
    per_round = [samples // rounds + (1 if i < samples % rounds else 0) for i in range(rounds)]
    with torch.inference_mode(), eval_mode(*models.values()):
        times = alternate_calls({name: partial(model, images) for name, model in models.items()},
                                rounds, per_round, warmup, images.device)
    return {name: summarize_rounds(per_round_ms, len(images)) for name, per_round_ms in times.items()}


def summarize_rounds(per_round: List[List[float]], batch_size: int) -> dict:
    """``summarize`` of the passes ``alternate_calls`` timed for one function, round by round."""
    return summarize([t for passes in per_round for t in passes], batch_size, per_round)


def inference_batch(split, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` test images (repeated if the split is smaller)."""
    images = split.first_images(batch_size)
    while len(images) < batch_size:
        images = torch.cat([images, images])
    return images[:batch_size]
