"""The README's results section, rendered from the records alone: the results table (ours against
the reference README's and the papers' figures), the accuracy-vs-weights-kept table, links to the
plots, each model's layer table and the commands behind each row. ``report`` puts it between the
README's <!-- results:begin --> and <!-- results:end --> markers, or into another file."""
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from benchmarks.experiments import EXPERIMENTS, INFERENCE_BATCH, Experiment
from benchmarks.records import latest, load_records, relative
from utils.errors import UserError
from utils.files import write_text
from utils.reporting.counting import FLOP_CONVENTION
from utils.reporting.tables import markdown_table, render_markdown

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


def method_label(record: dict) -> str:
    """What was done, from the flags the checkpoint recorded."""
    flags = record["flags"]
    if not record.get("method"):
        return f"none, {_epochs(flags['epochs'])}"
    rounds = flags.get("pruning_epochs", 1)
    schedule = (f"{rounds} rounds x {_epochs(flags['epochs'])}" if rounds > 1
                else _epochs(flags["epochs"]))
    if record["method"] == "fpgm":
        return f"fpgm, {flags['cut_rate']:.0%} of filters, {schedule}"
    return f"{record['method']}, cut {flags['cut_rate']}, {schedule}"


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
        if record is None or record.get("method") not in (None, "songhan"):
            continue
        rows.append((record["model"], record["nonzero"] / record["parameters"], record["top1_acc"],
                     experiment, record))
    return sorted(rows, key=lambda r: (r[0], -r[1]))


def describe_machines(records: Sequence[dict]) -> str:
    seen = []
    for record in records:
        m = record["machine"]
        text = (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
                f"torch {record['torch_version']}")
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def render_report(records: Sequence[dict], plots: Sequence[str] = (),
                  source: str = "results/runs.jsonl") -> str:
    """The README's results section, from records alone. ``plots``: image paths to show;
    ``source``: the records file, named in the text."""
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
    block = render_report(records, existing_plots(Path(args.plots_dir), shown_in),
                          source=relative(args.records))
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


