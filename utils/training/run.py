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
import contextlib
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
    return state


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
        """Model, RNG and tracked state as ``saved`` has them (a phase's end or an epoch)."""
        model.load_state_dict(saved["model"])
        set_rng_state(saved["rng"], generator)
        for name, value in saved["tracked"].items():
            if name in self._tracked:
                self._tracked[name].set(value)
        self._step = saved["step"]

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
            current.update(epoch=epoch,
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
        return self.log.move_to(Path(checkpoint).with_suffix(".metrics.jsonl"))

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
