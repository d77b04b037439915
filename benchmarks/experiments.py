"""What benchmarks/reproduce.py runs: one Experiment per row of the README's results tables (plus
the sweep behind the accuracy-vs-weights-kept plot), the groups ``--only`` accepts, and the flags
each run gets."""
import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from utils.errors import UserError

INFERENCE_BATCH = 256        # every run times forward passes of this many test images


@dataclass(frozen=True)
class Experiment:
    """One run. ``flags`` are the script's own flags for the full run, ``quick`` those for the
    smoke run; the runner adds the common ones (paths, seed, timing, no progress bars)."""
    id: str
    title: str
    script: str                       # "baseline" or "pruning"
    model: str
    flags: Tuple[str, ...]
    quick: Tuple[str, ...]
    parent: Optional[str] = None      # the experiment whose checkpoint is pruned
    reference: Optional[dict] = None  # the reference README's row
    paper: Optional[dict] = None      # the paper's figure
    in_results_table: bool = True     # False: sweep points, shown in the plot and kept table only
    dataset: str = "mnist"
    study: Optional[str] = None       # a side table of the report: equal_terms, deep_compression,
    #                                   sensitivity (none: only the main tables)
    rates_from: Optional[str] = None  # a sensitivity experiment whose record gives this run's rates:
    rates_as: str = "layer"           # "layer": its --layer_rates; "global": one --cut_rate with
    #                                   the same overall compression of the analysed weights


# Reference README: only its Top1 Acc figures are known here; every other cell is n/a.
# Han et al. 2015, Table 1 (error, parameters) and Tables 2-3 (total FLOP%); He et al. 2019.
HAN_LENET_300 = {"source": "Han et al. 2015", "dataset": "MNIST", "model": "LeNet-300-100"}
HAN_LENET_5 = {"source": "Han et al. 2015", "dataset": "MNIST", "model": "LeNet-5 (Caffe)"}

BASELINE = ("--dataset=mnist", "--learning_rate=0.001", "--batch_size=256")
LENET_5_BASELINE = ("--dataset=mnist", "--learning_rate=0.005", "--batch_size=256")
RETRAIN = ("--batch_size=256",)  # retraining rate: pruning.py's default, a tenth of the baseline's


# ResNet-20 on Fashion-MNIST: about 130 s per epoch on this 2-core CPU when it is idle. Few
# epochs, so the soft-pruned runs end with one epoch of fine-tuning of the compact model (the
# last soft zeroing has had no epoch to recover from).
RESNET20_EPOCHS = 6
RESNET20_FPGM_EPOCHS = 3
MOBILENET_EPOCHS = 4
MOBILENET_PRUNE_EPOCHS = 2
# A small ViT (torchvision's VisionTransformer class: patch 7 on 28x28, so 16 tokens and a class
# token; 6 layers, 6 heads of width 32, MLP 768; 2.7M parameters) trains at about 2.5 min per
# Fashion-MNIST epoch on this 2-core CPU: sized for that, not for the best accuracy.
VIT_TINY = "torchvision.models.vision_transformer:VisionTransformer"
VIT_TINY_KWARGS = {"image_size": 28, "patch_size": 7, "num_layers": 6, "num_heads": 6,
                   "hidden_dim": 192, "mlp_dim": 768}
VIT_EPOCHS = 8
VIT_PRUNE_EPOCHS = 2


def songhan(rate, rounds: int, epochs: int, *extra: str) -> Tuple[str, ...]:
    """pruning.py flags of a songhan run: --cut_rate, rounds, retraining epochs per round."""
    return ("--pruning_method=songhan", f"--cut_rate={rate}", f"--pruning_epochs={rounds}",
            f"--epochs={epochs}", *extra) + RETRAIN

# songhan runs whose rates come from a sensitivity record (the runner adds --layer_rates or
# --cut_rate): rounds x epochs only.
SENSITIVITY_RUN = ("--pruning_method=songhan", "--pruning_epochs=2", "--epochs=4") + RETRAIN
SENSITIVITY_QUICK = ("--pruning_method=songhan", "--pruning_epochs=1", "--epochs=1") + RETRAIN

EXPERIMENTS: List[Experiment] = [
    Experiment("baseline_lenet_300_100", "LeNet-300-100 baseline", "baseline", "lenet_300_100",
               BASELINE + ("--epochs=30",), BASELINE + ("--epochs=1",),
               reference={"top1": "98.13%"},
               paper={**HAN_LENET_300, "method": "none", "top1": "98.36% (1.64% error)",
                      "parameters": "267K"}),
    # The reference's tiny LeNet-5 (6 filters, dropout 0.5 twice) underfits at lr 0.001: 98.37%
    # after 30 epochs with train accuracy 94%; at 0.005 it reached 98.74%.
    Experiment("baseline_lenet_5", "LeNet-5 (reference's) baseline", "baseline", "lenet_5",
               LENET_5_BASELINE + ("--epochs=30",), LENET_5_BASELINE + ("--epochs=1",),
               reference={"top1": "98.12%"}),
    Experiment("baseline_lenet_5_caffe", "LeNet-5 (Caffe) baseline", "baseline", "lenet_5_caffe",
               BASELINE + ("--epochs=20",), BASELINE + ("--epochs=1",),
               paper={**HAN_LENET_5, "method": "none", "top1": "99.20% (0.80% error)",
                      "parameters": "431K"}),
    Experiment("songhan_50_lenet_300_100", "LeNet-300-100 songhan 50%", "pruning", "lenet_300_100",
               songhan(0.5, 1, 10), songhan(0.5, 1, 1),
               parent="baseline_lenet_300_100", reference={"method": "songhan, cut 0.5", "top1": "92.72%"}),
    Experiment("songhan_50_lenet_5", "LeNet-5 (reference's) songhan 50%", "pruning", "lenet_5",
               songhan(0.5, 1, 10), songhan(0.5, 1, 1),
               parent="baseline_lenet_5", reference={"method": "songhan, cut 0.5", "top1": "76.07%"}),
    Experiment("songhan_12x_lenet_300_100", "LeNet-300-100 songhan 12x", "pruning", "lenet_300_100",
               songhan(0.92, 4, 10, "--learning_rate=0.0003"), songhan(0.92, 2, 1),
               parent="baseline_lenet_300_100",
               paper={**HAN_LENET_300, "method": "magnitude, 12x", "top1": "98.41% (1.59% error)",
                      "parameters": "267K", "nonzero": "22K (8%)", "flops": "8% (Table 2)"}),
    Experiment("songhan_12x_lenet_5_caffe", "LeNet-5 (Caffe) songhan 12x", "pruning", "lenet_5_caffe",
               songhan(0.92, 3, 8), songhan(0.92, 2, 1),
               parent="baseline_lenet_5_caffe",
               paper={**HAN_LENET_5, "method": "magnitude, 12x", "top1": "99.23% (0.77% error)",
                      "parameters": "431K", "nonzero": "36K (8%)", "flops": "16% (Table 3)"}),
    Experiment("fpgm_40_lenet_5_caffe", "LeNet-5 (Caffe) fpgm 40%", "pruning", "lenet_5_caffe",
               ("--pruning_method=fpgm", "--cut_rate=0.4", "--epochs=10") + RETRAIN,
               ("--pruning_method=fpgm", "--cut_rate=0.4", "--epochs=1") + RETRAIN,
               parent="baseline_lenet_5_caffe",
               paper={"source": "He et al. 2019", "dataset": "CIFAR-10", "model": "ResNet-56",
                      "method": "FPGM", "top1": "-0.10 points", "flops": "-52.6%"}),
    # A residual network with BatchNorm, trained and pruned here on Fashion-MNIST (the FPGM
    # paper's CIFAR-10 is not reachable from this machine).
    Experiment("baseline_resnet20_fashion", "ResNet-20 baseline (Fashion-MNIST)", "baseline",
               "resnet20", ("--dataset=fashion_mnist", "--learning_rate=0.001", "--batch_size=128",
                            f"--epochs={RESNET20_EPOCHS}"),
               ("--dataset=fashion_mnist", "--learning_rate=0.001", "--batch_size=128", "--epochs=1"),
               dataset="fashion_mnist"),
    Experiment("fpgm_40_resnet20_fashion", "ResNet-20 fpgm 40% (Fashion-MNIST)", "pruning", "resnet20",
               ("--pruning_method=fpgm", "--cut_rate=0.4", f"--epochs={RESNET20_FPGM_EPOCHS}",
                "--finetune_epochs=1", "--batch_size=128"),
               ("--pruning_method=fpgm", "--cut_rate=0.4", "--epochs=1", "--batch_size=128"),
               parent="baseline_resnet20_fashion", dataset="fashion_mnist"),
    # With the residual streams, and kept channels in multiples of 8 (what CPU kernels need to
    # turn removed FLOPs into speed; see --channel_multiple).
    Experiment("fpgm_40_residual_resnet20_fashion",
               "ResNet-20 fpgm 40% + residual, x8 channels (Fashion-MNIST)", "pruning", "resnet20",
               ("--pruning_method=fpgm", "--cut_rate=0.4", "--prune_residual=True",
                "--channel_multiple=8", f"--epochs={RESNET20_FPGM_EPOCHS}", "--finetune_epochs=1",
                "--batch_size=128"),
               ("--pruning_method=fpgm", "--cut_rate=0.4", "--prune_residual=True",
                "--channel_multiple=8", "--epochs=1", "--batch_size=128"),
               parent="baseline_resnet20_fashion", dataset="fashion_mnist"),
] + [
    # Methods on equal terms (issue 11): the same baseline record, rate and recipe as
    # fpgm_40_resnet20_fashion; each method keeps its paper's schedule (l1norm fixed, sfp and
    # fpgm soft). FPGM-mix is the FPGM paper's "FPGM-mix 40%": 30% of each layer's filters by
    # geometric median after 10% by smallest norm (--fpgm_norm_rate adds to --cut_rate).
    Experiment(f"{key}_40_resnet20_fashion", f"ResNet-20 {label} 40% (Fashion-MNIST)", "pruning",
               "resnet20",
               method + (f"--epochs={RESNET20_FPGM_EPOCHS}", "--finetune_epochs=1", "--batch_size=128"),
               method + ("--epochs=1", "--batch_size=128"),
               parent="baseline_resnet20_fashion", dataset="fashion_mnist", study="equal_terms")
    for key, label, method in (
        ("l1norm", "l1norm", ("--pruning_method=l1norm", "--cut_rate=0.4")),
        ("sfp", "sfp", ("--pruning_method=sfp", "--cut_rate=0.4")),
        ("fpgm_mix", "FPGM-mix (30% median, 10% norm)",
         ("--pruning_method=fpgm", "--cut_rate=0.3", "--fpgm_norm_rate=0.1")))
] + [
    # Deep Compression (Han et al., ICLR 2016, Table 1): pruning, then weight sharing (8-bit conv,
    # 5-bit fc codebooks, centroids fine-tuned) and a Huffman-coded file. LeNet-300-100: the
    # songhan 12x recipe. LeNet-5 (Caffe): the 12x recipe's rounds and epochs with Han's per-layer
    # rates (Deep Compression Table 3 keeps conv1 66%, conv2 12%, fc1 8%, fc2 19%), and the same
    # with fc1 pruned to 7% (the global 0.92 recipe measured 37.8x earlier, under the paper's 39x).
    Experiment("deep_compression_lenet_300_100", "LeNet-300-100 Deep Compression",
               "pruning", "lenet_300_100",
               songhan(0.92, 4, 10, "--learning_rate=0.0003", "--quantize"),
               songhan(0.92, 2, 1, "--quantize", "--quantize_epochs=1"),
               parent="baseline_lenet_300_100", study="deep_compression"),
] + [
    Experiment(f"deep_compression{key}_lenet_5_caffe", f"LeNet-5 (Caffe) Deep Compression{label}",
               "pruning", "lenet_5_caffe",
               songhan(0.81, 3, 8, f"--layer_rates=conv1=0.34,conv2=0.88,fc1={fc1}", "--quantize"),
               songhan(0.81, 2, 1, f"--layer_rates=conv1=0.34,conv2=0.88,fc1={fc1}", "--quantize",
                       "--quantize_epochs=1"),
               parent="baseline_lenet_5_caffe", study="deep_compression")
    for key, label, fc1 in (("", ", Han's rates", 0.92), ("_fc1_93", ", fc1 cut 0.93", 0.93))
] + [
    # Sensitivity plots (Han et al. 2015, Figure 6): each layer pruned alone, no retraining.
    # LeNet-300-100's baseline holds no validation split: 10% of its training images (optimistic).
    Experiment("sensitivity_lenet_300_100", "LeNet-300-100 sensitivity (magnitude)", "sensitivity",
               "lenet_300_100", ("--val_split=0.1", "--target_compression=12"),
               ("--val_split=0.1", "--rates=0,0.5,0.9,0.95", "--target_compression=12"),
               parent="baseline_lenet_300_100", in_results_table=False, study="sensitivity"),
    # Per-layer rates from sensitivity against one global rate (issue 11): a LeNet-5 (Caffe)
    # baseline that holds out 10% of its training images, the sensitivity analysis on those, and
    # songhan with the proposed --layer_rates against songhan with one --cut_rate removing as
    # many weights; same rounds and epochs.
    Experiment("baseline_lenet_5_caffe_val", "LeNet-5 (Caffe) baseline, 10% held out", "baseline",
               "lenet_5_caffe", BASELINE + ("--val_split=0.1", "--epochs=10"),
               BASELINE + ("--val_split=0.1", "--epochs=1"),
               in_results_table=False, study="sensitivity"),
    Experiment("sensitivity_lenet_5_caffe", "LeNet-5 (Caffe) sensitivity (magnitude)", "sensitivity",
               "lenet_5_caffe", ("--target_compression=12",),
               ("--rates=0,0.5,0.9,0.95", "--target_compression=12"),
               parent="baseline_lenet_5_caffe_val", in_results_table=False, study="sensitivity"),
    Experiment("songhan_sensitivity_lenet_5_caffe", "LeNet-5 (Caffe) songhan, per-layer rates from sensitivity",
               "pruning", "lenet_5_caffe", SENSITIVITY_RUN, SENSITIVITY_QUICK,
               parent="baseline_lenet_5_caffe_val", in_results_table=False, study="sensitivity",
               rates_from="sensitivity_lenet_5_caffe", rates_as="layer"),
    Experiment("songhan_global_lenet_5_caffe", "LeNet-5 (Caffe) songhan, one global rate",
               "pruning", "lenet_5_caffe", SENSITIVITY_RUN, SENSITIVITY_QUICK,
               parent="baseline_lenet_5_caffe_val", in_results_table=False, study="sensitivity",
               rates_from="sensitivity_lenet_5_caffe", rates_as="global"),
] + [
    # Any torchvision model (issue 18): torchvision's MobileNetV2 (depthwise convolutions,
    # inverted residuals), built by --model=torchvision.mobilenet_v2 on 28x28 Fashion-MNIST
    # (grey repeated to three channels, no resize), then FPGM and Taylor at 30% with the soft
    # schedule and one epoch of fine-tuning of the compact model. About 220 s per epoch here.
    Experiment("baseline_mobilenet_v2_fashion", "MobileNetV2 baseline (Fashion-MNIST)", "baseline",
               "torchvision.mobilenet_v2",
               ("--dataset=fashion_mnist", "--learning_rate=0.001", "--batch_size=128",
                f"--epochs={MOBILENET_EPOCHS}"),
               ("--dataset=fashion_mnist", "--learning_rate=0.001", "--batch_size=128", "--epochs=1"),
               dataset="fashion_mnist", in_results_table=False, study="any_model"),
] + [
    Experiment(f"{method}_30_mobilenet_v2_fashion", f"MobileNetV2 {method} 30% (Fashion-MNIST)",
               "pruning", "torchvision.mobilenet_v2",
               (f"--pruning_method={method}", "--cut_rate=0.3", f"--epochs={MOBILENET_PRUNE_EPOCHS}",
                "--finetune_epochs=1", "--batch_size=128"),
               (f"--pruning_method={method}", "--cut_rate=0.3", "--epochs=1", "--batch_size=128"),
               parent="baseline_mobilenet_v2_fashion", dataset="fashion_mnist",
               in_results_table=False, study="any_model")
    for method in ("fpgm", "taylor")
] + [
    Experiment("baseline_vit_tiny_fashion", "ViT (6 layers, 6 heads, width 192) baseline (Fashion-MNIST)",
               "baseline", VIT_TINY,
               (f"--model_kwargs={json.dumps(VIT_TINY_KWARGS)}", "--dataset=fashion_mnist", "--learning_rate=0.001",
                "--batch_size=128", "--weight_decay=0.0001", f"--epochs={VIT_EPOCHS}"),
               (f"--model_kwargs={json.dumps(VIT_TINY_KWARGS)}", "--dataset=fashion_mnist", "--learning_rate=0.001",
                "--batch_size=128", "--epochs=1"),
               dataset="fashion_mnist", in_results_table=False, study="any_model"),
] + [
    # Heads and MLP width (the default groups: the embedding stream stays), soft pruning for
    # VIT_PRUNE_EPOCHS epochs then one of fine-tuning the compact model.
    Experiment(f"{method}_40_vit_tiny_fashion", f"ViT {method} 40% (Fashion-MNIST)",
               "pruning", VIT_TINY,
               (f"--pruning_method={method}", "--cut_rate=0.4", f"--epochs={VIT_PRUNE_EPOCHS}",
                "--finetune_epochs=1", "--batch_size=128"),
               (f"--pruning_method={method}", "--cut_rate=0.4", "--epochs=1", "--batch_size=128"),
               parent="baseline_vit_tiny_fashion", dataset="fashion_mnist",
               in_results_table=False, study="any_model")
    for method in ("fpgm", "l1norm", "taylor")
] + [
    # Accuracy against the fraction of weights kept: single-round songhan at a range of rates.
    Experiment(f"songhan_sweep_{round(rate * 100)}_lenet_300_100",
               f"LeNet-300-100 songhan {round(rate * 100)}%", "pruning", "lenet_300_100",
               songhan(rate, 1, 5), songhan(rate, 1, 1),
               parent="baseline_lenet_300_100", in_results_table=False)
    for rate in (0.7, 0.8, 0.9, 0.95, 0.97)
]

GROUPS = {
    "baselines": [e.id for e in EXPERIMENTS if e.script == "baseline"],
    "songhan": [e.id for e in EXPERIMENTS if "--pruning_method=songhan" in e.flags],
    "fpgm": [e.id for e in EXPERIMENTS if "--pruning_method=fpgm" in e.flags],
    "sweep": [e.id for e in EXPERIMENTS if e.id.startswith("songhan_sweep_")],
    **{study: [e.id for e in EXPERIMENTS if e.study == study]
       for study in ("equal_terms", "deep_compression", "sensitivity", "any_model")},
}
BY_ID: Dict[str, Experiment] = {e.id: e for e in EXPERIMENTS}


def select(names: Optional[Sequence[str]]) -> List[Experiment]:
    """Experiments by id or group name, in the table's order (parents before children)."""
    if not names:
        return list(EXPERIMENTS)
    wanted = set()
    for name in names:
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in BY_ID:
            wanted.add(name)
        else:
            raise UserError(f"unknown experiment {name!r}; choose from groups "
                            f"{', '.join(GROUPS)} or: {', '.join(BY_ID)}")
    return [e for e in EXPERIMENTS if e.id in wanted]



def listing(quick: bool = False) -> List[str]:
    """What ``--list`` prints: each experiment's command, then the training epochs per model."""
    lines, epochs = [], {}
    for experiment in EXPERIMENTS:
        flags = experiment.quick if quick else experiment.flags
        if experiment.rates_from:
            flags = flags + ((f"--layer_rates=<{experiment.rates_from}>",)
                             if experiment.rates_as == "layer"
                             else (f"--cut_rate=<1 - 1/compression of {experiment.rates_from}>",))
        lines.append(f"{experiment.id:<32} python {experiment.script}.py {' '.join(flags)}")
        values = dict(f.split("=", 1) for f in flags if "=" in f)
        if "--epochs" not in values:  # sensitivity.py trains nothing
            continue
        count = (int(values["--epochs"]) * int(values.get("--pruning_epochs", 1))
                 + int(values.get("--finetune_epochs", 0)))
        epochs[experiment.model] = epochs.get(experiment.model, 0) + count
    lines.append("training epochs in all: " + ", ".join(f"{m} {n}" for m, n in epochs.items()))
    return lines
