"""The one training loop: train_one_epoch, evaluate, fit. baseline.py and pruning.py both use it;
pruners hook in through ``after_step`` (after every optimizer step) and ``on_epoch_end``."""
import logging
import math
import time
from typing import Callable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from utils.data import BatchLoader, Split
from utils.errors import UserError
from utils.modes import eval_mode
from utils.training.settings import TrainingSettings

log = logging.getLogger(__name__)

class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stops and nothing is saved."""


def _check_finite(loss_value: float, epoch: int, step: int):
    if not math.isfinite(loss_value):
        raise TrainingDiverged(f"the loss became {loss_value} at epoch {epoch}, step {step}; "
                               "lower --learning_rate; nothing was saved")


def train_one_epoch(model: nn.Module, loader: BatchLoader, optimizer: torch.optim.Optimizer,
                    epoch: int = 1, after_step: Optional[Callable[[], None]] = None,
                    progress: bool = True, check_every: int = 20) -> dict:
    """One pass over ``loader``. Losses are summed on the device and read back every
    ``check_every`` steps, so a GPU is not synchronised on every step."""
    model.train()
    loss_sum = torch.zeros((), device=loader.split.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=loss_sum.device)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if progress else True, unit="batch")
    for step, (images, labels) in enumerate(bar, 1):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        if step % check_every == 0 or step == len(loader):
            mean_loss = loss_sum.item() / seen
            _check_finite(mean_loss, epoch, step)
            bar.set_postfix(loss=f"{mean_loss:.4f}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
    seconds = time.perf_counter() - start
    return {"loss": loss_sum.item() / max(seen, 1), "train_acc": correct.item() / max(seen, 1),
            "seconds": seconds, "images_per_s": seen / seconds if seconds else 0.0}


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> dict:
    """Top-1 accuracy and mean loss over a whole split, in eval mode."""
    loss_sum, correct = 0.0, 0
    with eval_mode(model):
        for images, labels in BatchLoader(split, batch_size):
            logits = model(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
    return {"loss": loss_sum / len(split), "acc": correct / len(split)}


def fit(model: nn.Module, train: Split, monitor: Split, settings: TrainingSettings, *,
        epochs: Optional[int] = None, augment: bool = False,
        generator: Optional[torch.Generator] = None,
        optimizer: Optional[torch.optim.Optimizer] = None, scheduler=None,
        after_step: Optional[Callable[[], None]] = None,
        on_epoch_end: Optional[Callable[[int], None]] = None, print_fn=print,
        monitor_name: str = "test") -> List[dict]:
    """Train for ``epochs`` (default: the settings') epochs, evaluating on ``monitor`` (the
    validation split when there is one, named ``monitor_name``: history keys ``val_acc`` ...)
    after each; one summary line each. The optimizer and schedule are built from ``settings`` over the
    model's current parameters unless given. ``on_epoch_end(epoch)`` runs after the epoch's
    training and before its evaluation, so what it changes (FPGM's soft pruning) is what gets
    measured."""
    epochs = settings.epochs if epochs is None else epochs
    if optimizer is None:
        optimizer = settings.make_optimizer(model.parameters())
        scheduler = settings.make_scheduler(optimizer, epochs) if scheduler is None else scheduler
    loader = BatchLoader(train, settings.batch_size, shuffle=True, augment=augment,
                         generator=generator)
    history = []
    for epoch in range(1, epochs + 1):
        stats = train_one_epoch(model, loader, optimizer, epoch, after_step, settings.progress)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if scheduler is not None:
            stats["learning_rate"] = scheduler.get_last_lr()[0]
            scheduler.step()
        stats.update({f"{monitor_name}_{k}": v for k, v in evaluate(model, monitor).items()},
                     epoch=epoch)
        history.append(stats)
        print_fn(f"epoch {epoch:3d}/{epochs}  loss {stats['loss']:.4f}  "
                 f"train acc {stats['train_acc']:.4f}  {monitor_name} acc "
                 f"{stats[f'{monitor_name}_acc']:.4f}  "
                 f"{stats['seconds']:.1f}s  ({stats['images_per_s']:.0f} img/s)")
    return history


def seed_everything(seed: int) -> torch.Generator:
    """Seeds torch's global generators (initialisation, dropout) and returns the CPU generator
    that orders batches and draws augmentations."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
