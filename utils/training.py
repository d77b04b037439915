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

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stops and nothing is saved."""


def make_optimizer(name: str, params, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name == "adam":
        # The fused kernel updates all tensors in one pass: measurably less per-step overhead
        # for the small models here, same arithmetic.
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int):
    """Stepped once per epoch. Cosine is the default: with a constant rate LeNet-300-100's test
    accuracy wanders by half a point from epoch to epoch; a decaying rate settles it."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "step":  # a tenth every third of the run
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(epochs // 3, 1), gamma=0.1)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    raise UserError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")


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
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for images, labels in BatchLoader(split, batch_size):
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    model.train(was_training)
    return {"loss": loss_sum / len(split), "acc": correct / len(split)}


def fit(model: nn.Module, train: Split, test: Split, epochs: int, batch_size: int,
        optimizer: torch.optim.Optimizer, scheduler=None, augment: bool = False,
        generator: Optional[torch.Generator] = None,
        after_step: Optional[Callable[[], None]] = None,
        on_epoch_end: Optional[Callable[[int], None]] = None,
        progress: bool = True, print_fn=print) -> List[dict]:
    """Train for ``epochs`` epochs, evaluating on ``test`` after each; one summary line each.
    ``on_epoch_end(epoch)`` runs after the epoch's training and before its evaluation, so what
    it changes (FPGM's soft pruning) is what gets measured."""
    loader = BatchLoader(train, batch_size, shuffle=True, augment=augment, generator=generator)
    history = []
    for epoch in range(1, epochs + 1):
        stats = train_one_epoch(model, loader, optimizer, epoch, after_step, progress)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if scheduler is not None:
            scheduler.step()
        stats.update({f"test_{k}": v for k, v in evaluate(model, test).items()}, epoch=epoch)
        history.append(stats)
        print_fn(f"epoch {epoch:3d}/{epochs}  loss {stats['loss']:.4f}  "
                 f"train acc {stats['train_acc']:.4f}  test acc {stats['test_acc']:.4f}  "
                 f"{stats['seconds']:.1f}s  ({stats['images_per_s']:.0f} img/s)")
    return history


def seed_everything(seed: int) -> torch.Generator:
    """Seeds torch's global generators (initialisation, dropout) and returns the CPU generator
    that orders batches and draws augmentations."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
