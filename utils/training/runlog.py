"""Per-epoch metrics of one run, kept as a JSON-lines file next to its checkpoint and, on request,
as TensorBoard scalars.

One JSON object per epoch, appended and flushed as it is logged, so ``tail -f`` (or a plot made
half-way through) sees a run while it trains, and a run killed at epoch 40 of 90 still leaves
its 40 rows. A resumed run keeps the rows up to the epoch it resumed from and drops the rest, so
the file always describes the epochs that led to the weights in the checkpoint.

Every row has ``phase`` (``"train"``, ``"round 1"``, ``"soft"``, ``"finetune"``, ...),
``epoch`` (1-based within the phase) and ``step`` (1-based over the whole run: the x axis of
the curves and TensorBoard's global step), then numeric metrics named as ``fit`` names them
(``loss``, ``train_acc``, ``val_acc``, ``learning_rate``, ``seconds``, ...).

TensorBoard is optional: ``check_tensorboard()`` lets a script refuse ``--tensorboard`` while it
checks its flags, instead of after the first hours of training.
"""
import json
import logging
import math
import numbers
import os
from pathlib import Path
from typing import List, Optional

from utils.errors import UserError
from utils.files import PathLike, atomic_write

log = logging.getLogger(__name__)

REQUIRED = ("phase", "epoch", "step")
METRICS_SUFFIX = ".metrics.jsonl"
MISSING_TENSORBOARD = "--tensorboard needs the tensorboard package: pip install tensorboard"


def metrics_path_for(checkpoint: PathLike) -> Path:
    """Where a checkpoint's metrics live: ``run.pt`` -> ``run.metrics.jsonl``, same folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".pt") + METRICS_SUFFIX)


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "tensorboard":
            raise UserError(MISSING_TENSORBOARD) from None
        raise
    except ImportError as exc:
        # Installed but unusable (too old, or a dependency such as protobuf that does not fit).
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--tensorboard needs a working tensorboard package ({reason}): "
                        "pip install --upgrade tensorboard") from None
    return SummaryWriter


def check_tensorboard() -> None:
    """Raises the one-line UserError when TensorBoard logging cannot work; creates nothing."""
    _summary_writer_class()


def open_tensorboard(log_dir: PathLike, purge_step: Optional[int] = None):
    """A SummaryWriter writing into ``log_dir`` (created if needed). ``purge_step``: a resumed
    run's first step; TensorBoard then hides the earlier events at that step and after, which
    belong to the epochs the resumed run is about to redo."""
    return _summary_writer_class()(log_dir=str(log_dir), purge_step=purge_step)


def _plain(value, key: str):
    """A JSON value for one metric: torch/numpy scalars become Python numbers, NaN and infinity
    become None (JSON has no spelling for them and ``json`` would write invalid ``NaN``)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if hasattr(value, "item") and callable(value.item):  # torch tensors, numpy scalars/arrays
        size = getattr(value, "numel", None) or getattr(value, "size", None)
        size = size() if callable(size) else size
        if size != 1:
            raise TypeError(f"metric {key!r} is not a scalar (it has {size} elements)")
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, key) for v in value]
    raise TypeError(f"metric {key!r} has a value of type {type(value).__name__}, which a metrics "
                    "row cannot hold")


def _complete_lines(path: Path) -> List[str]:
    """The file's newline-terminated lines that parse as rows, up to the first that does not: a
    line cut short by a kill mid-write, or anything after it, is not a row to build on."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return []
    lines = []
    for line in text.split("\n")[:-1]:  # the piece after the last newline was never finished
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not isinstance(row, dict):
            break
        lines.append(line + "\n")
    return lines


class RunLog:
    """``with RunLog(path, tensorboard_dir) as run_log: run_log.log({...})`` once per epoch.

    ``keep_rows``: None starts a fresh file (any old one at ``path`` is replaced); a number k
    continues a resumed run: the existing file's first k rows are kept (rewritten atomically, so
    a crash here cannot lose them) and new rows follow them. With ``tensorboard_dir``, each
    numeric metric is also a TensorBoard scalar of the same name at ``global_step=row["step"]``,
    and the phase's name is a text entry where each phase begins.
    """

    def __init__(self, path: PathLike, tensorboard_dir: Optional[PathLike] = None,
                 keep_rows: Optional[int] = None):
        if keep_rows is not None and keep_rows < 0:
            raise ValueError(f"keep_rows must be None or at least 0, got {keep_rows}")
        self.path = Path(path)
        self.tensorboard_dir = None if tensorboard_dir is None else Path(tensorboard_dir)
        self._last_phase = None
        # Opened first: a missing tensorboard package must fail before the old log is touched.
        self._writer = (None if tensorboard_dir is None else
                        open_tensorboard(tensorboard_dir, None if keep_rows is None
                                         else keep_rows + 1))
        try:
            kept = self._kept_lines(keep_rows)
            with atomic_write(self.path, "w") as f:
                f.writelines(kept)
            if kept:
                self._last_phase = json.loads(kept[-1]).get("phase")
            self._file = open(self.path, "a", encoding="utf-8")
        except BaseException:
            if self._writer is not None:
                self._writer.close()
            raise

    def _kept_lines(self, keep_rows: Optional[int]) -> List[str]:
        if keep_rows is None or keep_rows == 0:
            return []
        if not self.path.is_file():
            log.warning("no metrics log at %s to continue; it starts again at this epoch",
                        self.path)
            return []
        kept = _complete_lines(self.path)[:keep_rows]
        if len(kept) < keep_rows:
            log.warning("%s holds only %d usable rows of the %d the resumed run reached; "
                        "continuing after them", self.path, len(kept), keep_rows)
        return kept

    def log(self, row: dict) -> dict:
        """Appends one epoch's row (flushed at once) and returns it as written."""
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            raise ValueError(f"a metrics row needs {', '.join(missing)}; got {sorted(row)}")
        if self._file is None:
            raise ValueError(f"the metrics log {self.path} is closed")
        plain = {str(key): _plain(value, str(key)) for key, value in row.items()}
        plain["phase"], plain["epoch"], plain["step"] = (str(plain["phase"]), int(plain["epoch"]),
                                                         int(plain["step"]))
        self._file.write(json.dumps(plain, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            self._write_tensorboard(plain)
        return plain

    def _write_tensorboard(self, row: dict) -> None:
        step = row["step"]
        if row["phase"] != self._last_phase:
            self._writer.add_text("phase", row["phase"], global_step=step)
        for key, value in row.items():
            if key not in REQUIRED and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, global_step=step)
        # Epochs are minutes apart: flushing each keeps a live TensorBoard current at no cost.
        self._writer.flush()
        self._last_phase = row["phase"]

    def move_to(self, new_path: PathLike) -> Path:
        """Renames the log (os.replace, so a stale file of that name is replaced) and goes on
        appending there; a run learns its checkpoint's final name only when it saves it."""
        new_path = Path(new_path)
        reopen = self._file is not None
        if reopen:
            self._file.close()  # Windows cannot rename an open file
            self._file = None
        os.replace(self.path, new_path)
        self.path = new_path
        if reopen:
            self._file = open(self.path, "a", encoding="utf-8")
        return new_path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_rows(path: PathLike) -> List[dict]:
    """Every row of a metrics file, in order; a missing file, or a line that is not a row
    (damaged, cut short, hand-edited), is a UserError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a metrics file" if path.is_dir() else "does not exist"
        raise UserError(f"{path} {what}; give a .jsonl metrics file written by a training run")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UserError(f"{path}, line {number}: not a JSON metrics row ({exc.msg}); "
                                "the file is damaged") from None
            if not isinstance(row, dict) or any(key not in row for key in REQUIRED):
                raise UserError(f"{path}, line {number}: not a metrics row (a JSON object with "
                                f"{', '.join(REQUIRED)} is expected)")
            if not isinstance(row["step"], int) or isinstance(row["step"], bool):
                raise UserError(f"{path}, line {number}: step must be an integer, "
                                f"got {row['step']!r}")
            rows.append(row)
    return rows
