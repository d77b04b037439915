"""Training beyond one process: torchrun's environment, the process group, and the few
collective operations the scripts need.

Launched by ``torchrun --nproc_per_node=N script.py ...`` a script finds RANK, WORLD_SIZE and
LOCAL_RANK in its environment (as torchvision's references/classification read them) and joins a
process group: NCCL when it trains on CUDA, gloo on the CPU. Launched plainly, everything here is
a no-op for one process, so the scripts call it unconditionally.

Every rank runs the whole script on identical flags; what must agree across ranks (weights,
pruning selections, metrics) is either computed identically from synchronised weights or reduced
here, and only rank 0 writes files (``on_main``).
"""
import contextlib
import hashlib
import os
import sys
from datetime import timedelta
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from utils.errors import UserError

T = TypeVar("T")

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """Whether torchrun (or an equivalent launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


# True while rank 0 works alone inside on_main: it is then a one-process run (no collectives).
_solo = False


def active() -> bool:
    return not _solo and dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (auto, cpu, cuda or cuda:N) means on this machine; auto takes CUDA
    when torch sees it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but torch sees no CUDA device; use cpu")
    return torch.device(name)


def start(device: str, timeout_minutes: int = 30) -> torch.device:
    """Joins the process group when launched by torchrun and returns this rank's device
    (``cuda:LOCAL_RANK`` on GPUs); for one process, just the device ``device`` names (resolve_device). Output
    of ranks other than 0 is silenced (their errors still reach stderr, prefixed), so a run
    prints one report however many processes it has."""
    device = resolve_device(device)
    if not launched():
        return device
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with "
                        "torchrun --nproc_per_node=N, which sets all three")
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run in one process")
    if device.type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} "
                            "CUDA devices: give torchrun --nproc_per_node at most that many")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not active():
        # gloo is torch.distributed's CPU backend; NCCL is the fast one between GPUs.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=timeout_minutes))
    if not is_main():
        sys.stdout = open(os.devnull, "w")
    return device


def stop() -> None:
    if active():
        dist.destroy_process_group()


def error_prefix() -> str:
    """'[rank 2] ' on ranks other than 0, so an error seen on one rank only says where."""
    return f"[rank {rank()}] " if active() and not is_main() else ""


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over all ranks, the same tensor on every rank (in place)."""
    if active():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def on_main(work: Callable[[], T]) -> T:
    """Runs ``work`` on rank 0 only (writing a file, timing a model, compressing) and gives its
    result to every rank; inside it rank 0 is a one-process run. The other ranks wait (up to
    the process group's timeout, 30 minutes). A UserError there becomes the same UserError on every rank, so no rank waits
    forever for a rank that gave up."""
    global _solo
    if not active():
        return work()
    result, error = None, None
    if is_main():
        _solo = True  # whatever ``work`` trains or evaluates, it does as one process
        try:
            result = work()
        except UserError as exc:
            error = str(exc)
        finally:
            _solo = False
    result, error = broadcast_object((result, error))
    if error is not None:
        raise UserError(error)
    return result


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank. DistributedDataParallel
    broadcasts them before each forward, so after the last step of an epoch each rank holds
    statistics of its own batch; evaluation and the saved model must see one set."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the state_dict, in order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_same_weights(model: torch.nn.Module) -> Optional[str]:
    """Evidence, on every distributed run, that the ranks end with one model: the digests of
    all ranks' weights must agree. Returns the digest (None in one process)."""
    if not active():
        return None
    mine = weights_digest(model)
    digests = [None] * world_size()
    dist.all_gather_object(digests, mine)
    if len(set(digests)) != 1:
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(f"ranks {differing} ended with weights different from rank 0's: the "
                           "distributed run went out of step (a bug, please report it)")
    return mine


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the body first (e.g. preparing dataset files), the others after it."""
    if active() and not is_main():
        dist.barrier()
    yield
    if active() and is_main():
        dist.barrier()
