"""Deep Compression's trained quantization (Han et al., ICLR 2016, Section 3), the step after
pruning: the surviving weights of each layer share 2^b values found by k-means, the shared
values (centroids) are fine-tuned, and the result is written as a compressed file.

- Clustering: per conv/linear weight, the kept entries only (pruned zeros stay zero and are not
  a cluster), k = 2^b centroids initialised linearly over [min, max] (the paper's best
  initialisation: it keeps the rare large weights, which matter most, as centroids), then
  Lloyd's algorithm. The data is one-dimensional, so a few lines of torch do it exactly:
  centroids stay sorted, the nearest centroid of every weight is one torch.bucketize against the
  midpoints, and the new centroids are index_add sums over counts; it runs on the weights' own
  device. scikit-learn's KMeans would be a dependency (it is not one) for the same result, and
  it would not use the 1-D shortcut.
- Fine-tuning: each layer's weight becomes a torch.nn.utils.parametrize parametrization of its
  codebook, ``weight = codebook[index]`` where kept and exactly +0.0 where pruned, so autograd
  gives each centroid the sum of the gradients of the weights that share it (the paper's
  Figure 3), and the shared training loop (PruneContext.retrain) trains the codebooks with the
  run's optimizer. Biases and BatchNorm parameters keep training as usual (they stay float32).
  Afterwards the parametrization is made permanent and the pruning masks are put back.
- Bits: --quantize_bits_conv (default 8) and --quantize_bits_fc (default 5), as the paper's
  Tables 2 and 3; 0 leaves that kind of layer unshared (float32 values in the file).

``compress_and_export`` is pruning.py's step after the pruned checkpoint is saved: weight
sharing, fine-tuning, the compressed file (utils/checkpoints/compressed.py) read back and
checked bit for bit, the size and accuracy of every stage, and --export (utils/export.py).
"""
import argparse
import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from torch.nn.utils import parametrize

import models
from models.base import weight_layers
from utils import cli
from utils.checkpoints import build_model
from utils.checkpoints.compressed import (MAX_SHARED_BITS, SUFFIX, compressed_bytes,
                                          load_compressed, save_compressed)
from utils.errors import UserError
from utils.masks import detached_copy, mask_of, plain_state_dict
from utils.reporting.console import print_rows
from utils.training import evaluate

DEFAULT_BITS_CONV = 8
DEFAULT_BITS_FC = 5
DEFAULT_EPOCHS = 3
KMEANS_ITERATIONS = 300


# ---------------------------------------------------------------- k-means in one dimension

def cluster_means(values: torch.Tensor, assign: torch.Tensor, clusters: int,
                  fallback: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of the values of each cluster (summed in float64); ``fallback`` (or 0) where a
    cluster is empty."""
    sums = torch.zeros(clusters, dtype=torch.float64, device=values.device)
    sums.index_add_(0, assign, values.double())
    counts = torch.bincount(assign, minlength=clusters)
    means = (sums / counts.clamp(min=1)).to(values.dtype)
    if fallback is not None:
        means = torch.where(counts > 0, means, fallback)
    return means


def kmeans_1d(values: torch.Tensor, clusters: int,
              iterations: int = KMEANS_ITERATIONS) -> Tuple[torch.Tensor, torch.Tensor]:
    """(centroids, cluster of every value): Lloyd's algorithm from centroids spaced linearly
    over [min, max]. Clusters left empty are dropped, so there are at most ``clusters``
    centroids, each the mean of its members."""
    values = values.reshape(-1)
    if values.numel() == 0:
        return values.new_zeros(0), torch.zeros(0, dtype=torch.long, device=values.device)
    centroids = torch.linspace(float(values.min()), float(values.max()), clusters,
                               dtype=values.dtype, device=values.device)
    for _ in range(iterations):
        # Sorted centroids: the nearest one is found against the midpoints between them.
        assign = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        updated = cluster_means(values, assign, clusters, fallback=centroids).sort().values
        if torch.equal(updated, centroids):
            break
        centroids = updated
    assign = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
    used = torch.bincount(assign, minlength=clusters) > 0
    renumber = torch.cumsum(used.long(), 0) - 1
    assign = renumber[assign]
    count = int(used.sum())
    return cluster_means(values, assign, count), assign


class SharedWeight(nn.Module):
    """A torch.nn.utils.parametrize parametrization: the layer's trainable tensor is its codebook
    and ``weight = codebook[index]`` where kept, +0.0 where pruned. The backward pass of the
    gather sums, into each centroid, the gradients of all the weights that share it."""

    def __init__(self, index: torch.Tensor, keep: torch.Tensor, clusters: int):
        super().__init__()
        self.register_buffer("index", index.to(torch.long))
        self.register_buffer("keep", keep.to(torch.bool))
        self.clusters = int(clusters)

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        shared = codebook.index_select(0, self.index.reshape(-1)).reshape(self.keep.shape)
        return torch.where(self.keep, shared, codebook.new_zeros(()))

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The codebook closest to ``weight`` for these clusters: each centroid the mean of its
        members (for a shared weight, exactly its codebook)."""
        return cluster_means(weight[self.keep].detach(), self.index[self.keep], self.clusters)


# ---------------------------------------------------------------- weight sharing of a model

@dataclasses.dataclass
class WeightSharing:
    """k-means weight sharing of every conv and linear weight of a model; 0 bits leaves that
    kind of layer unshared."""
    bits_conv: int = DEFAULT_BITS_CONV
    bits_fc: int = DEFAULT_BITS_FC
    iterations: int = KMEANS_ITERATIONS

    def __post_init__(self):
        for name, bits in (("bits_conv", self.bits_conv), ("bits_fc", self.bits_fc)):
            if not 0 <= int(bits) <= MAX_SHARED_BITS:
                raise UserError(f"{name} must be from 0 (off) to {MAX_SHARED_BITS}, got {bits}")

    def targets(self, model: nn.Module) -> List[Tuple[str, nn.Module, int]]:
        """(weight's state_dict key, layer, bits) of every layer to share."""
        chosen = []
        for name, module in weight_layers(model):
            bits = self.bits_conv if isinstance(module, nn.Conv2d) else self.bits_fc
            if bits:
                chosen.append((f"{name}.weight" if name else "weight", module, int(bits)))
        return chosen

    @torch.no_grad()
    def share(self, model: nn.Module) -> Dict[str, int]:
        """Cluster each target's kept weights and put the SharedWeight parametrization on it, in
        place. A pruning mask moves into the parametrization (and comes back in ``finalize``).
        Returns {weight key: bits}."""
        shared = {}
        for key, module, bits in self.targets(model):
            mask = mask_of(module, "weight")
            masked = mask is not None
            if masked:
                keep = mask.bool().clone()
                prune.remove(module, "weight")
                module.weight.masked_fill_(~keep, 0.0)
            else:
                keep = torch.ones_like(module.weight, dtype=torch.bool)
            if not keep.any():
                if masked:
                    prune.custom_from_mask(module, "weight", keep)
                continue  # nothing left to share: stored as a sparse tensor
            centroids, assign = kmeans_1d(module.weight[keep], 1 << bits, self.iterations)
            index = torch.zeros(keep.shape, dtype=torch.long, device=keep.device)
            index[keep] = assign
            parametrize.register_parametrization(module, "weight",
                                                 SharedWeight(index, keep, len(centroids)))
            module._shared_masked = masked
            shared[key] = bits
        return shared

    @staticmethod
    @torch.no_grad()
    def finalize(model: nn.Module) -> None:
        """Make the shared weights plain tensors again (their values exactly codebook[index])
        and put back the pruning masks they came with."""
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight") and isinstance(
                    module.parametrizations.weight[0], SharedWeight):
                keep = module.parametrizations.weight[0].keep.clone()
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
                if getattr(module, "_shared_masked", False):
                    prune.custom_from_mask(module, "weight", keep)
                    del module._shared_masked

    @staticmethod
    def codebooks(model: nn.Module) -> Dict[str, torch.Tensor]:
        """The codebooks of the shared layers while they are parametrized, by weight key."""
        return {f"{name}.weight" if name else "weight": module.parametrizations.weight.original
                for name, module in model.named_modules()
                if parametrize.is_parametrized(module, "weight")
                and isinstance(module.parametrizations.weight[0], SharedWeight)}


def quantize(model: nn.Module, context, sharing: WeightSharing, epochs: int,
             learning_rate: Optional[float] = None) -> Tuple[Dict[str, int], float, list]:
    """Weight sharing in place, ``epochs`` of centroid fine-tuning through the shared training
    loop, then made permanent. Returns ({weight key: bits}, test accuracy before fine-tuning,
    the fine-tuning history)."""
    shared = sharing.share(model)
    acc_clustered = evaluate(model, context.test)["acc"]
    if learning_rate is not None:
        context = dataclasses.replace(context, settings=context.settings.replace(
            learning_rate=learning_rate))
    history = context.retrain(model, epochs=epochs, phase="quantize") if shared else []
    sharing.finalize(model)
    return shared, acc_clustered, history


# ---------------------------------------------------------------- pruning.py's step

class _ImpliesQuantize(argparse.Action):
    """A weight-sharing option given without --quantize turns it on (rather than being
    silently ignored)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.quantize = True


def add_compression_args(parser) -> None:
    """pruning.py's flags for weight sharing, the compressed file and export."""
    from utils.export import add_export_arg
    group = parser.add_argument_group(
        "weight sharing and compressed file (Deep Compression, Han et al. 2016)")
    group.add_argument("--quantize", action="store_true",
                       help="after pruning: k-means weight sharing of each layer's surviving "
                            "weights, centroid fine-tuning, and a compressed file (relative "
                            f"indices or bitmask, codebooks, Huffman coding; <checkpoint>{SUFFIX}) "
                            "with the size and accuracy of every stage")
    group.add_argument("--quantize_bits_conv", type=cli.int_in(0, MAX_SHARED_BITS),
                       default=DEFAULT_BITS_CONV, action=_ImpliesQuantize,
                       help="bits b of conv layers' codebooks (2^b shared values per layer; "
                            "0: unshared float32); implies --quantize")
    group.add_argument("--quantize_bits_fc", type=cli.int_in(0, MAX_SHARED_BITS),
                       default=DEFAULT_BITS_FC, action=_ImpliesQuantize,
                       help="bits b of fully connected layers' codebooks (0: unshared float32); "
                            "implies --quantize")
    group.add_argument("--quantize_epochs", type=cli.non_negative_int, default=DEFAULT_EPOCHS,
                       action=_ImpliesQuantize,
                       help="epochs of centroid fine-tuning through the training loop; "
                            "implies --quantize")
    group.add_argument("--quantize_learning_rate", type=cli.positive_float, default=None,
                       action=_ImpliesQuantize,
                       help="learning rate of the centroid fine-tuning (default: the retraining "
                            "learning rate); implies --quantize")
    add_export_arg(group)


def dense_float32_bytes(config: dict) -> Tuple[int, int]:
    """(parameters, bytes as float32) of the architecture at its original widths: what Deep
    Compression's ratios are against (LeNet-300-100: 266,610 x 4 = 1,066,440 bytes)."""
    def count(device):
        with torch.device(device):
            model = models.create_model(config["model"], config["input_shape"],
                                        config["num_classes"], None, **config.get("options", {}))
        return sum(p.numel() for p in model.parameters())
    try:
        parameters = count("meta")  # no memory for the weights
    except Exception:  # an architecture whose construction needs real tensors
        parameters = count("cpu")
    return parameters, 4 * parameters


def _bits_per(byte_count: int, kept: int) -> str:
    return f"{8 * byte_count / kept:.1f}" if kept else "-"


def _layer_rows(fixed_stats: List[dict], stats: List[dict]) -> List[str]:
    """Per shared or sparse tensor, as the paper's Tables 2-3: kept fraction, codebook, bits per
    kept weight of the cluster indices and of the structure, fixed-width -> Huffman."""
    lines = [f"  {'tensor':<18} {'weights':>10} {'kept':>7} {'codebook':>8}  "
             f"{'index bits P+Q -> +H':>20}  {'structure bits P+Q -> +H (form)':>32}"]
    for fixed, final in zip(fixed_stats, stats):
        if final["store"] == "raw":
            continue
        kept = final["kept"]
        index = (f"{_bits_per(fixed['index_bytes'], kept)} -> {_bits_per(final['index_bytes'], kept)}"
                 if final["store"] == "shared" else "float32")
        structure = (f"{_bits_per(fixed['structure_bytes'], kept)} -> "
                     f"{_bits_per(final['structure_bytes'], kept)} ({final['structure']})")
        lines.append(f"  {final['name']:<18} {final['entries']:>10,} {kept / final['entries']:>7.1%} "
                     f"{final.get('codebook', '-'):>8}  {index:>20}  {structure:>32}")
    return lines


def _bit_exact(model: nn.Module, decoded: nn.Module) -> List[str]:
    """Tensors whose decoded bits differ from the model's (sign of zero included)."""
    ours, _ = plain_state_dict(model)
    theirs, _ = plain_state_dict(decoded)
    differ = [key for key in ours if key not in theirs or ours[key].shape != theirs[key].shape
              or not torch.equal(_bits(ours[key]), _bits(theirs[key]))]
    return differ + [key for key in theirs if key not in ours]


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.is_floating_point():
        return tensor.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])
    return tensor


@dataclasses.dataclass(frozen=True)
class CompressionSettings:
    """What ``compress`` does: codebook bits per kind of layer (0: unshared), epochs of centroid
    fine-tuning, and their learning rate (None: the run's retraining rate)."""
    bits_conv: int = DEFAULT_BITS_CONV
    bits_fc: int = DEFAULT_BITS_FC
    epochs: int = DEFAULT_EPOCHS
    learning_rate: Optional[float] = None

    def __post_init__(self):
        WeightSharing(self.bits_conv, self.bits_fc)  # checks the bits
        if int(self.epochs) < 0:
            raise UserError(f"epochs must be zero or more, got {self.epochs}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise UserError(f"learning_rate must be positive, got {self.learning_rate}")

    @classmethod
    def from_args(cls, args) -> Optional["CompressionSettings"]:
        """pruning.py's --quantize* flags; None without --quantize."""
        if not getattr(args, "quantize", False):
            return None
        return cls(args.quantize_bits_conv, args.quantize_bits_fc, args.quantize_epochs,
                   args.quantize_learning_rate)


def compress(model: nn.Module, checkpoint: dict, saved: Path, context,
             settings: CompressionSettings = CompressionSettings(),
             print_fn=print) -> Tuple[dict, nn.Module]:
    """Weight sharing and fine-tuning of a copy of the pruned ``model``, the compressed file
    next to the pruned checkpoint ``saved``, read back and checked bit for bit; prints the stages.
    Returns (figures for the metrics, the decoded model)."""
    sharing = WeightSharing(settings.bits_conv, settings.bits_fc)
    quantized = detached_copy(model)
    test = context.test
    rate = settings.learning_rate or context.settings.learning_rate
    epochs = settings.epochs
    print_fn(f"\nweight sharing: k-means of each layer's kept weights ({settings.bits_conv} "
             f"bits conv, {settings.bits_fc} bits fc; 0 = unshared), then "
             f"{epochs} epoch{'' if epochs == 1 else 's'} of centroid "
             f"fine-tuning at learning rate {rate:g}")
    shared, acc_clustered, history = quantize(quantized, context, sharing, epochs, rate)
    acc_quantized = evaluate(quantized, test)["acc"]
    metrics = checkpoint.get("metrics", {})
    acc_dense = metrics.get("before", {}).get("top1_acc")
    acc_pruned = metrics.get("after", {}).get("top1_acc")
    info = {"dataset": checkpoint.get("dataset"), "parent": saved.name,
            "root_learning_rate": checkpoint.get("root_learning_rate"),
            "metrics": {"acc_pruned": acc_pruned, "acc_clustered": acc_clustered,
                        "acc_quantized": acc_quantized},
            "quantization": {"bits_conv": settings.bits_conv, "bits_fc": settings.bits_fc,
                             "epochs": epochs, "learning_rate": rate}}
    fixed, fixed_stats = compressed_bytes(quantized, shared, huffman=False, **info)
    path, stats = save_compressed(quantized, saved.with_name(saved.stem + SUFFIX), shared, **info)
    loaded = load_compressed(path)
    decoded = build_model(loaded, device=next(quantized.parameters()).device)
    differ = _bit_exact(quantized, decoded)
    if differ:  # a bug, not a user's error: the file must not claim to be what it is not
        path.unlink()
        raise RuntimeError(f"the compressed file does not decode to the quantized model "
                           f"({', '.join(differ)} differ); removed it")
    acc_decoded = evaluate(decoded, test)["acc"]
    parameters, dense_bytes = dense_float32_bytes(model.config())
    sizes = {"dense": dense_bytes, "pruned": saved.stat().st_size, "quantized": len(fixed),
             "huffman": path.stat().st_size}
    accuracy = {"dense": acc_dense, "pruned": acc_pruned, "quantized": acc_quantized,
                "huffman": acc_decoded}

    def row(stage, note):
        acc = accuracy[stage]
        return (f"{sizes[stage]:>11,}  {dense_bytes / sizes[stage]:>6.1f}x  "
                f"{'' if acc is None else f'{acc:.2%}':>8}  {note}")

    print_fn(f"\nDeep Compression stages (whole files; ratio against the dense float32 weights, "
             f"{parameters:,} parameters x 4 bytes; top-1 test accuracy)")
    print_rows([
        ("stage", f"{'bytes':>11}  {'ratio':>7}  {'top-1':>8}"),
        ("dense float32 weights", row("dense", "(accuracy: the model this run loaded)")),
        ("pruned", row("pruned", f"(the pruned checkpoint, {saved.name})")),
        ("pruned + quantized", row("quantized", f"(fixed-width codes; {acc_clustered:.2%} before "
                                                "centroid fine-tuning)")),
        ("pruned + quantized + Huffman", row("huffman", f"(the file {path.name}, decoded: "
                                                        "bit-exact)")),
    ], print_fn)
    print_fn("\nper layer (bits per kept weight: fixed-width P+Q -> Huffman-coded +H)")
    for line in _layer_rows(fixed_stats, stats):
        print_fn(line)
    figures = {"path": str(path), "sizes": sizes, "accuracy": accuracy,
               "acc_clustered": acc_clustered, "dense_parameters": parameters,
               "ratio": dense_bytes / sizes["huffman"], "shared": shared,
               "fine_tuning": [h.get("test_acc") for h in history]}
    return figures, decoded


def compress_and_export(model: nn.Module, checkpoint: dict, saved, context,
                        compression: Optional[CompressionSettings] = None,
                        export_formats: Sequence[str] = (), print_fn=print) -> dict:
    """pruning.py's step after the pruned checkpoint ``saved`` is written: weight sharing and the
    compressed file when ``compression`` is given, then the ``export_formats`` (of the quantized
    model when there is one). ``model`` is left as it is. Returns {"compression": ...,
    "export": ...} for the metrics (empty when neither was asked)."""
    results = {}
    saved = Path(saved)
    final = None
    if compression is not None:
        results["compression"], final = compress(model, checkpoint, saved, context, compression,
                                                 print_fn)
    if export_formats:
        from utils.export import COMPARE_IMAGES, export_model
        stem = saved.with_name(saved.stem + ("_quantized" if final is not None else ""))
        results["export"] = export_model(final if final is not None else model, stem,
                                         export_formats,
                                         context.test.first_images(COMPARE_IMAGES), print_fn)
    return results
