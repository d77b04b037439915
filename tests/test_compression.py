"""Deep Compression: k-means weight sharing, centroid fine-tuning, the compressed file and its
Huffman coding (pruners/quantization.py, utils/checkpoints/compressed.py). Exact invariants only."""
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import models
from pruners import PruneContext
from pruners.quantization import SharedWeight, WeightSharing, kmeans_1d, quantize
from tests.conftest import run_script
from utils.checkpoints import build_model
from utils.checkpoints import compressed as cz
from utils.data import Split
from utils.errors import UserError
from utils.masks import current_masks, plain_state_dict
from utils.training import TrainingSettings


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """Sign-aware comparison: the float32 bit patterns (-0.0 != +0.0)."""
    return tensor.detach().cpu().contiguous().view(torch.int32)


def assert_bit_equal(ours: dict, theirs: dict):
    assert ours.keys() == theirs.keys()
    for key in ours:
        a, b = ours[key], theirs[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if a.dtype == torch.float32:
            assert torch.equal(bits(a), bits(b)), key
        else:
            assert torch.equal(a, b), key


def pruned_model(name="lenet_300_100", density=0.1, seed=0, shape=(1, 28, 28)):
    """A model whose conv/linear weights are magnitude-masked to ``density`` per layer."""
    torch.manual_seed(seed)
    model = models.create_model(name, shape, 10)
    for _, module in models.weight_layers(model):
        prune.l1_unstructured(module, "weight", amount=1 - density)
    return model


def synthetic_context(shape=(1, 28, 28), n=64, epochs=1, lr=1e-3):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10
    images = torch.randn(n, *shape, generator=generator) + labels.view(-1, 1, 1, 1) * 0.3
    split = Split(images, labels)
    settings = TrainingSettings(epochs=epochs, batch_size=16, learning_rate=lr, progress=False)
    return PruneContext(train=split, test=split, settings=settings, generator=generator,
                        print_fn=lambda *a: None)


# ---------------------------------------------------------------- k-means

def test_kmeans_finds_separated_clusters_from_a_linear_start():
    values = torch.tensor([-1.0, -0.9, -1.1, 0.5, 0.6, 0.4, 2.0, 2.2])
    centroids, assign = kmeans_1d(values, 3)
    assert torch.allclose(centroids, torch.tensor([-1.0, 0.5, 2.1]), atol=1e-6)
    assert assign.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_kmeans_centroids_are_member_means_and_nearest():
    values = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    centroids, assign = kmeans_1d(values, 32)
    assert len(centroids) <= 32
    assert torch.bincount(assign, minlength=len(centroids)).min() > 0  # empty clusters dropped
    for c in range(len(centroids)):
        assert torch.allclose(centroids[c], values[assign == c].double().mean().float(), atol=1e-6)
    nearest = (values[:, None] - centroids[None, :]).abs().argmin(1)
    distance = (values - centroids[assign]).abs()
    assert torch.allclose(distance, (values - centroids[nearest]).abs(), atol=1e-6)


def test_kmeans_with_fewer_values_than_clusters():
    centroids, assign = kmeans_1d(torch.tensor([0.5, 0.5, -0.25]), 256)
    assert sorted(centroids.tolist()) == [-0.25, 0.5]
    assert torch.equal(centroids[assign], torch.tensor([0.5, 0.5, -0.25]))
    empty, none = kmeans_1d(torch.zeros(0), 4)
    assert len(empty) == 0 and len(none) == 0


# ---------------------------------------------------------------- weight sharing

@pytest.mark.parametrize("name,shape", [("lenet_300_100", (1, 28, 28)), ("lenet_5_caffe", (1, 28, 28))])
def test_sharing_keeps_pruned_weights_zero_and_at_most_2_to_the_b_values(name, shape):
    model = pruned_model(name, 0.2, shape=shape)
    masks = current_masks(model)
    sharing = WeightSharing(bits_conv=4, bits_fc=3)
    shared = sharing.share(model)
    assert set(shared) == {f"{n}.weight" for n, _ in models.weight_layers(model)}
    for n, module in models.weight_layers(model):
        bits_b = 4 if isinstance(module, nn.Conv2d) else 3
        assert len(module.parametrizations.weight.original) <= 2 ** bits_b
    sharing.finalize(model)
    assert current_masks(model).keys() == masks.keys()  # the masks came back
    state, _ = plain_state_dict(model)
    for key, mask in masks.items():
        assert torch.equal(current_masks(model)[key], mask)
        weight = state[key]
        assert torch.equal(bits(weight[~mask]), torch.zeros_like(bits(weight[~mask])))  # +0.0
        limit = 2 ** (4 if weight.dim() == 4 else 3)
        assert len(torch.unique(weight[mask])) <= limit


def test_a_centroids_gradient_is_the_sum_of_its_members_gradients():
    torch.manual_seed(0)
    keep = torch.rand(6, 10) > 0.4
    index = torch.randint(0, 4, (6, 10))
    index[0, :4] = torch.arange(4)  # every cluster has a member
    keep[0, :4] = True
    shared = SharedWeight(index, keep, 4)
    codebook = torch.randn(4, requires_grad=True)
    weight = shared(codebook)
    upstream = torch.randint(-5, 6, (6, 10)).float()  # integers: the sums are exact
    (weight * upstream).sum().backward()
    expected = torch.zeros(4).index_add_(0, index[keep], upstream[keep])
    assert torch.equal(codebook.grad, expected)
    assert torch.equal(bits(weight.detach()[~keep]), torch.zeros_like(bits(weight.detach()[~keep])))


def test_fine_tuning_moves_centroids_through_the_training_loop_and_pruned_stay_zero():
    model = pruned_model("lenet_300_100", 0.1)
    masks = current_masks(model)
    context = synthetic_context(epochs=2)
    sharing = WeightSharing(bits_fc=3)
    sharing.share(model)
    before = {k: v.detach().clone() for k, v in sharing.codebooks(model).items()}
    sharing.finalize(model)
    model = pruned_model("lenet_300_100", 0.1)
    shared, _, history = quantize(model, context, WeightSharing(bits_fc=3), epochs=2)
    assert len(history) == 2
    state, _ = plain_state_dict(model)
    for key, mask in masks.items():
        values = torch.unique(state[key][mask])
        assert len(values) <= 8
        assert not torch.equal(torch.sort(values).values, torch.sort(before[key]).values)  # moved
        assert torch.equal(bits(state[key][~mask]), torch.zeros_like(bits(state[key][~mask])))


def test_zero_bits_leave_a_kind_of_layer_unshared():
    model = pruned_model("lenet_5_caffe", 0.3)
    shared = WeightSharing(bits_conv=0, bits_fc=4).share(model)
    assert set(shared) == {"fc1.weight", "fc2.weight"}
    with pytest.raises(UserError, match="bits_fc must be from 0"):
        WeightSharing(bits_fc=9)


# ---------------------------------------------------------------- Huffman coding

def test_huffman_lengths_of_the_textbook_example():
    counts = [45, 13, 12, 16, 9, 5]  # CLRS's a..f: 224 bits in all
    lengths = cz.huffman_code_lengths(counts)
    assert lengths.tolist() == [1, 3, 3, 3, 4, 4]
    assert int(np.dot(counts, lengths)) == 224
    codes = cz.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)  # prefix-free


@pytest.mark.parametrize("alphabet,skew", [(32, 1.5), (256, 3.0), (2, 0.0)])
def test_huffman_round_trip(alphabet, skew):
    rng = np.random.default_rng(alphabet)
    weights = np.exp(-skew * np.arange(alphabet) / alphabet * 4)
    symbols = rng.choice(alphabet, size=5000, p=weights / weights.sum())
    lengths = cz.huffman_code_lengths(np.bincount(symbols, minlength=alphabet))
    data = cz.huffman_encode(symbols, lengths)
    assert np.array_equal(cz.huffman_decode(data, len(symbols), lengths), symbols)
    assert len(data) <= (len(symbols) * cz.width_for(alphabet) + 7) // 8


def test_huffman_single_symbol_empty_and_length_limit():
    lengths = cz.huffman_code_lengths([0, 7, 0])
    assert lengths.tolist() == [0, 1, 0]
    assert cz.huffman_decode(cz.huffman_encode(np.ones(7, int), lengths), 7, lengths).tolist() == [1] * 7
    assert cz.huffman_decode(b"", 0, lengths).tolist() == []
    fibonacci = [1, 1]
    while len(fibonacci) < 30:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    limited = cz.huffman_code_lengths(fibonacci)  # unlimited, the rarest code would be 29 bits
    assert limited.max() <= cz.MAX_CODE_LENGTH
    assert np.sum(np.ldexp(1.0, -limited)) == 1.0
    symbols = np.repeat(np.arange(30), 3)
    assert np.array_equal(cz.huffman_decode(cz.huffman_encode(symbols, limited), 90, limited), symbols)


def test_fixed_width_round_trip():
    symbols = np.arange(100) % 23
    data = cz.pack_fixed(symbols, 5)
    assert len(data) == (100 * 5 + 7) // 8
    assert np.array_equal(cz.unpack_fixed(data, 100, 5), symbols)


# ---------------------------------------------------------------- sparse structure

def test_relative_indices_insert_fillers_when_a_gap_overflows():
    # 5 bits: symbols 0..30 are gaps, 31 skips 31 positions. Gap 39 after position 0: 31 + 8.
    assert cz.relative_indices(np.array([0, 40]), 5).tolist() == [0, 31, 8]
    assert cz.relative_indices(np.array([31]), 5).tolist() == [31, 0]
    rng = np.random.default_rng(0)
    positions = np.sort(rng.choice(100_000, size=300, replace=False))
    for width in (5, 8):
        symbols = cz.relative_indices(positions, width)
        assert symbols.max() < 2 ** width
        assert np.array_equal(cz.positions_from_relative(symbols, width, 100_000), positions)


@pytest.mark.parametrize("density", [0.02, 0.1, 0.5, 0.9])
def test_the_smaller_structure_is_chosen(density):
    rng = np.random.default_rng(1)
    keep = rng.random(300 * 784) < density
    structure, sizes = cz._encode_structure(keep, (300, 784), True, cz._Payload())
    assert set(sizes) == {"bitmask", "relative"}
    assert sizes[structure["form"]] == min(sizes.values())
    expected = "relative" if density <= 0.1 else "bitmask"
    assert structure["form"] == expected


# ---------------------------------------------------------------- the file

def quantized_resnet():
    """A residual model with BatchNorm (int64 buffers), conv and linear layers, masks, a kept
    -0.0, shared layers and one masked-but-unshared tensor."""
    model = pruned_model("resnet20", 0.3)
    sharing = WeightSharing(bits_conv=4, bits_fc=0)
    shared = sharing.share(model)
    sharing.finalize(model)
    fc = model.get_submodule(next(n for n, m in models.weight_layers(model) if isinstance(m, nn.Linear)))
    with torch.no_grad():
        fc.weight_orig[fc.weight_mask.bool()] = torch.randn(int(fc.weight_mask.sum()))
        first = fc.weight_mask.bool().nonzero()[0]
        fc.weight_orig[tuple(first)] = -0.0
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.num_batches_tracked.fill_(7)
            module.running_mean.normal_()
    return model, shared


def test_compressed_file_decodes_bit_exactly(tmp_path):
    model, shared = quantized_resnet()
    path, stats = cz.save_compressed(model, tmp_path / "m.compressed", shared, dataset="mnist")
    loaded = cz.load_compressed(path)
    state, masks = plain_state_dict(model)
    assert_bit_equal(state, loaded["state_dict"])
    assert masks.keys() == loaded["masks"].keys()
    for key in masks:
        assert torch.equal(masks[key], loaded["masks"][key])
    stores = {s["name"]: s["store"] for s in stats}
    assert {stores[k] for k in shared} == {"shared"}
    assert "sparse" in stores.values() and "raw" in stores.values()
    rebuilt = build_model(loaded)
    assert_bit_equal(state, plain_state_dict(rebuilt)[0])
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), rebuilt.eval()(images))


def test_huffman_file_is_smaller_than_fixed_width_and_well_under_the_pruned_checkpoint(tmp_path):
    model = pruned_model("lenet_300_100", 0.08)
    sharing = WeightSharing()
    shared = sharing.share(model)
    sharing.finalize(model)
    fixed, _ = cz.compressed_bytes(model, shared, huffman=False)
    coded, _ = cz.compressed_bytes(model, shared)
    assert len(coded) <= len(fixed)
    assert len(coded) < 266_610 * 4 / 30
    assert_bit_equal(plain_state_dict(model)[0], cz.decode_bytes(fixed)["state_dict"])


def test_a_fully_pruned_layer_round_trips():
    model = pruned_model("lenet_300_100", 0.1)
    prune.custom_from_mask(model.fc3, "weight", torch.zeros_like(model.fc3.weight))
    sharing = WeightSharing()
    shared = sharing.share(model)
    sharing.finalize(model)
    assert "fc3.weight" not in shared
    data, _ = cz.compressed_bytes(model, {**shared, "fc3.weight": 5})
    loaded = cz.decode_bytes(data)
    assert_bit_equal(plain_state_dict(model)[0], loaded["state_dict"])
    assert not loaded["masks"]["fc3.weight"].any()


def test_a_tensor_with_more_values_than_its_codebook_is_refused():
    model = pruned_model("lenet_300_100", 0.1)
    with pytest.raises(ValueError, match="distinct kept values"):
        cz.compressed_bytes(model, {"fc1.weight": 5})


def _rewrite(data: bytes, edit) -> bytes:
    """The file with its header edited and a valid checksum: damage the CRC cannot see."""
    (length,) = struct.unpack("<I", data[8:12])
    header = json.loads(zlib.decompress(data[12:12 + length]))
    edit(header)
    packed = zlib.compress(json.dumps(header).encode())
    body = data[:8] + struct.pack("<I", len(packed)) + packed + data[12 + length:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def _first_shared(header):
    return next(t for t in header["tensors"] if t["store"] == "shared")


DAMAGE = {
    "flipped byte": lambda d: d[:len(d) // 2] + bytes([d[len(d) // 2] ^ 1]) + d[len(d) // 2 + 1:],
    "truncated": lambda d: d[:-10],
    "empty": lambda d: b"",
    "not this format": lambda d: b"PK\x03\x04" + d[4:],
    "index count": lambda d: _rewrite(d, lambda h: _first_shared(h)["indices"].update(count=3)),
    "segment outside": lambda d: _rewrite(d, lambda h: _first_shared(h).update(codebook=[10**9, 4])),
    "wrong shape": lambda d: _rewrite(d, lambda h: _first_shared(h).update(shape=[3, 3])),
    "bad code lengths": lambda d: _rewrite(d, lambda h: [
        s.update(lengths=[1] * len(s["lengths"])) for t in h["tensors"]
        for s in (t.get("indices", {}), t.get("structure", {})) if s.get("coding") == "huffman"]),
    "unknown store": lambda d: _rewrite(d, lambda h: h["tensors"][0].update(store="magic")),
    "version": lambda d: _rewrite(d, lambda h: h.update(version=99)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_file_is_one_user_error(tmp_path, damage):
    model = pruned_model("lenet_300_100", 0.05)
    sharing = WeightSharing()
    shared = sharing.share(model)
    sharing.finalize(model)
    data, _ = cz.compressed_bytes(model, shared)
    path = tmp_path / "damaged.compressed"
    path.write_bytes(DAMAGE[damage](data))
    with pytest.raises(UserError) as error:
        cz.load_compressed(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_damaged_file_exits_2_through_the_export_script(tmp_path, capsys):
    from utils import export
    model = pruned_model("lenet_300_100", 0.05)
    data, _ = cz.compressed_bytes(model, {})
    path = tmp_path / "x.compressed"
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    code, _ = run_script(export.main, [f"--load_folder_model={path}", "--format", "state_dict"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "checksum" in err[0]


# ---------------------------------------------------------------- pruning.py end to end

def test_pruning_quantize_writes_a_bit_exact_compressed_file(trained_checkpoint, capsys):
    import pruning
    path, ckpt_dir, data_dir = trained_checkpoint("lenet_300_100")
    code, result = run_script(pruning.main, [
        f"--load_folder_model={path}", f"--checkpoint_dir={ckpt_dir}", f"--data_dir={data_dir}",
        "--no_download", "--no_verify_data", "--pruning_method=songhan", "--cut_rate=0.9",
        "--epochs=1", "--batch_size=64", "--quantize_bits_fc=4", "--quantize_epochs=1",
        "--inference_sampling=2", "--inference_batch_size=8", "--no_progress"])
    assert code == 0
    figures = result["compression"]
    out = capsys.readouterr().out
    assert "pruned + quantized + Huffman" in out and "dense float32 weights" in out
    sizes = figures["sizes"]
    assert sizes["dense"] == 266_610 * 4
    assert sizes["huffman"] <= sizes["quantized"] < sizes["pruned"] < sizes["dense"]
    assert figures["accuracy"]["huffman"] == figures["accuracy"]["quantized"]
    loaded = cz.load_compressed(figures["path"])
    model = build_model(loaded)
    for key, mask in loaded["masks"].items():
        assert len(torch.unique(loaded["state_dict"][key][mask])) <= 16
    # the compressed model is the pruned one, shared: same masks as the pruned checkpoint
    from utils.checkpoints import load_checkpoint
    pruned = load_checkpoint(result["path"])
    assert pruned["masks"].keys() == loaded["masks"].keys()
    for key in pruned["masks"]:
        assert torch.equal(pruned["masks"][key], loaded["masks"][key])
    assert model.config() == pruned["config"]
    # The pruned stage is the checkpoint as it stays on disk, in the figures and as printed
    assert sizes["pruned"] == Path(result["path"]).stat().st_size == result["sizes"]["after"]
    assert f"{sizes['pruned']:>11,}" in out.split("pruned + quantized")[0]


def test_a_quantize_option_implies_quantize_and_bad_bits_exit_2(capsys):
    import pruning
    args = pruning.get_args_parser().parse_args(["--load_folder_model=x", "--quantize_bits_fc=4"])
    assert args.quantize and args.quantize_bits_fc == 4 and args.quantize_bits_conv == 8
    assert not pruning.get_args_parser().parse_args(["--load_folder_model=x"]).quantize
    code, _ = run_script(pruning.main, ["--load_folder_model=x", "--quantize_bits_conv=9"])
    assert code == 2
    assert "--quantize_bits_conv" in capsys.readouterr().err

