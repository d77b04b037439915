"""Inference timing the way it should be done: eval mode, torch.inference_mode, warm-up first,
time.perf_counter around each forward pass (synchronised on CUDA), and the spread reported."""
import statistics
import time

import torch


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_inference(model: torch.nn.Module, images: torch.Tensor, samples: int = 100,
                   warmup: int = 10) -> dict:
    """Milliseconds per forward pass of ``images`` (one batch): mean, median, p95, variance."""
    was_training = model.training
    model.eval()
    device = images.device
    for _ in range(warmup):
        model(images)
    _sync(device)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        model(images)
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    model.train(was_training)
    ordered = sorted(times)
    return {
        "batch_size": len(images),
        "samples": samples,
        "mean_ms": statistics.fmean(times),
        "median_ms": statistics.median(times),
        "p95_ms": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        "var_ms2": statistics.variance(times) if len(times) > 1 else 0.0,
    }


def inference_batch(split, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` test images (repeated if the split is smaller)."""
    images = split.images
    while len(images) < batch_size:
        images = torch.cat([images, split.images])
    return images[:batch_size]

