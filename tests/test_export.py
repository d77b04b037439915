"""Export (utils/export.py): plain state_dicts that load without the toolkit, ONNX models that
match PyTorch within 1e-4 (when onnx is installed), for dense, compact and decoded models."""
import sys

import pytest
import torch
import torch.nn.utils.prune as prune

import models
from pruners.quantization import WeightSharing
from tests.conftest import run_script
from utils import export
from utils.checkpoints import build_model
from utils.checkpoints import compressed as cz


def onnx_ready():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")


def compact_widths(name):
    """A structurally pruned (FPGM-compact) model is the same architecture at smaller widths."""
    return [max(1, w * 6 // 10) for w in models.model_class(name).widths_for()]


def masked_lenet():
    torch.manual_seed(0)
    model = models.create_model("lenet_300_100", (1, 28, 28), 10)
    for _, module in models.weight_layers(model):
        prune.l1_unstructured(module, "weight", amount=0.9)
    return model


def test_state_dict_export_loads_with_plain_torch(tmp_path):
    model = masked_lenet()
    path = export.export_state_dict(model, tmp_path / "m.state_dict.pth")
    state = torch.load(path, weights_only=True)
    assert all(type(v) is torch.Tensor and v.layout == torch.strided for v in state.values())
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    fresh = models.create_model("lenet_300_100", (1, 28, 28), 10)
    fresh.load_state_dict(state)  # strict
    images = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))
    again = export.export_state_dict(model, tmp_path / "m.state_dict.pth")
    assert again != path and path.exists()  # never over another file


@pytest.mark.parametrize("name,widths", [
    ("lenet_5_caffe", None),                             # dense
    ("lenet_5_caffe", compact_widths("lenet_5_caffe")),  # FPGM-compact
    ("resnet20", compact_widths("resnet20")),            # ImageAdapter, ZeroPadShortcut, BatchNorm
])
def test_onnx_export_matches_pytorch(tmp_path, name, widths):
    onnx_ready()
    torch.manual_seed(0)
    model = models.create_model(name, (1, 28, 28), 10, widths)
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2)
    images = torch.randn(4, 1, 28, 28)
    result = export.export_onnx(model, tmp_path / f"{name}.onnx", images)
    assert result["max_abs_diff"] <= export.TOLERANCE
    import onnx
    onnx.checker.check_model(onnx.load(result["path"]), full_check=True)


def test_onnx_batch_dimension_is_dynamic(tmp_path):
    onnx_ready()
    onnxruntime = pytest.importorskip("onnxruntime")
    model = export.deployable(masked_lenet())
    result = export.export_onnx(model, tmp_path / "m.onnx", torch.randn(4, 1, 28, 28))
    session = onnxruntime.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        images = torch.randn(batch, 1, 28, 28)
        (logits,) = session.run(None, {export.INPUT_NAME: images.numpy()})
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(logits), model(images), atol=export.TOLERANCE)


def test_onnx_export_of_a_decoded_quantized_model(tmp_path):
    onnx_ready()
    model = masked_lenet()
    sharing = WeightSharing()
    shared = sharing.share(model)
    sharing.finalize(model)
    path, _ = cz.save_compressed(model, tmp_path / "q.compressed", shared)
    decoded = build_model(cz.load_compressed(path))
    results = export.export_model(decoded, tmp_path / "q", ["onnx", "state_dict"],
                                  torch.randn(8, 1, 28, 28), print_fn=lambda *a: None)
    assert results["onnx"]["max_abs_diff"] <= export.TOLERANCE
    state = torch.load(results["state_dict"]["path"], weights_only=True)
    for key, value in state.items():
        assert torch.equal(value, export.plain_state(model)[key])


def test_without_onnxruntime_the_check_runs_in_onnx_reference_evaluator(monkeypatch):
    onnx_ready()
    model = export.deployable(masked_lenet())
    data = export.onnx_bytes(model, torch.randn(2, 1, 28, 28))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    assert "reference evaluator" in export.runtime_name()
    checked = export.check_onnx(data, model, torch.randn(3, 1, 28, 28))
    assert checked["max_abs_diff"] <= export.TOLERANCE


def test_an_export_that_differs_from_pytorch_is_refused(tmp_path):
    onnx_ready()
    model = export.deployable(masked_lenet())
    data = export.onnx_bytes(model, torch.randn(2, 1, 28, 28))
    with torch.no_grad():
        model.fc3.bias.add_(1e-3)
    with pytest.raises(export.ExportMismatch, match="differ"):
        export.check_onnx(data, model, torch.randn(4, 1, 28, 28))


def test_export_script_writes_next_to_a_checkpoint(trained_checkpoint):
    path, ckpt_dir, data_dir = trained_checkpoint("lenet_300_100")
    code, results = run_script(export.main, [f"--load_folder_model={path}", "--format",
                                             "state_dict"])
    assert code == 0
    written = results["state_dict"]["path"]
    assert written == str(path.with_name(path.stem + export.STATE_DICT_SUFFIX))
    model = build_model({"config": torch.load(path, weights_only=True)["config"],
                         "state_dict": torch.load(written, weights_only=True)})
    assert model is not None


def test_export_script_refuses_a_missing_file(capsys):
    code, _ = run_script(export.main, ["--load_folder_model=/nonexistent/model.pt"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error:")


def test_onnx_speed_benchmark_checks_and_times_dense_against_compact():
    onnx_ready()
    from benchmarks import onnx_speed
    results = onnx_speed.main(["--architectures", "lenet_5_caffe", "--rounds=3", "--samples=1",
                               "--warmup=0", "--batch_size=2", "--compare_images=2"])
    figures = results["lenet_5_caffe"]
    assert figures["flop_ratio"] == pytest.approx(4_586_000 / 1_791_600)  # 20/50/500 -> 12/30/300
    assert max(figures["max_abs_diff"].values()) < export.TOLERANCE
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        assert "throughput_speedup" not in figures  # nothing timed, and it says so
    else:
        assert figures["throughput_speedup"] > 0 and figures["latency_speedup"] > 0
        assert set(figures["throughput_ms"]) == {"dense", "compact"}
