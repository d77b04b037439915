"""Prune torchvision's MobileNetV2 in your own training loop, save it, load it back.

    PYTHONPATH=/path/to/this/checkout python examples/prune_mobilenet_v2.py

The data here are random images (nothing is downloaded); put your own DataLoader in ``batches``.
Soft FPGM: train an epoch, then ``pruner.step()`` zeroes the filters nearest each group's
geometric median; ``compact()`` removes them and checks that the smaller model computes what the
masked one does. The README's "Use from Python" section is this file's middle part.
"""
import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from pruners import ChannelPruner
from utils.checkpoints import load_model, save_model


def random_batches(count: int, size: int, classes: int = 10, batch: int = 16):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=generator),
             torch.randint(0, classes, (batch,), generator=generator)) for _ in range(count)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8, help="batches per epoch")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--output", default=None, help="where to save (default: a temporary folder)")
    args = parser.parse_args(argv)
    batches = random_batches(args.batches, args.image_size)

    model = torchvision.models.mobilenet_v2(num_classes=10)
    pruner = ChannelPruner(model, batches[0][0], criterion="fpgm", rate=0.3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for epoch in range(args.epochs):
        model.train()
        for images, labels in batches:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        pruner.step()                       # soft FPGM: zero the selection after each epoch
    small = pruner.compact()                # a smaller MobileNetV2, checked against the masked one
    path = Path(args.output or tempfile.mkdtemp()) / "mobilenet_v2_pruned.pt"
    save_model(small, path, builder="torchvision.models.mobilenet_v2",
               builder_kwargs={"num_classes": 10}, epochs=args.epochs)
    loaded = load_model(path)               # rebuilt from the file alone, no pickled module

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    images = batches[0][0]
    with torch.no_grad():
        same = float((small.eval()(images) - loaded.eval()(images)).abs().max())
    print(f"parameters {count(model):,} -> {count(small):,}; compact vs masked model "
          f"{pruner.compact_difference:.1e} of the largest output; saved {path} "
          f"({path.stat().st_size:,} bytes), loaded back: outputs differ by {same:.1e}")
    return {"dense": count(model), "compact": count(small), "loaded": count(loaded),
            "difference": same, "path": str(path)}


if __name__ == "__main__":
    main()
