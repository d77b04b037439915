"""One script run across its fit() calls: the per-epoch metrics log, and the resumable state
that --save_every writes and --resume continues from.

A run is a sequence of phases, one per fit() call (baseline: "train"; songhan: one per round;
FPGM: "soft", then "finetune" of the compact model). The state file holds, for every finished
phase, the model, RNG states and history it ended with, and for the phase under way the same
plus the optimizer, the schedule and the epoch. Resuming re-runs the script from the start with
the same flags: a finished phase is not trained again but ends in its saved state (so whatever
the pruner does between phases, selecting, pruning, compacting, sees exactly the weights it saw
the first time); the phase under way continues from its saved epoch. Same seed, same device:
the resumed run ends with exactly the weights of an uninterrupted one.

What a pruner changes inside a phase besides the weights (FPGM's current selection) is tracked
with ``track``, saved and restored with the phase.
"""
import atexit
import contextlib
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from utils import distributed
from utils.errors import UserError
from utils.files import atomic_write
from utils.training.runlog import metrics_path_for

STATE_FORMAT = "pruning-toolkit-resumable-run"
STATE_VERSION = 1


def rng_state(generator: Optional[torch.Generator]) -> dict:
    state = {"torch": torch.get_rng_state()}
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: Optional[torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _optimizer_state_to_cpu(state):
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _optimizer_state_to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_optimizer_state_to_cpu(v) for v in state)
    return state


def load_state(path) -> dict:
    """A resumable state written by --save_every; anything else is one UserError line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--resume={path}: no such file (--save_every writes "
                        "<checkpoint_dir>/<run>.resume.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, refused content: all unusable
        raise UserError(f"--resume={path} is not a readable resumable state "
                        f"({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"--resume={path} is not a resumable state written by --save_every "
                        "(a finished checkpoint is continued with --load_folder_model instead)")
    if state.get("version") != STATE_VERSION:
        raise UserError(f"--resume={path} has format version {state.get('version')}; this "
                        f"toolkit reads version {STATE_VERSION}")
    problem = _state_problem(state)
    if problem:
        raise UserError(f"--resume={path} does not hold together ({problem}); it cannot be "
                        "continued: rerun without --resume")
    return state


def _rng_problem(rng, where: str) -> Optional[str]:
    """Why a saved set of generator states cannot be restored (tried on scratch generators,
    so nothing of this process changes), or None."""
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
        return f"{where} has no random generator state"
    for key in ("torch", "generator"):
        if key in rng:
            try:
                torch.Generator().set_state(rng[key])
            except (RuntimeError, TypeError) as exc:
                return f"{where}'s {key} generator state is damaged ({str(exc).splitlines()[0]})"
    return None


def _snapshot_problem(saved, where: str) -> Optional[str]:
    """What is missing or inconsistent in one phase's saved state, or None."""
    if not isinstance(saved, dict):
        return f"{where} is not a table"
    for key, kind in (("phase", int), ("model", dict), ("history", list), ("step", int),
                      ("tracked", dict)):
        if not isinstance(saved.get(key), kind):
            return f"{where} lacks its {key}"
    if not all(isinstance(v, torch.Tensor) for v in saved["model"].values()):
        return f"{where}'s model holds something other than tensors"
    return _rng_problem(saved.get("rng"), where)


def _state_problem(state: dict) -> Optional[str]:
    """Checks of a resumable state by itself, before any of it is applied; how it fits the run's
    model is checked when a phase is restored (TrainingRun.restore)."""
    phases, current = state.get("phases"), state.get("current")
    if not isinstance(phases, list) or not isinstance(state.get("args"), list):
        return "no list of finished phases or flags"
    for i, phase in enumerate(phases, 1):
        problem = _snapshot_problem(phase, f"finished phase {i}")
        if problem:
            return problem
        if phase["phase"] != i:
            return f"finished phase {i} is numbered {phase['phase']}"
    if current is None:
        return None
    problem = _snapshot_problem(current, "the phase under way")
    if problem:
        return problem
    epoch, epochs = current.get("epoch"), current.get("epochs")
    if current["phase"] != len(phases) + 1:
        return f"the phase under way is numbered {current['phase']} after {len(phases)} finished"
    if not isinstance(epoch, int) or epoch < 1:
        return f"the phase under way has no epoch count ({epoch!r})"
    # Each epoch appends one history row: a counter that disagrees with them was not written by
    # the run (and would name a checkpoint for epochs that never ran).
    if epoch != len(current["history"]):
        return (f"the phase under way says epoch {epoch} but holds {len(current['history'])} "
                "epochs' figures")
    if isinstance(epochs, int) and epoch > epochs:
        return f"the phase under way is at epoch {epoch} of {epochs}"
    if not isinstance(current.get("optimizer"), dict):
        return "the phase under way lacks its optimizer state"
    return None


# Runs opened and not finished yet. A run that ends any other way (an error, Ctrl-C) leaves
# nothing it started on disk unless it can be resumed: at exit its metrics file goes, except
# where a resumable state (which continues that file) was written.
# Only what the cleanup needs is held (the log and the state's path), not the run and its model.
_UNFINISHED: Dict[int, tuple] = {}
_KEYS = itertools.count()


def discard_unfinished_runs() -> List[Path]:
    """Remove the metrics files of runs that never finished and cannot be resumed (no
    resumable state on disk); returns what was removed. Runs at interpreter exit."""
    removed = []
    for key in list(_UNFINISHED):
        removed += _abandon(*_UNFINISHED.pop(key))
    return removed


def _abandon(log, state_path: Optional[Path]) -> List[Path]:
    log.close()
    if state_path is not None and Path(state_path).is_file():
        return []  # a resumed run continues this metrics file
    with contextlib.suppress(FileNotFoundError):
        os.remove(log.path)
        return [Path(log.path)]
    return []


atexit.register(discard_unfinished_runs)


@dataclass
class _Tracked:
    get: Callable[[], Any]
    set: Callable[[Any], None]


@dataclass
class TrainingRun:
    """``state_path``: where the resumable state goes (rank 0 writes it) every ``save_every``
    epochs (0: never). ``resumed``: a loaded state to continue. ``log``: a RunLog for the
    per-epoch rows. ``script`` and ``args`` identify the run in the state."""
    script: str
    args: List[str]
    state_path: Optional[Path] = None
    save_every: int = 0
    resumed: Optional[dict] = None
    log: Any = None
    stem: str = "run"
    phases: List[dict] = field(default_factory=list)  # finished phases' end states
    started: float = field(default_factory=time.perf_counter)
    _tracked: Dict[str, _Tracked] = field(default_factory=dict)
    _phase: int = 0
    _step: int = 0

    def __post_init__(self):
        if self.log is not None:  # rank 0's run, which writes the metrics file
            self._key = next(_KEYS)  # not id(self): ids are reused once a run is collected
            _UNFINISHED[self._key] = (self.log, self.state_path)

    def abandon(self) -> List[Path]:
        """The run failed: its metrics file is removed unless a resumable state on disk
        continues it. Returns the removed paths."""
        entry = _UNFINISHED.pop(getattr(self, "_key", None), None)
        return _abandon(*entry) if entry else []

    # -- what pruners and fit() call -------------------------------------------------------

    def track(self, name: str, get: Callable[[], Any], set: Callable[[Any], None]) -> None:
        """State besides the weights that a phase changes (plain data and tensors)."""
        self._tracked[name] = _Tracked(get, set)

    def resumed_value(self, name: str) -> Any:
        """What tracked state ``name`` held when the resumed run last saved (None if nothing)."""
        current = (self.resumed or {}).get("current") or {}
        return current.get("tracked", {}).get(name)

    def begin_phase(self, name: str) -> int:
        self._phase += 1
        self.phase_name = name
        return self._phase

    def finished_phase(self, index: int) -> Optional[dict]:
        """The saved end of phase ``index`` when the resumed run had finished it."""
        if self.resumed and index <= len(self.resumed["phases"]):
            return self.resumed["phases"][index - 1]
        return None

    def phase_in_progress(self, index: int) -> Optional[dict]:
        """The saved epoch state of phase ``index`` when the resumed run stopped inside it."""
        current = (self.resumed or {}).get("current")
        if current and current["phase"] == index:
            return current
        return None

    def restore(self, saved: dict, model: nn.Module, generator: Optional[torch.Generator]) -> None:
        """Model, RNG and tracked state as ``saved`` has them (a phase's end or an epoch). A
        state that does not fit this run's model (other tensor shapes, an optimizer over other
        parameters) is one UserError, before anything is changed."""
        self._check_fits(saved, model)
        model.load_state_dict(saved["model"])
        set_rng_state(saved["rng"], generator)
        for name, value in saved["tracked"].items():
            if name in self._tracked:
                self._tracked[name].set(value)
        self._step = saved["step"]

    def _check_fits(self, saved: dict, model: nn.Module) -> None:
        where = f"--resume={self.state_path}"
        expected = model.state_dict()
        missing = sorted(set(expected) ^ set(saved["model"]))
        wrong = [f"{k} {tuple(saved['model'][k].shape)} (the model's: {tuple(v.shape)})"
                 for k, v in expected.items() if k in saved["model"]
                 and saved["model"][k].shape != v.shape]
        if missing or wrong:
            detail = (f"tensors {', '.join(missing[:3])} are not in both" if missing
                      else f"shapes differ: {', '.join(wrong[:3])}")
            raise UserError(f"{where} does not fit this run's model, phase {saved['phase']} "
                            f"({detail}); rerun without --resume")
        if "optimizer" in saved:
            # fit() builds the optimizer over model.parameters(), in order: the saved moments
            # must be shaped like those parameters, or the first step fails deep in torch.
            params = list(model.parameters())
            groups = saved["optimizer"].get("param_groups")
            indices = [i for g in groups for i in g.get("params", [])] if isinstance(groups, list) else None
            if indices is None or len(indices) != len(params):
                raise UserError(f"{where}: its optimizer state is not over this run's "
                                f"{len(params)} parameters; rerun without --resume")
            for index, values in (saved["optimizer"].get("state") or {}).items():
                position = indices.index(index) if index in indices else None
                for name, value in (values.items() if isinstance(values, dict) else ()):
                    if (position is None or isinstance(value, torch.Tensor) and value.dim() > 0
                            and value.shape != params[position].shape):
                        raise UserError(f"{where}: its optimizer's {name} for parameter {index} "
                                        "does not fit this run's model; rerun without --resume")

    def end_phase(self, index: int, name: str, model: nn.Module,
                  generator: Optional[torch.Generator], history: list) -> None:
        if self.save_every and distributed.is_main():  # only rank 0 writes the state
            self.phases.append(self._snapshot(index, name, model, generator, history))

    def epoch_done(self, index: int, epoch: int, epochs: int, model: nn.Module, optimizer,
                   scheduler, generator: Optional[torch.Generator], history: list,
                   accelerator_state: Optional[dict] = None) -> None:
        """Logs the epoch's row; every ``save_every`` epochs (and at a phase's last epoch, so a
        run killed between phases resumes after the one it finished) writes the state.
        ``accelerator_state``: TrainingAccelerator.state_dict() (fp16's loss scale, which grows
        and shrinks with the run)."""
        self._step += 1
        if self.log is not None and distributed.is_main():
            self.log.log({"phase": self.phase_name, "epoch": epoch, "step": self._step,
                          **{k: v for k, v in history[-1].items() if k != "epoch"}})
        if self.save_every and distributed.is_main() and (epoch % self.save_every == 0
                                                          or epoch == epochs):
            current = self._snapshot(index, self.phase_name, model, generator, history)
            current.update(epoch=epoch, epochs=epochs,
                           optimizer=_optimizer_state_to_cpu(optimizer.state_dict()),
                           scheduler=scheduler.state_dict() if scheduler is not None else None,
                           accelerator=accelerator_state or {})
            self._save(current)

    @property
    def step(self) -> int:
        return self._step

    @property
    def log_rows(self) -> int:
        return self._step

    def elapsed(self) -> float:
        """Seconds this run has trained, the interrupted part of a resumed run included."""
        return time.perf_counter() - self.started + (self.resumed or {}).get("elapsed", 0.0)

    def finish(self, checkpoint: Optional[Path]) -> Optional[Path]:
        """The run ended and its checkpoint is saved: the metrics file moves next to it (same
        name, .metrics.jsonl) and the resumable state, having served, goes. Returns the
        metrics file's path (rank 0)."""
        _UNFINISHED.pop(getattr(self, "_key", None), None)
        if not distributed.is_main():
            return None
        if self.state_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.state_path)
        if self.log is None:
            return None
        self.log.close()
        if checkpoint is None:
            return None
        return self.log.move_to(metrics_path_for(checkpoint))

    # -- inside ------------------------------------------------------------------------------

    def _snapshot(self, index: int, name: str, model: nn.Module,
                  generator: Optional[torch.Generator], history: list) -> dict:
        return {"phase": index, "name": name, "model": _cpu_state(model),
                "rng": rng_state(generator), "history": list(history), "step": self._step,
                "tracked": {n: t.get() for n, t in self._tracked.items()}}

    def _save(self, current: dict) -> None:
        if not distributed.is_main():
            return
        state = {"format": STATE_FORMAT, "version": STATE_VERSION, "script": self.script,
                 "args": self.args, "stem": self.stem, "phases": self.phases, "current": current,
                 "elapsed": self.elapsed(), "log_rows": self._step}
        with atomic_write(self.state_path) as handle:
            torch.save(state, handle)
        print(f"saved resumable state (phase {current['phase']} {current['name']}, epoch "
              f"{current['epoch']}) to {self.state_path}")
