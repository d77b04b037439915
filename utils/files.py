"""Files written so that nothing is ever half-written, and output folders checked before any work.

``atomic_write`` is the one way the toolkit writes a file: a temporary file in the destination
folder, flushed and fsynced, then moved into place with os.replace, so an interrupted write never
leaves a truncated file under the final name. The result has the usual umask permissions
(tempfile.mkstemp would make it private, 0600).
"""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Union

from utils.errors import UserError

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f: ...``: ``path`` appears whole when the block ends, or not
    at all (the temporary file is removed on any error, Ctrl-C included)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes new files ('wb' or 'w'), not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def check_writable_dir(path: PathLike, flag: str) -> Path:
    """``path`` is a folder this process can write into, or one it can create: checked before a
    run starts, so a bad --checkpoint_dir is not found after hours of training."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{flag}={path} is a file, not a folder; give a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{flag}={path} is not writable; give a folder you can write to")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag}={path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag}={path} cannot be created: {parent} is not writable")
    return path


def unused_path(path: PathLike) -> Path:
    """``path`` itself if nothing is there, else the same name with _2, _3, ... before the suffix:
    a new checkpoint never silently replaces another."""
    path = Path(path)
    candidate, number = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
        number += 1
    return candidate
