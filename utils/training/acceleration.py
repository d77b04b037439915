"""Faster training steps: channels_last memory format, torch.compile, and mixed precision (AMP)
on CUDA. One object, TrainingAccelerator, holds the choices; the training loop asks it to
``prepare`` the model before the first step, runs every step through ``step``, and calls
``restore`` when training ends, so the training-time memory format never leaks out of fit (other
code calls ``.view`` on weights and fx-traces the plain model).

Defaults come from benchmarks/train_speed.py on this project's shared 2-core AMD EPYC CPU (AVX2,
no AVX-512), torch 2.14, Adam, batch 128 (alexnet 32, vgg16_bn 16), medians of alternating
rounds; no GPU was available to measure:

- channels_last: "auto" turns it on on the CPU for the models measured faster with it
  (CPU_CHANNELS_LAST_SPEEDUP: 1.13-1.46x for lenet_5_caffe, lenet_5, resnet20, resnet56,
  alexnet), off for vgg16_bn (0.88x) and every model not measured, and off on CUDA (not
  measured). Losses, gradients and BatchNorm statistics match the default layout to float
  rounding (tests/test_acceleration.py); lenet_5_caffe's accuracy after 2 MNIST epochs differed
  by -0.0002 on average over 3 seeds, whose own spread was 0.0023
  (benchmarks/accel_accuracy.py).
- compile: off unless asked for. Steady steps ran 0.43x (lenet_5) to 1.35x (resnet20) the
  default's speed, and the first step compiled for 17-90 s (cold caches); it compiles again for
  each new batch shape (an epoch's last, partial batch) and for each new model (FPGM's compact
  one), so runs of a few epochs do not win it back.
- amp: off unless asked for, and CUDA only. bf16 autocast on this CPU made training steps 2-20x
  slower (0.05-0.44x: no native bf16 arithmetic), so --amp on a CPU is a user error rather than
  a silent slowdown.
"""
import argparse
import os
import shutil
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

from utils.cli import in_flag_words, str2bool
from utils.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Training-step speed-up of channels_last over the default layout on the CPU, by model: the
# median over 2-4 runs of benchmarks/train_speed.py (2-core AMD EPYC, AVX2, torch 2.14, Adam;
# batch 128, alexnet 32, vgg16_bn 16; 1 and 2 threads; resnet20 on 3x32x32, 1.22x on 1x28x28).
# --channels_last=auto turns it on where it is at least PAYS; rerun the benchmark and update
# these on other hardware.
CPU_CHANNELS_LAST_SPEEDUP = {
    "lenet_5_caffe": 1.46, "lenet_5": 1.19, "resnet20": 1.16, "resnet56": 1.16, "alexnet": 1.13,
    "vgg16_bn": 0.88,
}
PAYS = 1.05

# Help texts carry the measurements behind each default (benchmarks/train_speed.py).
CHANNELS_LAST_HELP = (
    "train in the channels_last memory format (True|False|auto; --channels_last alone means "
    "True). auto: used on the CPU for the models whose training steps "
    f"benchmarks/train_speed.py measured at least {PAYS}x faster that way on this project's "
    "2-core CPU ("
    + ", ".join(f"{name} {x:.2f}x" for name, x in CPU_CHANNELS_LAST_SPEEDUP.items())
    + "); off for other models, and on CUDA (not measured)")
COMPILE_HELP = (
    "train through torch.compile (True|False; --compile alone means True). Measured on the "
    "2-core CPU (benchmarks/train_speed.py): steps 1.1-1.35x faster for the ResNets but slower "
    "for lenet_5 (0.43x) and vgg16_bn, and the first step compiles for 17-90 s, again for each "
    "new batch shape and after FPGM builds the compact model: only long runs win it back")
AMP_HELP = ("mixed-precision training on CUDA: bf16 autocast, or fp16 autocast with a gradient "
            "scaler. Refused on the CPU: bf16 autocast made training steps 2-20x slower there")


def _unwrap(model: nn.Module) -> nn.Module:
    """The model under a DistributedDataParallel (or DataParallel) wrapper, else the model."""
    return getattr(model, "module", model) if isinstance(
        model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def has_conv_weights(model: nn.Module) -> bool:
    """Whether any parameter is 4-D (a 2-D convolution's filters): the only tensors
    channels_last changes, so a model without them has nothing to gain."""
    return any(p.dim() == 4 for p in _unwrap(model).parameters())


def compile_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why torch.compile cannot train on ``device`` here, or None when it can. Checked before
    training so a missing compiler is one line, not a traceback from the first step."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (it needs torch 2.0 or later)"
    from torch._dynamo import is_dynamo_supported
    if not is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        if not has_triton():
            return "torch.compile on CUDA needs Triton (pip install triton)"
        return None
    # Inductor's CPU backend writes C++ and builds it with the system compiler.
    try:
        from torch._inductor import cpp_builder
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:  # inductor's internals moved: look for its default compiler ourselves
        found = shutil.which(os.environ.get("CXX", "g++"))
    else:
        try:
            found = cpp_builder.get_cpp_compiler()
        except InvalidCxxCompiler:
            found = None
    if not found:
        return ("torch.compile on the CPU needs a C++ compiler and none was found (install g++, "
                "or name one in the CXX environment variable)")
    return None


def _refresh_pruned(model: nn.Module) -> None:
    """Recompute every torch.nn.utils.prune tensor (``weight = weight_orig * weight_mask``) from
    its parameter and mask, as prune itself does when it applies a mask. The pruned tensor is a
    plain attribute that only the forward pre-hook updates: after a change of memory format it
    would keep the old layout until the next forward, and code that reads ``module.weight``
    between (``.view`` on a weight) would see the training-time layout."""
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))


def check_acceleration(compile: bool, amp: Optional[str], device: torch.device,
                       compile_backend: str = "inductor") -> None:
    """The errors a user can cause with compile and amp (--compile, --amp), raised as soon as the device is
    known (scripts call this before loading data; TrainingAccelerator again at construction)."""
    if amp is not None and amp not in AMP_DTYPES:
        raise UserError(f"amp must be one of {', '.join(AMP_DTYPES)} or off, got {amp!r}")
    if amp is not None and device.type != "cuda":
        raise UserError(f"amp={amp!r} needs a CUDA device (the device is {device.type}); on "
                        "a CPU bf16 autocast made training 2-20x slower here: train without it")
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("amp='bf16' needs a GPU with bfloat16 support (Ampere or later); "
                        "use amp='fp16'")
    if compile and compile_backend == "inductor":
        reason = compile_unavailable_reason(device)
        if reason is not None:
            raise UserError(f"compile: {reason}; or train without compiling")


class TrainingAccelerator:
    """channels_last, torch.compile and AMP for the training loop: ``prepare`` once before
    training, ``step`` for each batch, ``restore`` when training ends (also on an exception).

    All three are off by default, so ``TrainingAccelerator()`` trains exactly as the plain loop
    does. Errors a user can cause (AMP without CUDA, torch.compile without a compiler) are raised
    here, at construction, before any training."""

    def __init__(self, channels_last: bool = False, compile: bool = False,
                 amp: Optional[str] = None, device: Optional[torch.device] = None,
                 compile_backend: str = "inductor"):
        """``compile_backend``: torch.compile's backend. Inductor (the default) generates and
        builds kernels; "eager" only traces with dynamo and runs the captured graph as it is,
        which tests use to check tracing (hooks, masks, layouts) without a C++ compile."""
        device = torch.device("cpu" if device is None else device)
        check_acceleration(compile, amp, device, compile_backend)
        self.channels_last = bool(channels_last)
        self.compile = bool(compile)
        self.compile_backend = compile_backend
        self.amp = amp
        self.device = device
        # fp16's narrow exponent underflows small gradients; the scaler multiplies the loss
        # before backward and unscales (skipping steps with inf/NaN) before the optimizer.
        # bf16 has float32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        self._converted = False
        # Only a compiler failure becomes a one-line error; an empty tuple catches nothing.
        self._compile_errors: tuple = ()
        if self.compile:
            from torch._dynamo.exc import BackendCompilerFailed
            self._compile_errors = (BackendCompilerFailed,)

    @classmethod
    def from_settings(cls, settings, device: torch.device,
                      model: Optional[nn.Module] = None) -> "TrainingAccelerator":
        """From TrainingSettings' ``channels_last`` (None: auto), ``compile`` and ``amp``;
        auto is resolved for ``model`` on ``device`` (without a model, auto means off)."""
        channels_last = settings.channels_last
        if channels_last is None:
            channels_last = model is not None and auto_channels_last(model, device)
        return cls(channels_last, settings.compile, settings.amp, device)

    def __repr__(self):
        return (f"TrainingAccelerator(channels_last={self.channels_last}, "
                f"compile={self.compile}, amp={self.amp!r}, device={self.device})")

    @property
    def enabled(self) -> bool:
        return self.channels_last or self.compile or self.amp is not None

    def describe(self) -> str:
        """A short label for logs: 'channels_last, compile, amp bf16' or 'off'."""
        parts = (["channels_last"] if self.channels_last else []) + \
                (["compile"] if self.compile else []) + \
                ([f"amp {self.amp}"] if self.amp else [])
        return ", ".join(parts) or "off"

    def prepare(self, model: nn.Module) -> nn.Module:
        """Converts ``model`` (a DistributedDataParallel wrapper's ``.module``) to channels_last
        in place when that is on and it has 4-D conv weights; returns what to train with: the
        model itself, or torch.compile's wrapper around it (it shares the parameters, so an
        optimizer over ``model.parameters()`` steps the compiled model, before or after this).

        Parameters keep their identity (``Module.to`` swaps ``.data``), so an optimizer built
        earlier still holds them; BatchNorm's running statistics are 1-D and stay as they are;
        torch.nn.utils.prune masks convert with their ``weight_orig`` (a 4-D parameter and a
        4-D buffer), so ``weight_orig * weight_mask`` stays exact. Under DistributedDataParallel
        prefer converting before wrapping (``prepare`` on the plain model, then wrap, then
        ``prepare`` the wrapper for compile): DDP lays out its gradient buckets from the
        parameters' strides when it is built, and a later change only costs copies."""
        inner = _unwrap(model)
        if self.channels_last and has_conv_weights(inner):
            inner.to(memory_format=torch.channels_last)
            _refresh_pruned(inner)
            self._converted = True
        if self.compile:
            # dynamic=False: a run has at most two batch shapes (full batches and the epoch's
            # last, partial one), so each gets kernels specialised to it, as the benchmark
            # measured; by default the second shape would instead compile a shape-generic
            # graph that later full batches may run too.
            return torch.compile(model, backend=self.compile_backend, dynamic=False)
        return model

    def restore(self, model: nn.Module) -> nn.Module:
        """Back to the contiguous layout (parameters, gradients, buffers, pruned tensors) after
        training; returns ``model``. Pass the plain model or the DDP wrapper, not the compiled
        wrapper (which holds the same parameters: restoring the model restores it too)."""
        if self._converted:
            inner = _unwrap(getattr(model, "_orig_mod", model))
            inner.to(memory_format=torch.contiguous_format)
            _refresh_pruned(inner)
            self._converted = False
        return model

    def autocast(self):
        """The autocast context of a forward pass (a disabled one when AMP is off)."""
        dtype = AMP_DTYPES.get(self.amp, torch.float32)
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp is not None)

    def step(self, train_model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> Tuple[torch.Tensor, torch.Tensor]:
        """One training step on a batch: zero the gradients, forward (under autocast with AMP),
        cross-entropy, backward, optimizer step (through the gradient scaler with fp16).
        Returns (loss, logits), attached to the graph; detach before accumulating."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        try:  # the first forward compiles the forward graph, the first backward the backward's
            with self.autocast():
                logits = train_model(images)
                loss = F.cross_entropy(logits, labels)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        except self._compile_errors as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"torch.compile failed ({first}); train without --compile") from exc
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        return loss, logits

    def state_dict(self) -> dict:
        """The gradient scaler's state (fp16), for a resumable checkpoint; empty otherwise."""
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def auto_channels_last(model: nn.Module, device: torch.device) -> bool:
    """What ``--channels_last=auto`` means: on the CPU, on for the models whose training steps
    benchmarks/train_speed.py measured at least ``PAYS`` times faster in channels_last; off for
    every other model and device (not measured, or measured slower), and off for a model under
    torch.nn.utils.prune masks: songhan's masked retraining of lenet_5_caffe ran several times
    slower in channels_last here (the masked weight is rebuilt in the default layout every step)."""
    name = getattr(type(_unwrap(model)), "registry_name", None)
    masked = any(isinstance(hook, prune.BasePruningMethod) for m in _unwrap(model).modules()
                 for hook in m._forward_pre_hooks.values())
    return (torch.device(device).type == "cpu" and has_conv_weights(model) and not masked
            and CPU_CHANNELS_LAST_SPEEDUP.get(name, 0.0) >= PAYS)


# -- command line ----------------------------------------------------------------------------

def _bool_or_auto(text: str) -> Optional[bool]:
    """'auto' -> None (decided per model and device), else True/False as --do_training reads."""
    if str(text).strip().lower() == "auto":
        return None
    return str2bool(text)


def _amp(text: str) -> Optional[str]:
    lowered = str(text).strip().lower()
    if lowered in ("off", "none", "false", "no"):
        return None
    if lowered not in AMP_DTYPES:
        raise argparse.ArgumentTypeError(f"expected off, bf16 or fp16, got {text!r}")
    return lowered


def add_acceleration_args(group) -> None:
    """--channels_last, --compile, --amp on an argparse parser or group. Values land in
    TrainingSettings fields of the same names: channels_last None (auto) / True / False,
    compile True / False, amp None (off) / 'bf16' / 'fp16'."""
    group.add_argument("--channels_last", type=_bool_or_auto, nargs="?", const=True,
                       default=None, metavar="auto|True|False",
                       help=CHANNELS_LAST_HELP + ". Default: auto")
    group.add_argument("--compile", type=str2bool, nargs="?", const=True, default=False,
                       metavar="True|False", help=COMPILE_HELP)
    group.add_argument("--amp", type=_amp, default=None, metavar="off|bf16|fp16",
                       help=AMP_HELP + ". Default: off")


def accelerator_from_args(args, device: torch.device,
                          model: Optional[nn.Module] = None) -> TrainingAccelerator:
    """The accelerator the flags ask for (auto resolved for ``model`` on ``device``)."""
    from utils.training.settings import TrainingSettings
    try:
        return TrainingAccelerator.from_settings(TrainingSettings.from_args(args), device, model)
    except UserError as exc:
        raise in_flag_words(exc, ("amp", "compile")) from None
