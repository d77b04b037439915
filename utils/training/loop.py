"""The one training loop: train_one_epoch, evaluate, fit. baseline.py and pruning.py both use it;
pruners hook in through ``after_step`` (after every optimizer step) and ``on_epoch_end``. The
same code runs in one process and under torchrun (utils.distributed): batches are each rank's
share (the data loaders shard them), figures are sums over ranks."""
import logging
import math
import time
from typing import Callable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from utils import distributed
from utils.errors import UserError
from utils.modes import eval_mode
from utils.training.acceleration import TrainingAccelerator
from utils.training.settings import TrainingSettings

log = logging.getLogger(__name__)

class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stops and nothing is saved."""


def _check_finite(loss_value: float, epoch: int, step: int):
    if not math.isfinite(loss_value):
        raise TrainingDiverged(f"the loss became {loss_value} at epoch {epoch}, step {step}; "
                               "lower --learning_rate; nothing was saved")


def _reduced(*values) -> List[float]:
    """Sums over all ranks of the given device scalars (themselves in one process)."""
    return distributed.all_reduce_sum(torch.stack([v.double() for v in values])).tolist()


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    epoch: int = 1, after_step: Optional[Callable[[], None]] = None,
                    progress: bool = True, check_every: int = 20,
                    accelerator: Optional[TrainingAccelerator] = None) -> dict:
    """One pass over ``loader`` (this rank's batches). Losses are summed on the device and read
    back every ``check_every`` steps, so a GPU is not synchronised on every step; in a
    distributed run those checks and the epoch's figures are sums over all ranks, so every rank
    sees the same loss (and stops together if it diverges). ``accelerator`` runs each step
    (channels_last, torch.compile, AMP: acceleration.py); by default a plain float32 step."""
    accelerator = accelerator if accelerator is not None else TrainingAccelerator()
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False,
               disable=None if progress and distributed.is_main() else True, unit="batch")
    totals = [0.0, 0.0, 0.0]
    for step, (images, labels) in enumerate(bar, 1):
        loss, logits = accelerator.step(model, images, labels, optimizer)
        if after_step is not None:
            after_step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        if step % check_every == 0 or step == len(loader):
            totals = _reduced(loss_sum, correct, seen)
            mean_loss = totals[0] / max(totals[2], 1)
            _check_finite(mean_loss, epoch, step)
            bar.set_postfix(loss=f"{mean_loss:.4f}",
                            img_s=f"{totals[2] / (time.perf_counter() - start):.0f}")
    seconds = time.perf_counter() - start
    loss_total, correct_total, seen_total = totals
    return {"loss": loss_total / max(seen_total, 1), "train_acc": correct_total / max(seen_total, 1),
            "seconds": seconds, "images_per_s": seen_total / seconds if seconds else 0.0}


@torch.inference_mode()
def evaluate(model: nn.Module, split, batch_size: int = 1000) -> dict:
    """Top-1 accuracy and mean loss over a whole split, in eval mode; in a distributed run each
    rank evaluates its share and the sums are reduced, so all ranks report the same figures."""
    model = unwrapped(model)
    sums = torch.zeros(3, dtype=torch.float64, device=split.device)
    with eval_mode(model):
        for images, labels in split.batches(batch_size):
            logits = model(images)
            sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
            sums[1] += (logits.argmax(1) == labels).sum()
            sums[2] += len(labels)
    loss, correct, count = distributed.all_reduce_sum(sums).tolist()
    return {"loss": loss / max(count, 1), "acc": correct / max(count, 1)}


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (torchvision's model_without_ddp)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _distributed(model: nn.Module, settings: TrainingSettings) -> nn.Module:
    """The model to train: wrapped in DistributedDataParallel when several processes train
    (rank 0's weights are broadcast to all as it wraps), with SyncBatchNorm if asked."""
    if not distributed.active():
        return model
    device = next(model.parameters()).device
    if settings.sync_bn:
        if device.type != "cuda":
            raise UserError("sync_bn needs CUDA devices: torch's SyncBatchNorm has no CPU "
                            "kernel; leave it out on the CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _plain_batchnorm(model: nn.Module) -> None:
    """SyncBatchNorm back to BatchNorm2d in place (same tensors), so what follows training
    (tracing, compaction, saving) sees the architecture it built."""
    for name, child in model.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(plain, key, getattr(child, key))
            plain.train(child.training)
            setattr(model, name, plain)
        else:
            _plain_batchnorm(child)


def fit(model: nn.Module, train, monitor, settings: TrainingSettings, *,
        epochs: Optional[int] = None, augment: bool = False,
        generator: Optional[torch.Generator] = None,
        after_step: Optional[Callable[[], None]] = None,
        on_epoch_end: Optional[Callable[[int], None]] = None, print_fn=print,
        monitor_name: str = "test", run=None, phase: str = "train") -> List[dict]:
    """Train for ``epochs`` (default: the settings') epochs with a fresh optimizer and schedule
    over the model's current parameters, evaluating on ``monitor`` (the validation split when
    there is one, named ``monitor_name``: history keys ``val_acc`` ...) after each; one summary
    line each. ``on_epoch_end(epoch)`` runs after the epoch's training and before its
    evaluation, so what it changes (FPGM's soft pruning) is what gets measured.

    ``run`` (a TrainingRun) makes this call one phase of a resumable, logged run: a phase the
    resumed run had finished is not trained again but ends in its saved state, one it stopped
    inside continues from its saved epoch (_replay). Under torchrun the model trains wrapped in
    DistributedDataParallel, wrapped anew on every call, so a model rebuilt smaller between calls
    is never seen changing under the wrapper."""
    epochs = settings.epochs if epochs is None else epochs
    index = run.begin_phase(phase) if run is not None else 0
    finished = _replay_finished(run, index, model, generator, phase, print_fn)
    if finished is not None:
        return finished
    optimizer = settings.make_optimizer(model.parameters())
    scheduler = settings.make_scheduler(optimizer, epochs)
    current = _resume_in_progress(run, index, model, generator, optimizer, scheduler, phase,
                                  print_fn)
    history = list(current["history"]) if current is not None else []
    first = current["epoch"] + 1 if current is not None else 1
    loader = train.batches(settings.batch_size, shuffle=True, augment=augment, generator=generator)
    accelerator = TrainingAccelerator.from_settings(settings, train.device, model)
    # Convert the layout before DistributedDataParallel lays out its gradient buckets (after,
    # it copies every gradient on every step); prepare() on the wrapper then only compiles it.
    accelerator.prepare(model)
    if current is not None:
        accelerator.load_state_dict(current.get("accelerator", {}))
    wrapped = _distributed(model, settings)
    trained = accelerator.prepare(wrapped) if wrapped is not model or accelerator.compile else model
    try:
        for epoch in range(first, epochs + 1):
            stats = train_one_epoch(trained, loader, optimizer, epoch, after_step,
                                    settings.progress, accelerator=accelerator)
            distributed.broadcast_buffers(model)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if scheduler is not None:
                stats["learning_rate"] = scheduler.get_last_lr()[0]
                scheduler.step()
            stats.update({f"{monitor_name}_{k}": v for k, v in evaluate(model, monitor).items()},
                         epoch=epoch)
            history.append(stats)
            print_fn(_epoch_line(stats, epochs, monitor_name))
            if run is not None:
                run.epoch_done(index, epoch, epochs, model, optimizer, scheduler, generator,
                               history, accelerator_state=accelerator.state_dict())
    finally:
        accelerator.restore(wrapped)  # contiguous again: other code views and traces the model
        if wrapped is not model:
            _plain_batchnorm(model)
    if run is not None:
        run.end_phase(index, phase, model, generator, history)
    return history


def _epoch_line(stats: dict, epochs: int, monitor_name: str) -> str:
    return (f"epoch {stats['epoch']:3d}/{epochs}  loss {stats['loss']:.4f}  "
            f"train acc {stats['train_acc']:.4f}  {monitor_name} acc "
            f"{stats[f'{monitor_name}_acc']:.4f}  "
            f"{stats['seconds']:.1f}s  ({stats['images_per_s']:.0f} img/s)")


def _replay_finished(run, index: int, model: nn.Module, generator, phase: str,
                     print_fn) -> Optional[List[dict]]:
    """A resumed run's phase that had finished: the model (and generator) put in its saved end
    state, its history returned; None when there is no such phase."""
    finished = run.finished_phase(index) if run is not None else None
    if finished is None:
        return None
    run.restore(finished, model, generator)
    run.phases.append(finished)
    print_fn(f"{phase}: finished before the interruption; continuing from its saved end")
    return list(finished["history"])


def _resume_in_progress(run, index: int, model: nn.Module, generator, optimizer, scheduler,
                        phase: str, print_fn) -> Optional[dict]:
    """A resumed run's phase that stopped inside: model, generator, optimizer and schedule put
    back as saved after its last epoch; the saved state (its ``epoch``, ``history`` and
    ``accelerator``) returned, or None when there is nothing to resume."""
    current = run.phase_in_progress(index) if run is not None else None
    if current is None:
        return None
    run.restore(current, model, generator)
    optimizer.load_state_dict(current["optimizer"])
    if scheduler is not None and current["scheduler"] is not None:
        scheduler.load_state_dict(current["scheduler"])
    print_fn(f"{phase}: resumed after epoch {current['epoch']}")
    return current


def seed_everything(seed: int) -> torch.Generator:
    """Seeds torch's global generators (initialisation, dropout) and returns the CPU generator
    that orders batches and draws augmentations."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
