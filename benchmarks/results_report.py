"""The README's results section, rendered from the records alone: the results table (ours against
the reference README's and the papers' figures), the accuracy-vs-weights-kept table, links to the
plots, each model's layer table and the commands behind each row. ``report`` puts it between the
README's <!-- results:begin --> and <!-- results:end --> markers, or into another file."""
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pruners
from benchmarks.experiments import EXPERIMENTS, INFERENCE_BATCH, VIT_TINY, VIT_TINY_KWARGS, Experiment
from benchmarks.records import latest, load_records, relative
from utils.errors import UserError
from utils.files import write_text
from utils.reporting.counting import FLOP_CONVENTION
from utils.reporting.tables import markdown_table, render_markdown
from utils.timing import speedup as paired_speedup

BEGIN_MARKER = "<!-- results:begin -->"
END_MARKER = "<!-- results:end -->"
PLOT_FILES = ("weight_histogram.png", "accuracy_vs_weights_kept.png")  # made by results_plots

NA = "n/a"
RESULT_HEADERS = ["Experiment", "Source", "Dataset", "Model", "Prune Method", "Top1 Acc",
                  "Parameters", "training time", "inference time", "Nonzero", "FLOPs", "File size",
                  "Speed-up"]


def _kb(size: int) -> str:
    return f"{size / 1024:,.1f} KB"


def _epochs(count: int) -> str:
    return f"{count} epoch" + ("" if count == 1 else "s")


def removes_filters(method: str) -> bool:
    """Whether the registered method ``method`` removes whole filters (a structured pruner)."""
    return method in pruners.pruner_names() and pruners.pruner_class(method).structured


def method_label(record: dict) -> str:
    """What was done, from the flags the checkpoint recorded."""
    flags = record["flags"]
    if not record.get("method"):
        return f"none, {_epochs(flags['epochs'])}"
    rounds = flags.get("pruning_epochs", 1)
    schedule = (f"{rounds} rounds x {_epochs(flags['epochs'])}" if rounds > 1
                else _epochs(flags["epochs"]))
    if record["method"] == "fpgm" and flags.get("fpgm_norm_rate"):
        return (f"fpgm-mix, {flags['cut_rate']:.0%} by median + {flags['fpgm_norm_rate']:.0%} "
                f"by norm of filters, {schedule}")
    if removes_filters(record["method"]):
        return f"{record['method']}, {flags['cut_rate']:.0%} of filters, {schedule}"
    rates = f"cut {flags['cut_rate']}"
    if flags.get("layer_rates"):
        layers = [row["layer"] for row in (record.get("layers") or {}).get("layers", [])]
        others = [name for name in layers if name not in flags["layer_rates"]]
        rates = ("cut per layer " + " ".join(f"{k} {v:g}" for k, v in flags["layer_rates"].items())
                 + (f", {' '.join(others)} {flags['cut_rate']:g}" if others else ""))
    return (f"{record['method']}, {rates}, {schedule}"
            + (", + quantized" if flags.get("quantize") else ""))


def ours_row(experiment: Experiment, record: Optional[dict]) -> list:
    if record is None:
        return [experiment.title, "ours", experiment.dataset, experiment.model, "not run yet"] + [NA] * 8
    pruned = record.get("method") is not None
    nonzero = f"{record['nonzero']:,} ({record['nonzero'] / record['parameters']:.1%})"
    flops = f"{record['nonzero_flops']:,}"
    size = _kb(record["checkpoint_bytes"])
    speedup = "1.00x"
    if pruned:
        flops += f" ({record['nonzero_flops'] / record['parent_flops'] - 1:+.1%})"
        size += f" ({record['parent_checkpoint_bytes'] / record['checkpoint_bytes']:.1f}x smaller)"
        speedup = f"{record['speedup']:.2f}x"
    timing = record["inference"]
    return [experiment.title, "ours", record["dataset"], record["model"], method_label(record),
            f"{record['top1_acc']:.2%}", f"{record['parameters']:,}",
            f"{record['train_seconds']:.1f} s", f"{timing['median_ms']:.2f} ms",
            nonzero, flops, size, speedup]


def reference_row(experiment: Experiment) -> list:
    ref = experiment.reference
    return [experiment.title, "reference", "mnist", experiment.model, ref.get("method", "none"),
            ref["top1"]] + [NA] * 7


def paper_row(experiment: Experiment) -> list:
    paper = experiment.paper
    return [experiment.title, paper["source"], paper["dataset"], paper["model"], paper["method"],
            paper["top1"], paper.get("parameters", NA), NA, NA, paper.get("nonzero", NA),
            paper.get("flops", NA), NA, NA]


def kept_rows(found: Dict[str, dict]) -> list:
    """(model, weights kept, accuracy, record) of every songhan run and of its baseline."""
    rows = []
    for experiment in EXPERIMENTS:
        record = found.get(experiment.id)
        if (record is None or record.get("method") not in (None, "songhan")
                or experiment.script == "sensitivity"
                or experiment.study in ("sensitivity", "deep_compression")):
            continue
        rows.append((record["model"], record["nonzero"] / record["parameters"], record["top1_acc"],
                     experiment, record))
    return sorted(rows, key=lambda r: (r[0], -r[1]))


# ---- side tables: methods on equal terms, Deep Compression, sensitivity ----------------------

# Deep Compression (Han et al., ICLR 2016), Table 1
DEEP_COMPRESSION_PAPER = {
    "lenet_300_100": {"dense": "1070 KB", "final": "27 KB, 40x", "top1": "98.42% (1.58% error)",
                      "target": 40.0},
    "lenet_5_caffe": {"dense": "1720 KB", "final": "44 KB, 39x", "top1": "99.26% (0.74% error)",
                      "target": 39.0},
}
ACCURACY_TOLERANCE = 0.001  # quantized within 0.1 points of the pruned model


def _method_name(record: dict) -> str:
    if record["method"] == "fpgm" and record["flags"].get("fpgm_norm_rate"):
        return (f"FPGM-mix ({record['flags']['cut_rate']:.0%} median + "
                f"{record['flags']['fpgm_norm_rate']:.0%} norm)")
    method = record["method"]
    known = method in pruners.pruner_names() and pruners.pruner_class(method).citation
    return known or method


def _schedule(record: dict) -> str:
    pruning, flags = record.get("pruning") or {}, record["flags"]
    finetune = pruning.get("finetune_epochs") or 0
    return (f"{pruning.get('mode', '?')}, {_epochs(flags['epochs'])}"
            + (f" + {finetune} fine-tuning the compact model" if finetune else ""))


def equal_terms_section(found: Dict[str, dict]) -> List[str]:
    """Filter-pruning methods at the same rate from the same baseline record with the same
    recipe, and one sentence about FPGM drawn from the figures."""
    ids = ["fpgm_40_resnet20_fashion"] + [e.id for e in EXPERIMENTS if e.study == "equal_terms"]
    records = [found[i] for i in ids if i in found]
    if len(records) < 2:
        return []
    parents = {r["parent"] for r in records}
    rows = [[_method_name(r), _schedule(r), f"{r['parent_top1_acc']:.2%} -> {r['top1_acc']:.2%}",
             f"{r['nonzero_flops'] / r['parent_flops'] - 1:+.1%}", f"{r['parameters']:,}",
             f"{r['speedup']:.2f}x",
             f"{r['deployed_speedup']:.2f}x" if "deployed_speedup" in r else NA] for r in records]
    lines = ["#### Methods on equal terms (ResNet-20, Fashion-MNIST, 40% of filters)", "",
             f"Every run prunes the same baseline checkpoint ({', '.join(sorted(parents))}) with "
             f"batch 128 and the same epochs; each method keeps its paper's schedule (soft: "
             f"selected and zeroed after every epoch; fixed: selected once). One run each "
             f"(seed 0); run-to-run spread not measured.", "",
             markdown_table(["Method", "Schedule", "Top1 before -> after", "FLOPs (compact)",
                             "Parameters", "Speed-up", "Deployed"], rows,
                            align=["left", "left", "right", "right", "right", "right", "right"]), ""]
    fpgm = found.get("fpgm_40_resnet20_fashion")
    if fpgm is not None:
        others = [r for r in records if r is not fpgm]
        level = [r for r in others if r["top1_acc"] >= fpgm["top1_acc"]]
        if level:
            named = ", ".join(f"{_method_name(r)} ({r['top1_acc']:.2%})" for r in level)
            lines += [f"FPGM is not better here: {named} "
                      f"{'reaches' if len(level) == 1 else 'reach'} at least FPGM's "
                      f"{fpgm['top1_acc']:.2%} top-1 "
                      + ("at the same compact size." if all(r["parameters"] == fpgm["parameters"]
                                                            for r in level)
                         else "(compact sizes differ: see Parameters)."), ""]
        else:
            best = max(others, key=lambda r: r["top1_acc"])
            lines += [f"FPGM has the highest top-1 here, {100 * (fpgm['top1_acc'] - best['top1_acc']):.2f} "
                      f"points over the next ({_method_name(best)}, {best['top1_acc']:.2%}).", ""]
    threads = {}
    for r in records:
        threads.setdefault(r["machine"]["torch_threads"], []).append(_method_name(r))
    timed = ("" if len(threads) < 2 else " Timed with different torch thread counts, so compare "
             "speed-ups only within a count: " + "; ".join(
                 f"{count} thread{'s' if count > 1 else ''}: {', '.join(names)}"
                 for count, names in sorted(threads.items())) + ".")
    lines += ["FLOPs: of the compact model against the baseline (2 x multiply-accumulate, one "
              "image); speed-up: how many times faster the compact model ran a batch than the baseline, "
              "timed in alternating rounds in the same pruning.py process; deployed: the same with BatchNorm folded and "
              "channels_last, as a deployment runtime runs them (n/a: recorded before pruning.py "
              f"timed it).{timed}", ""]
    return lines


DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
# What each model of the any-model study is, for the sentence above its table.
ANY_MODEL_NOTES = {
    "torchvision.mobilenet_v2": (
        "torchvision's own MobileNetV2 (depthwise convolutions, inverted residuals), built from "
        "the command line with `num_classes` from the dataset and grey images repeated to three "
        "channels at 28x28, pruned through the same dependency graph and surgery as the "
        "toolkit's own models (block-internal channels: the expanded channels of each inverted "
        "residual and its depthwise convolution)."),
    VIT_TINY: (
        "torchvision's VisionTransformer class, sized for this CPU "
        f"(`--model_kwargs='{json.dumps(VIT_TINY_KWARGS)}'`: 7x7 patches of the 28x28 image, "
        "so 16 tokens and a class token; 6 heads of 32 channels; about 2.5 minutes an epoch "
        "here), grey images repeated to three channels. Pruned: 40% of the heads of every "
        "attention module (a head's query, key and value rows and its columns of the output "
        "projection) and 40% of every MLP's hidden width; the embedding width stays "
        "(`--prune_residual` would take it too)."),
}


def any_model_section(found: Dict[str, dict]) -> List[str]:
    """Models the toolkit does not ship, trained and pruned from the command line: one table per
    model, its baseline first."""
    runs = [(e, found.get(e.id)) for e in EXPERIMENTS if e.study == "any_model"]
    by_model: Dict[str, List[dict]] = {}
    for _, record in runs:
        if record is not None:
            by_model.setdefault(record["model"], []).append(record)
    lines = []
    for model, records in by_model.items():
        rows = []
        for r in records:
            pruned = r.get("method") is not None
            rows.append([_method_name(r) if pruned else "none (baseline)",
                         _schedule(r) if pruned else _epochs(r["flags"]["epochs"]),
                         (f"{r['parent_top1_acc']:.2%} -> " if pruned else "") + f"{r['top1_acc']:.2%}",
                         f"{r['parameters']:,}",
                         f"{r['nonzero_flops']:,}" + (f" ({r['nonzero_flops'] / r['parent_flops'] - 1:+.1%})"
                                                      if pruned else ""),
                         f"{r['speedup']:.2f}x" if pruned else NA,
                         f"{r['deployed_speedup']:.2f}x" if "deployed_speedup" in r else NA,
                         f"{paired_speedup(r['parent_latency'], r['latency']):.2f}x"
                         if pruned and "round_medians_ms" in r.get("latency", {}) else NA])
        dataset = DATASET_TITLES.get(records[0]["dataset"], records[0]["dataset"])
        lines += [f"#### Any model: `--model={model}` ({dataset})", "",
                  f"{ANY_MODEL_NOTES.get(model, 'A model the toolkit does not ship.')} "
                  "One run each (seed 0).", "",
                  markdown_table(["Method", "Schedule", "Top1", "Parameters", "FLOPs", "Speed-up",
                                  "Deployed", "Batch 1"], rows,
                                 align=["left", "left", "right", "right", "right", "right", "right",
                                        "right"]),
                  "", f"Speed-ups against the baseline in the same pruning.py process: batch "
                      f"{INFERENCE_BATCH} throughput, eager and deployed (BatchNorm folded, "
                      "channels_last), and batch-1 latency, eager.", ""]
    return lines


def deep_compression_section(found: Dict[str, dict]) -> List[str]:
    """Han et al. 2016's stages per model from the records' ``compression`` figures."""
    rows, notes = [], []
    for experiment in EXPERIMENTS:
        record = found.get(experiment.id)
        if experiment.study != "deep_compression" or record is None or "compression" not in record:
            continue
        c, paper = record["compression"], DEEP_COMPRESSION_PAPER.get(record["model"], {})
        # The pruned stage is the checkpoint file as the record found it on disk: pruning.py
        # rewrote it with its final metrics after the compression step measured it, so records
        # before that was fixed hold an earlier, smaller size in ``compression``.
        sizes = {**c["sizes"], "pruned": record.get("checkpoint_bytes", c["sizes"]["pruned"])}
        dense = sizes["dense"]
        run = experiment.title.replace(" Deep Compression", "")  # two LeNet-5 runs: say which
        stages = [("dense float32 weights", "dense", paper.get("dense", NA),
                   f"{c['dense_parameters']:,} parameters x 4 bytes"),
                  ("pruned", "pruned", NA, f"the pruned checkpoint, {Path(record['checkpoint']).name}"),
                  ("pruned + quantized", "quantized", NA, "fixed-width cluster indices"),
                  ("pruned + quantized + Huffman", "huffman",
                   f"{paper['final']}, {paper['top1']}" if paper else NA,
                   f"`{Path(c['path']).name}`, decoded bit-exact")]
        for label, key, theirs, what in stages:
            acc = c["accuracy"].get(key)
            rows.append([run, label, f"{sizes[key]:,}",
                         f"{dense / sizes[key]:.1f}x", NA if acc is None else f"{acc:.2%}",
                         theirs, what])
        target = paper.get("target")
        ratio, drop = c["ratio"], c["accuracy"]["huffman"] - c["accuracy"]["pruned"]
        if target:
            notes.append(f"{run}: {ratio:.1f}x against the target {target:g}x "
                         f"({'met' if ratio >= target else 'missed'}); top-1 {100 * drop:+.2f} points "
                         f"against the pruned model ("
                         f"{'within' if abs(drop) <= ACCURACY_TOLERANCE + 1e-12 else 'outside'} 0.1).")
    if not rows:
        return []
    return ["#### Deep Compression: pruning, weight sharing, Huffman coding", "",
            "Beside Han et al. 2016 (ICLR), Table 1. Sizes in bytes of whole files; ratio against "
            "the dense float32 weights; top-1 on the test set.", "",
            markdown_table(["Run", "Stage", "Bytes", "Ratio", "Top1 Acc",
                            "Han et al. 2016", "What"], rows,
                           align=["left", "left", "right", "right", "right", "left", "left"]), ""] + [
        "- " + note for note in notes] + ([""] if notes else [])


def sensitivity_section(found: Dict[str, dict], link=lambda path: path) -> List[str]:
    """Per-layer rates proposed by the sensitivity analysis against one global rate, and the
    sensitivity plots."""
    lines = []
    analysis = found.get("sensitivity_lenet_5_caffe")
    runs = [(e, found.get(e.id)) for e in EXPERIMENTS if e.study == "sensitivity"
            and e.script == "pruning"]
    runs = [(e, r) for e, r in runs if r is not None]
    baseline = found.get("baseline_lenet_5_caffe_val")
    if analysis and runs and baseline:
        rows = [["baseline, 10% of training images held out", method_label(baseline), "100.0%",
                 f"{baseline['top1_acc']:.2%}"]]
        for experiment, record in runs:
            rows.append([experiment.title.split("songhan, ")[-1], method_label(record),
                         f"{record['nonzero'] / record['parameters']:.1%}",
                         f"{record['top1_acc']:.2%}"])
        how = analysis["proposal"]
        lines += ["#### Per-layer rates from sensitivity against one global rate (LeNet-5 Caffe)", "",
                  f"`sensitivity.py` on the held-out images of the baseline proposed the rates for "
                  f"{how['compression']:.2f}x over the analysed weights (accuracy drop per layer "
                  f"<= {how['max_drop']:.2%} without retraining); the global run removes as many "
                  f"weights with one magnitude threshold. Same rounds and epochs; top-1 on the test "
                  f"set; one run each.", "",
                  markdown_table(["Rates", "Prune Method", "Weights kept", "Top1 Acc"], rows,
                                 align=["left", "left", "right", "right"]), ""]
        if len(runs) == 2:
            (_, a), (_, b) = runs
            lines += [f"Per-layer minus global: {100 * (a['top1_acc'] - b['top1_acc']):+.2f} points "
                      f"top-1.", ""]
    plots = [(e, found[e.id]) for e in EXPERIMENTS
             if e.script == "sensitivity" and e.id in found and found[e.id].get("plot")]
    if plots:
        lines += ["#### Sensitivity of each layer to pruning (no retraining)", ""]
        for experiment, record in plots:
            how = record["proposal"]
            held = ("held-out images" if not any(a.startswith("--val_split") for a in record["argv"])
                    else "10% of its training images, on which it trained: optimistic")
            lines += [f"**{experiment.title}**, `{record['parent']}` (validation: {held}); "
                      f"proposed for {how['compression']:.2f}x: `--layer_rates="
                      + ",".join(f"{k}={v:g}" for k, v in record["rates"].items())
                      + f"`; curves in `{record['csv']}`", "",
                      f"![{Path(record['plot']).stem.replace('_', ' ')}]({link(record['plot'])})", ""]
    return lines


def describe_machines(records: Sequence[dict]) -> str:
    seen = []
    for record in records:
        m = record["machine"]
        text = (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch "
                f"thread{'' if m['torch_threads'] == 1 else 's'}), "
                f"torch {record['torch_version']}")
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def render_report(records: Sequence[dict], plots: Sequence[str] = (),
                  source: str = "results/runs.jsonl", link=lambda path: path) -> str:
    """The README's results section, from records alone. ``plots``: image paths to show;
    ``source``: the records file, named in the text; ``link``: a record's repository-relative
    path as the markdown file links it."""
    found = latest(records)
    used = [found[e.id] for e in EXPERIMENTS if e.id in found]
    lines = []
    if any(r.get("quick") for r in used):
        lines += ["**Quick smoke run (an epoch or two each): these figures only show that the "
                  "pipeline runs, not what the methods reach.**", ""]
    if used:
        dates = sorted(r["date"][:10] for r in used)
        lines += [f"Measured by `python benchmarks/reproduce.py` on {describe_machines(used)}, "
                  f"{dates[0]}{' to ' + dates[-1] if dates[-1] != dates[0] else ''}. Each *ours* "
                  f"row is one record of `{source}`; *reference* rows are the reference "
                  f"README's, paper rows the papers' own figures; n/a: not reported.", ""]

    rows = []
    for experiment in EXPERIMENTS:
        if not experiment.in_results_table:
            continue
        if experiment.reference:
            rows.append(reference_row(experiment))
        if experiment.paper:
            rows.append(paper_row(experiment))
        rows.append(ours_row(experiment, found.get(experiment.id)))
    numeric = {"Top1 Acc", "Parameters", "training time", "inference time", "Nonzero", "FLOPs",
               "File size", "Speed-up"}
    lines += [markdown_table(RESULT_HEADERS, rows,
                             align=["right" if h in numeric else "left" for h in RESULT_HEADERS]), ""]
    lines += [f"Parameters and Nonzero count weights and biases. FLOPs: those of the nonzero "
              f"weights (songhan) or of the smaller model (fpgm) for one image; in parentheses, "
              f"against the unpruned model. {FLOP_CONVENTION}. training time: the baseline's "
              f"training, or pruning plus retraining. inference time: median of timed forward "
              f"passes of a batch of {INFERENCE_BATCH} test images after warm-up (eval mode, "
              f"inference_mode); speed-up: the unpruned model's median over the pruned one's, "
              f"both timed in the same pruning.py process. File size: the checkpoint on disk "
              f"(pruned tensors stored as bitmask + values).", ""]

    kept = kept_rows(found)
    if kept:
        lines += ["#### Accuracy against the fraction of weights kept (songhan)", ""]
        lines += [markdown_table(
            ["Model", "Weights kept", "Top1 Acc", "Prune Method"],
            [[model, f"{fraction:.1%}", f"{acc:.2%}", method_label(record)]
             for model, fraction, acc, _, record in kept],
            align=["left", "right", "right", "left"]), ""]

    for path in plots:
        lines += [f"![{Path(path).stem.replace('_', ' ')}]({path})", ""]

    lines += equal_terms_section(found)
    lines += any_model_section(found)
    lines += deep_compression_section(found)
    lines += sensitivity_section(found, link)

    if used:
        lines += ["#### Layer tables (calFLOP.py)", ""]
        for experiment in EXPERIMENTS:
            record = found.get(experiment.id)
            if record is None or not experiment.in_results_table:
                continue
            lines += [f"**{experiment.title}**: `{Path(record['checkpoint']).name}`, "
                      f"top-1 {record['top1_acc']:.2%}", "", render_markdown(record["layers"]).rstrip(), ""]

        lines += ["#### Commands behind each row", "", "```"]
        lines += [record["command"] for record in used]
        lines += ["```", ""]
    return "\n".join(lines).rstrip() + "\n"


def replace_between_markers(text: str, block: str) -> str:
    """``text`` with what lies between the results markers replaced by ``block``; everything
    outside them untouched."""
    begins, ends = text.count(BEGIN_MARKER), text.count(END_MARKER)
    if begins != 1 or ends != 1:
        raise UserError(f"the README needs exactly one {BEGIN_MARKER} and one {END_MARKER} "
                        f"(found {begins} and {ends}); put them where the results go")
    start = text.index(BEGIN_MARKER) + len(BEGIN_MARKER)
    end = text.index(END_MARKER)
    if end < start:
        raise UserError(f"{END_MARKER} comes before {BEGIN_MARKER} in the README")
    return text[:start] + "\n" + block.rstrip("\n") + "\n" + text[end:]


def existing_plots(out_dir: Path, shown_in: Path) -> List[str]:
    """Plot files already made, as paths relative to the markdown file that shows them."""
    return [os.path.relpath(out_dir / name, shown_in.resolve().parent)
            for name in PLOT_FILES if (out_dir / name).is_file()]


def report(args):
    records = load_records(Path(args.records))
    target = Path(args.readme)
    shown_in = Path(args.output) if args.output and args.output != "-" else target
    from benchmarks.records import ROOT
    block = render_report(records, existing_plots(Path(args.plots_dir), shown_in),
                          source=relative(args.records),
                          link=lambda path: os.path.relpath(ROOT / path, shown_in.resolve().parent))
    if args.output == "-":
        sys.stdout.write(block)
    elif args.output:
        write_text(Path(args.output), block)
        print(f"wrote {args.output}")
    else:
        if not target.is_file():
            raise UserError(f"no {target}; give --output FILE (or - for stdout) instead")
        write_text(target, replace_between_markers(target.read_text(), block))
        print(f"updated the results section of {relative(target)}")


