"""--model=torchvision.<name> and --model=package.module:function through every script: trained,
pruned by each kind of method, counted, exported and analysed; checkpoints rebuild the compact
model from the file alone; names that cannot be built are one line, exit 2."""
import pytest
import torch

import baseline
import calFLOP
import pruning
import sensitivity
from tests.conftest import run_script
from utils import checkpoints
from utils.checkpoints import load_model

QUICK = ["--no_download", "--no_verify_data", "--batch_size=64", "--inference_sampling=2",
         "--inference_batch_size=8", "--no_progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir):
    cache = {}

    def make(model, *extra):
        if (model, extra) not in cache:
            folder = tmp_path_factory.mktemp("any_model")
            code, result = run_script(baseline.main, [f"--model={model}", "--dataset=mnist",
                                                      f"--data_dir={mnist_dir}", f"--checkpoint_dir={folder}",
                                                      "--epochs=1", *extra, *QUICK])
            assert code == 0
            cache[(model, extra)] = (result["path"], folder)
        return cache[(model, extra)]
    return make


def _prune(path, folder, mnist_dir, method, *extra):
    code, result = run_script(pruning.main, [f"--load_folder_model={path}", f"--checkpoint_dir={folder}",
                                             f"--data_dir={mnist_dir}", f"--pruning_method={method}",
                                             "--epochs=1", *extra, *QUICK])
    assert code == 0
    return result


def _parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_torchvision_model_trained_pruned_counted_and_rebuilt(trained, mnist_dir, capsys):
    path, folder = trained("torchvision.mobilenet_v3_small")
    dense = checkpoints.build_model(checkpoints.load_checkpoint(path))
    assert type(dense.net).__name__ == "MobileNetV3" and dense.net.features[0][0].in_channels == 3
    result = _prune(path, folder, mnist_dir, "l1norm", "--cut_rate=0.3")
    loaded = checkpoints.load_checkpoint(result["path"])
    assert loaded["config"]["model"] == "torchvision.mobilenet_v3_small"
    assert loaded["structure"], "the compact structure is recorded per module"
    small = checkpoints.build_model(loaded)
    assert _parameters(small) < _parameters(dense)
    assert _parameters(small) == _parameters(load_model(result["path"]))
    # the file alone rebuilds it: same outputs as the model pruning.py evaluated
    x = torch.randn(4, 1, 28, 28)
    small.eval()
    again = load_model(result["path"]).eval()
    with torch.no_grad():
        assert torch.equal(small(x), again(x))
    capsys.readouterr()
    code, _ = run_script(calFLOP.main, [f"--load_folder_model={result['path']}", "--act_images=0"])
    assert code == 0
    assert "Compact model, against the unpruned model its builder makes" in capsys.readouterr().out
    from utils import export
    code, written = run_script(export.main, [f"--load_folder_model={result['path']}",
                                             "--format", "onnx", f"--data_dir={mnist_dir}",
                                             "--no_download", "--no_verify_data"])
    assert code == 0 and written["onnx"]["path"].endswith(".onnx") and written["onnx"]["max_abs_diff"] < 1e-4


def test_user_builder_through_every_method_kind(trained, mnist_dir, capsys):
    path, folder = trained("tests.user_models:tiny_net", '--model_kwargs={"width": 24}')
    dense = checkpoints.build_model(checkpoints.load_checkpoint(path))
    assert dense.net.stem.out_channels == 24
    for method, extra in (("fpgm", ["--prune_residual=True"]), ("taylor", []), ("songhan", [])):
        result = _prune(path, folder, mnist_dir, method, *extra)
        model = checkpoints.build_model(checkpoints.load_checkpoint(result["path"]))
        if method == "songhan":  # masks, same shapes
            assert _parameters(model) == _parameters(dense)
            assert any(n.endswith("weight_mask") for n, _ in model.named_buffers())
        else:
            assert _parameters(model) < _parameters(dense)
    capsys.readouterr()
    out = folder / "sensitivity"
    code, _ = run_script(sensitivity.main, [f"--load_folder_model={path}", f"--data_dir={mnist_dir}",
                                            "--no_download", "--no_verify_data", "--method=l1norm",
                                            "--rates=0.5", "--val_split=0.2", f"--output={out}"])
    assert code == 0 and "net.expand=" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--model=torchvision.no_such_net"], "torchvision.models has no classification model 'no_such_net'"),
    (["--model=no_such_module:build"], "cannot import no_such_module"),
    (["--model=tests.user_models:no_such"], "tests.user_models has no no_such"),
    (["--model=tests.user_models:tiny_net", "--model_kwargs=[1]"], "must be a JSON object"),
    (["--model=tests.user_models:tiny_net", '--model_kwargs={"depth": 3}'], "cannot be called with"),
    (["--model=lenet_300_100", '--model_kwargs={"a": 1}'], "--model_kwargs is for torchvision"),
    (["--model=torchvision.inception_v3"], "give --image_size=N"),
    # a builder's own assertion on its arguments, and a forward pass that torch._assert refuses
    (["--model=torchvision.models.vision_transformer:VisionTransformer",
      '--model_kwargs={"image_size": 28, "patch_size": 7, "num_layers": 1, "num_heads": 5, '
      '"hidden_dim": 32, "mlp_dim": 64}'],
     "AssertionError: embed_dim must be divisible by num_heads"),
    (["--model=torchvision.models.vision_transformer:VisionTransformer",
      '--model_kwargs={"image_size": 28, "patch_size": 5, "num_layers": 1, "num_heads": 4, '
      '"hidden_dim": 32, "mlp_dim": 64}'],
     "Input shape indivisible by patch size!"),
    (["--model=torchvision.resnet18", "--pretrained"], "starts from random weights here"),
])
def test_models_that_cannot_be_built_are_one_line(tmp_path, mnist_dir, capsys, argv, message):
    code, _ = run_script(baseline.main, [*argv, "--dataset=mnist", f"--data_dir={mnist_dir}",
                                         f"--checkpoint_dir={tmp_path}", "--epochs=1", *QUICK])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_image_size_lets_a_model_that_needs_a_minimum_run(capsys):
    code, _ = run_script(calFLOP.main, ["--model=torchvision.inception_v3", "--dataset=mnist",
                                        "--image_size=80"])
    assert code == 0 and "Total" in capsys.readouterr().out


def test_a_vit_prunes_its_per_head_width_from_the_command_line(trained, mnist_dir):
    path, folder = trained("torchvision.models.vision_transformer:VisionTransformer",
                           '--model_kwargs={"image_size": 28, "patch_size": 7, "num_layers": 1, '
                           '"num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}')
    result = _prune(path, folder, mnist_dir, "l1norm", "--cut_rate=0.5", "--attention=head_width",
                    "--layer_rates=net.encoder.layers.encoder_layer_0.self_attention[v]=0.25")
    small = load_model(result["path"])
    attention = small.net.encoder.layers[0].self_attention
    assert attention.num_heads == 2 and attention.head_dim == 8       # heads and scale kept
    # per head: 4 of 8 query/key dimensions and 6 of 8 value dimensions kept
    assert attention.in_proj_weight.shape == (2 * (4 + 4 + 6), 16)
    assert attention.out_proj.weight.shape == (16, 2 * 6)
    meta = checkpoints.load_checkpoint(result["path"])["pruning"]
    assert meta["attention"] == "head_width" and meta["compact_max_difference"] < 1e-4
