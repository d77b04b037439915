"""TrainingAccelerator: channels_last trains the same numbers as the default layout, restore()
leaves nothing in the training-time layout, pruning masks and BatchNorm survive, the flags parse,
and the errors a user can cause are one clear line. torch.compile is exercised with dynamo's
"eager" backend (tracing without a C++ compile, which takes tens of seconds on this CPU)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import models
from script_setup import add_training_args
from utils.cli import new_parser
from utils.errors import UserError
from utils.masks import masked_tensors
from utils.training import TrainingAccelerator, TrainingSettings, accelerator_from_args
from utils.training.acceleration import compile_unavailable_reason, has_conv_weights

CPU = torch.device("cpu")


def small_resnet():
    """resnet20 on 3x8x8: convs, BatchNorm and zero-padding shortcuts, a few ms per step."""
    torch.manual_seed(0)
    return models.create_model("resnet20", (3, 8, 8), 10)


def batches(count=3, shape=(3, 8, 8), size=16):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(count)]


def train(model, accelerator, data, lr=0.01):
    """A few SGD steps through the accelerator; the losses, the model restored."""
    train_model = accelerator.prepare(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    try:
        for images, labels in data:
            loss, logits = accelerator.step(train_model, images, labels, optimizer)
            assert logits.shape == (len(labels), 10)
            losses.append(loss.item())
    finally:
        accelerator.restore(model)
    return losses


def assert_same_state(a: nn.Module, b: nn.Module, atol=1e-5):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x.float(), y.float(), atol=atol, rtol=1e-4 if atol else 0), name
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        if x.grad is not None or y.grad is not None:
            assert torch.allclose(x.grad, y.grad, atol=atol, rtol=1e-4), f"{name}.grad"


def test_channels_last_trains_the_same_numbers_as_the_default_layout():
    plain, fast = small_resnet(), small_resnet()
    data = batches()
    losses = train(plain, TrainingAccelerator(), data)
    fast_losses = train(fast, TrainingAccelerator(channels_last=True), data)
    assert fast_losses == pytest.approx(losses, rel=1e-5)
    assert_same_state(plain, fast)  # weights, gradients, BatchNorm running statistics


def test_prepare_converts_in_place_and_restore_leaves_everything_contiguous():
    model = small_resnet()
    params = list(model.parameters())
    accelerator = TrainingAccelerator(channels_last=True)
    assert accelerator.prepare(model) is model  # no compile: train the model itself
    assert list(model.parameters()) == params  # same Parameter objects: an optimizer still holds them
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv1.weight.is_contiguous()
    train(model, accelerator, batches(1))
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        assert tensor.is_contiguous(), name
        tensor.view(-1)  # what other code does to weights
    for name, param in model.named_parameters():
        assert param.grad.is_contiguous(), f"{name}.grad"
    torch.fx.symbolic_trace(model)  # the plain model still traces


def test_models_without_conv_weights_are_left_alone():
    torch.manual_seed(0)
    mlp = models.create_model("lenet_300_100", (1, 28, 28), 10)
    assert not has_conv_weights(mlp)
    accelerator = TrainingAccelerator(channels_last=True)
    accelerator.prepare(mlp)
    assert all(p.is_contiguous() for p in mlp.parameters())
    loss, _ = accelerator.step(mlp, torch.randn(4, 1, 28, 28), torch.arange(4),
                               torch.optim.SGD(mlp.parameters(), lr=0.1))
    assert torch.isfinite(loss)


def prune_convs(model, amount=0.5):
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            prune.l1_unstructured(module, "weight", amount=amount)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_zero_through_channels_last_training(optimizer):
    model = small_resnet()
    prune_convs(model)
    masks = {key: module.weight_mask.clone() for key, module, _ in masked_tensors(model)}
    accelerator = TrainingAccelerator(channels_last=True)
    train_model = accelerator.prepare(model)
    conv = model.layer1[0].conv1
    assert conv.weight_orig.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # recomputed, not stale
    make = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    opt = make(model.parameters(), lr=0.05)
    for images, labels in batches(4):
        accelerator.step(train_model, images, labels, opt)
    accelerator.restore(model)
    for key, module, tensor in masked_tensors(model):
        mask = getattr(module, tensor + "_mask")
        assert torch.equal(mask, masks[key]), key  # the masks themselves unchanged
        weight = getattr(module, tensor)
        assert weight.is_contiguous(), key  # the pruned tensor refreshed in the plain layout
        assert torch.all(weight[mask == 0] == 0), key
        assert torch.all(weight.view(-1)[mask.reshape(-1) == 1] != 0), key  # the rest trained
        assert torch.equal(weight, getattr(module, tensor + "_orig") * mask)


def test_fpgm_soft_pruning_between_epochs_sees_the_same_filters_in_channels_last():
    """fit's on_epoch_end runs while the model is still in the training layout: FPGM's
    selection and zeroing must not depend on it."""
    from pruners import create_pruner
    plain, fast = small_resnet(), small_resnet()
    accelerator = TrainingAccelerator(channels_last=True)
    accelerator.prepare(fast)
    selections = []
    for model in (plain, fast):
        pruner = create_pruner("fpgm", cut_rate=0.4)
        pruner.soft_step(model, pruner.prunable_groups(model), epoch=1)
        selections.append({k: v.tolist() for k, v in pruner.selection.items()})
    assert selections[0] == selections[1]
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    accelerator.restore(fast)
    assert_same_state(plain, fast, atol=0)


def test_data_parallel_wrapper_converts_its_module():
    """DistributedDataParallel needs a process group; DataParallel on a CPU takes the same
    unwrapping path (``.module``)."""
    model = small_resnet()
    wrapped = nn.DataParallel(model)
    accelerator = TrainingAccelerator(channels_last=True)
    assert accelerator.prepare(wrapped) is wrapped
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    accelerator.restore(wrapped)
    assert all(p.is_contiguous() for p in model.parameters())


def test_amp_on_the_cpu_is_one_clear_error():
    for amp in ("bf16", "fp16"):
        with pytest.raises(UserError, match="needs a CUDA device"):
            TrainingAccelerator(amp=amp, device=CPU)
    with pytest.raises(UserError, match="bf16, fp16"):
        TrainingAccelerator(amp="fp32", device=CPU)


def parse(*flags):
    parser = new_parser("test")
    add_training_args(parser, epochs=1, learning_rate=0.01)
    return parser.parse_args(list(flags))


def test_flags_parse_into_settings_and_auto_resolves_per_model():
    args = parse()
    settings = TrainingSettings.from_args(args)
    assert (settings.channels_last, settings.compile, settings.amp) == (None, False, None)
    conv, mlp = small_resnet(), models.create_model("lenet_300_100", (1, 28, 28), 10)
    assert accelerator_from_args(args, CPU, conv).channels_last  # auto: on for convs on the CPU
    assert not accelerator_from_args(args, CPU, mlp).channels_last
    assert not accelerator_from_args(args, CPU).channels_last  # no model to judge: off
    unmeasured = models.create_model("resnet32", (3, 8, 8), 10)  # not in the benchmark's table
    assert not accelerator_from_args(args, CPU, unmeasured).channels_last

    assert TrainingSettings.from_args(parse("--channels_last")).channels_last is True
    assert TrainingSettings.from_args(parse("--channels_last=False")).channels_last is False
    assert TrainingSettings.from_args(parse("--channels_last", "auto")).channels_last is None
    assert not accelerator_from_args(parse("--channels_last=False"), CPU, conv).channels_last
    assert TrainingSettings.from_args(parse("--compile")).compile is True
    assert TrainingSettings.from_args(parse("--amp", "off")).amp is None
    assert TrainingSettings.from_args(parse("--amp=bf16")).amp == "bf16"
    with pytest.raises(UserError, match="--amp=bf16 needs a CUDA device"):
        accelerator_from_args(parse("--amp=bf16"), CPU, conv)
    for bad in (["--amp=fp32"], ["--channels_last=maybe"], ["--compile=sometimes"]):
        with pytest.raises(UserError, match="--help"):
            parse(*bad)


def test_a_missing_cpu_compiler_is_one_clear_error(monkeypatch):
    pytest.importorskip("torch._inductor")
    from torch._inductor import config
    from torch._inductor.cpp_builder import cpp_compiler_search
    monkeypatch.setattr(config.cpp, "cxx", ("no-such-compiler-here",))
    cpp_compiler_search.cache_clear()
    try:
        with pytest.raises(UserError, match="^compile: .*C\\+\\+ compiler"):
            TrainingAccelerator(compile=True, device=CPU)
    finally:
        monkeypatch.undo()
        cpp_compiler_search.cache_clear()


@pytest.mark.skipif(not hasattr(torch, "compile") or compile_unavailable_reason(CPU) is not None,
                    reason="torch.compile is unavailable here")
def test_compiled_training_shares_parameters_and_keeps_masks():
    """Dynamo traces the model with its prune pre-hooks and channels_last; the eager backend runs
    the captured graph, so this checks tracing, not inductor's kernels (benchmarks/train_speed.py
    runs those)."""
    torch._dynamo.reset()
    plain, compiled = small_resnet(), small_resnet()
    prune_convs(plain)
    prune_convs(compiled)
    data = batches(2)
    losses = train(plain, TrainingAccelerator(), data)
    accelerator = TrainingAccelerator(channels_last=True, compile=True, compile_backend="eager")
    train_model = accelerator.prepare(compiled)
    assert train_model is not compiled
    assert {id(p) for p in train_model.parameters()} == {id(p) for p in compiled.parameters()}
    optimizer = torch.optim.SGD(compiled.parameters(), lr=0.01, momentum=0.9)
    compiled_losses = [accelerator.step(train_model, x, y, optimizer)[0].item() for x, y in data]
    accelerator.restore(compiled)
    assert compiled_losses == pytest.approx(losses, rel=1e-5)
    assert_same_state(plain, compiled)
    for _, module, tensor in masked_tensors(compiled):
        weight, mask = getattr(module, tensor), getattr(module, tensor + "_mask")
        assert weight.is_contiguous() and torch.all(weight[mask == 0] == 0)
    torch._dynamo.reset()


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is unavailable here")
def test_a_compiler_failure_during_training_is_one_clear_error():
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no kernels today")

    torch._dynamo.reset()
    model = small_resnet()
    accelerator = TrainingAccelerator(compile=True, compile_backend=broken_backend)
    train_model = accelerator.prepare(model)
    images, labels = batches(1)[0]
    with pytest.raises(UserError, match="torch.compile failed .*train without --compile"):
        accelerator.step(train_model, images, labels, torch.optim.SGD(model.parameters(), lr=0.1))
    torch._dynamo.reset()


def test_default_accelerator_is_the_plain_step():
    """All off: the same numbers as the loop's own forward/backward/step."""
    import torch.nn.functional as F
    a, b = small_resnet(), copy.deepcopy(small_resnet())
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    accelerator = TrainingAccelerator()
    assert not accelerator.enabled and accelerator.describe() == "off"
    for images, labels in batches(2):
        loss_a, _ = accelerator.step(a, images, labels, opt_a)
        loss_b = F.cross_entropy(b(images), labels)
        opt_b.zero_grad(set_to_none=True)
        loss_b.backward()
        opt_b.step()
        assert torch.equal(loss_a, loss_b)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("script", ["baseline", "pruning"])
def test_amp_on_the_cpu_is_refused_before_any_data_is_read(script, tmp_path, monkeypatch, capsys):
    import importlib
    import script_setup
    module = importlib.import_module(script)

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before --amp was checked")

    monkeypatch.setattr(script_setup, "load_data", no_data)
    argv = ["--amp=bf16", "--device=cpu", f"--data_dir={tmp_path}", f"--checkpoint_dir={tmp_path}"]
    argv += ["--load_folder_model=missing.pt"] if script == "pruning" else ["--model=lenet_5"]
    with pytest.raises(UserError, match="needs a CUDA device"):
        module.main(argv)
