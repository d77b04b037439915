"""How much the data path adds to training: one epoch through the project's BatchLoader
(shuffled gather, plus batch-wise crop/flip for CIFAR-10-shaped data) divided by the same
training steps over batches made in advance. Target: at most 1.10.

    python benchmarks/data_overhead.py                 # LeNet-300-100 on MNIST (needs MNIST)
    python benchmarks/data_overhead.py --dataloader    # also torchvision's per-sample DataLoader

Repetitions alternate between the two paths so machine noise hits both alike; medians are quoted.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from utils.data import BatchLoader, Split, load_dataset  # noqa: E402
from utils.training import make_optimizer  # noqa: E402


def _step(model, optimizer, images, labels):
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _epoch(model, optimizer, batches) -> float:
    start = time.perf_counter()
    for images, labels in batches:
        _step(model, optimizer, images, labels)
    return time.perf_counter() - start


def measure(model_name: str, split: Split, augment: bool, batch_size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = models.create_model(model_name, tuple(split.images.shape[1:]), 10).train()
    optimizer = make_optimizer("adam", model.parameters(), 1e-3)
    loader = BatchLoader(split, batch_size, shuffle=True, augment=augment,
                         generator=torch.Generator().manual_seed(0))
    # The same number and size of batches, sliced and contiguous before the clock starts.
    premade = [(split.images[i:i + batch_size].clone(), split.labels[i:i + batch_size].clone())
               for i in range(0, len(split), batch_size)]
    _epoch(model, optimizer, premade)  # warm-up: allocator, kernels, optimizer state
    loader_times, premade_times = [], []
    for _ in range(repeats):
        loader_times.append(_epoch(model, optimizer, loader))
        premade_times.append(_epoch(model, optimizer, premade))
    ratios = [a / b for a, b in zip(loader_times, premade_times)]
    return {"loader_s": statistics.median(loader_times), "premade_s": statistics.median(premade_times),
            "ratio": statistics.median(ratios)}


def measure_dataloader(data_dir: str, batch_size: int) -> float:
    """One LeNet-300-100 epoch through torchvision's MNIST + ToTensor + DataLoader, for scale."""
    import torchvision
    from torchvision import transforms
    dataset = torchvision.datasets.MNIST(data_dir, train=True, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = models.create_model("lenet_300_100", (1, 28, 28), 10).train()
    return _epoch(model, make_optimizer("adam", model.parameters(), 1e-3), loader)


def main():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", default="./data",
                        help="where MNIST is (never downloaded; CIFAR-10-shaped data is random)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed epochs per path, alternating loader and premade; medians quoted")
    parser.add_argument("--batch_size", type=int, default=256, help="training batch size")
    parser.add_argument("--dataloader", action="store_true",
                        help="also time torchvision's per-sample DataLoader with PIL transforms")
    args = parser.parse_args()

    train, _, _ = load_dataset("mnist", args.data_dir, download=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} alternating repeats")
    rows = [("lenet_300_100", "MNIST (60,000)", measure("lenet_300_100", train, False, args.batch_size,
                                                         args.repeats))]
    # CIFAR-10-shaped tensors (no CIFAR-10 on this machine): the augmentation path's own cost.
    g = torch.Generator().manual_seed(0)
    cifar_like = Split(torch.randn(10_000, 3, 32, 32, generator=g), torch.randint(0, 10, (10_000,), generator=g))
    rows.append(("lenet_5", "CIFAR-10-shaped (10,000), crop+flip",
                 measure("lenet_5", cifar_like, True, args.batch_size, args.repeats)))
    print(f"{'model':<15} {'data':<38} {'loader s':>9} {'premade s':>10} {'ratio':>7}")
    for model_name, label, r in rows:
        print(f"{model_name:<15} {label:<38} {r['loader_s']:>9.3f} {r['premade_s']:>10.3f} {r['ratio']:>7.3f}")
    if args.dataloader:
        seconds = measure_dataloader(args.data_dir, args.batch_size)
        print(f"torchvision DataLoader + ToTensor, one LeNet-300-100 epoch: {seconds:.2f} s "
              f"({seconds / rows[0][2]['premade_s']:.1f}x the premade-tensor epoch)")


if __name__ == "__main__":
    main()
