"""Prune attention heads and MLP width of a torchvision ViT in your own loop, save it, load it back.

    PYTHONPATH=/path/to/this/checkout python examples/prune_vit.py

The data here are random images (nothing is downloaded); put your own DataLoader in ``batches``.
Each block's heads are one group (a head's query, key and value rows, its columns of the output
projection) and each block's MLP hidden width another; ``compact()`` removes the selection and
the loaded model has the smaller head counts without any attribute set by hand. With
``--attention=head_width`` every head keeps its place and loses as many query/key and value
dimensions as the others instead. The README's "Use from Python" section shows this file's
middle part.
"""
import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer

from pruners import ChannelPruner
from utils.checkpoints import load_model, save_model
from utils.transformers import attention_widths

# A small ViT so that the example runs in seconds on a laptop; torchvision.models.vit_b_16 goes
# through the same calls (builder="torchvision.models.vit_b_16").
VIT = dict(image_size=32, patch_size=8, num_layers=4, num_heads=6, hidden_dim=96, mlp_dim=384,
           num_classes=10)


def random_batches(count: int, size: int, classes: int = 10, batch: int = 16):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=generator),
             torch.randint(0, classes, (batch,), generator=generator)) for _ in range(count)]


def head_counts(model):
    return [block.self_attention.num_heads for block in model.encoder.layers]


def head_widths(model):
    """(query/key, value) width of a head, per block."""
    return [attention_widths(a.num_heads, a.in_proj_weight.shape[0], a.out_proj.weight.shape[1])
            for a in (block.self_attention for block in model.encoder.layers)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8, help="batches per epoch")
    parser.add_argument("--rate", type=float, default=0.5, help="fraction of heads and MLP width")
    parser.add_argument("--attention", choices=("heads", "head_width"), default="heads",
                        help="prune whole heads, or the width of every head")
    parser.add_argument("--output", default=None, help="where to save (default: a temporary folder)")
    args = parser.parse_args(argv)
    batches = random_batches(args.batches, VIT["image_size"])

    model = VisionTransformer(**VIT)
    pruner = ChannelPruner(model, batches[0][0], criterion="l1norm", rate=args.rate,
                           attention=args.attention)
    # Per block: its heads (units of q, k, v rows) and its MLP width; the embedding stream
    # (conv_proj) only with prune_residual=True.
    print("pruned groups:", ", ".join(f"{g.name} ({len(g.units)})" for g in pruner.prunable))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        model.train()
        for images, labels in batches:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        pruner.step()                       # zero the weakest heads and MLP channels of each block
    small = pruner.compact()                # fewer heads, narrower MLPs, checked against the masked model
    path = Path(args.output or tempfile.mkdtemp()) / "vit_pruned.pt"
    save_model(small, path, builder="torchvision.models.vision_transformer:VisionTransformer",
               builder_kwargs=VIT, epochs=args.epochs)
    loaded = load_model(path)               # rebuilt from the file alone: heads and widths from its structure
    assert head_counts(loaded) == head_counts(small)  # [3, 3, 3, 3] at rate 0.5: num_heads follows
    assert head_widths(loaded) == head_widths(small)

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    images = batches[0][0]
    with torch.no_grad():
        same = float((small.eval()(images) - loaded.eval()(images)).abs().max())
    print(f"heads per block {head_counts(model)} -> {head_counts(loaded)}; (query/key, value) "
          f"width of a head {head_widths(model)} -> {head_widths(loaded)}; MLP width "
          f"{[b.mlp[0].out_features for b in model.encoder.layers]} -> "
          f"{[b.mlp[0].out_features for b in loaded.encoder.layers]}")
    print(f"parameters {count(model):,} -> {count(small):,}; compact vs masked model "
          f"{pruner.compact_difference:.1e} of the largest output; saved {path} "
          f"({path.stat().st_size:,} bytes), loaded back: outputs differ by {same:.1e}")
    return {"dense": count(model), "compact": count(small), "loaded": count(loaded),
            "heads": head_counts(loaded), "head_widths": head_widths(loaded), "difference": same, "path": str(path)}


if __name__ == "__main__":
    main()
