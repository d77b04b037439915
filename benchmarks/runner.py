"""Running the experiments: each script's main() called in this process with the experiment's
flags plus the common ones, its checkpoint measured, and one record appended per run."""
import contextlib
import os
import platform
import shlex
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

from benchmarks.experiments import INFERENCE_BATCH, Experiment, select
from benchmarks.records import ROOT, append_record, latest, load_records, relative
from utils.errors import UserError

ACT_IMAGES = 1000            # test images over which Act% of a pruned model is measured


def machine() -> dict:
    """What the timings were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version()}


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def rate_flags(experiment: Experiment, flags: List[str], source: dict) -> List[str]:
    """The pruning rates a sensitivity record proposes, as flags: its --layer_rates, or one global
    --cut_rate that keeps as many of the analysed weights (1 - 1/compression)."""
    from pruners.sensitivity import format_rates
    flags = [f for f in flags if not f.startswith("--cut_rate=")]
    if experiment.rates_as == "layer":
        return flags + [f"--layer_rates={format_rates(source['rates'])}"]
    return flags + [f"--cut_rate={1 - 1 / source['proposal']['compression']:.6f}"]


def experiment_argv(experiment: Experiment, quick: bool, data_dir: Path, checkpoint_dir: Path,
                    parent_path: Optional[str], verify_data: bool = True,
                    rates_source: Optional[dict] = None, out_dir: Optional[Path] = None) -> List[str]:
    argv = list(experiment.quick if quick else experiment.flags)
    if rates_source is not None:
        argv = rate_flags(experiment, argv, rates_source)
    if experiment.script == "baseline":
        argv = [f"--model={experiment.model}"] + argv
    else:
        argv = [f"--load_folder_model={parent_path}"] + argv
    common = [f"--data_dir={relative(data_dir)}", f"--checkpoint_dir={relative(checkpoint_dir)}",
              "--seed=0", "--device=cpu", "--no_download", "--no_progress"]
    if experiment.script == "sensitivity":  # its CSV, plot and proposed rates beside the records
        return argv + [f"--output={relative(Path(out_dir) / f'{experiment.id}.csv')}"] + common + (
            [] if verify_data else ["--no_verify_data"])
    return argv + common[:3] + [f"--inference_batch_size={INFERENCE_BATCH}",
                                f"--inference_sampling={10 if quick else 100}"] + common[3:] + (
        [] if verify_data else ["--no_verify_data"])


def _timed_main(experiment: Experiment, script: str, module, argv: List[str]):
    """(what ``module.main(argv)`` returned, its wall seconds, when it started), announced."""
    print(f"\n=== {experiment.id}: python {script}.py {shlex.join(argv)}", flush=True)
    started = datetime.now(timezone.utc)
    wall = time.perf_counter()
    result = module.main(argv)
    return result, time.perf_counter() - wall, started


def run_sensitivity(experiment: Experiment, argv: List[str], quick: bool, parent: dict) -> dict:
    """sensitivity.py's main() in this process; the record keeps its proposal and where its
    CSV and plot are (the curves themselves stay in the CSV)."""
    import torch
    import sensitivity
    result, wall, started = _timed_main(experiment, "sensitivity", sensitivity, argv)
    csv_path = Path(result["csv"])
    plot_path = csv_path.with_suffix(".png")
    return {
        "experiment": experiment.id, "quick": quick,
        "command": f"python sensitivity.py {shlex.join(argv)}", "script": "sensitivity.py",
        "argv": argv, "model": parent["model"], "dataset": parent["dataset"],
        "parent": Path(parent["checkpoint"]).name, "parent_top1_acc": parent.get("top1_acc"),
        "csv": relative(csv_path), "plot": relative(plot_path) if plot_path.is_file() else None,
        "rates": result["rates"], "proposal": result["proposal"],
        "wall_seconds": wall, "machine": machine(), "torch_version": torch.__version__,
        "git": git_commit(), "date": started.isoformat(timespec="seconds"),
    }


def run_experiment(experiment: Experiment, argv: List[str], quick: bool, test_images) -> dict:
    """Run one script's main() in this process and turn what it returns into a record."""
    import baseline
    import pruning
    from pruners.graph import is_chain
    from utils.checkpoints import build_model, load_checkpoint
    from utils.reporting.counting import is_sparse
    from utils.reporting.tables import all_parameters, model_table
    from utils.timing import speedup

    script = {"baseline": baseline, "pruning": pruning}[experiment.script]
    result, wall, started = _timed_main(experiment, experiment.script, script, argv)

    loaded = load_checkpoint(result["path"])
    model = build_model(loaded)
    images = test_images(loaded["dataset"]) if is_sparse(model) else None
    table = model_table(model, images, original_widths=(loaded.get("pruning") or {}).get("original_widths"),
                        chain=images is not None and is_chain(model))
    record = {
        "experiment": experiment.id,
        "quick": quick,
        "command": f"python {experiment.script}.py {shlex.join(argv)}",
        "script": f"{experiment.script}.py",
        "argv": argv,
        "flags": loaded["flags"],
        "model": loaded["config"]["model"],
        "widths": loaded["config"]["widths"],
        "dataset": loaded["dataset"],
        "method": (loaded.get("pruning") or {}).get("method"),
        "pruning": loaded.get("pruning"),
        "checkpoint": relative(loaded["path"]),
        "checkpoint_bytes": os.path.getsize(loaded["path"]),
        "parent": loaded.get("parent"),
        # the table's rows are conv and linear layers; the other layers' parameters count too
        "parameters": all_parameters(table),
        "nonzero": table["total"]["nonzero"] + all_parameters(table) - table["total"]["weights"],
        "flops": table["total"]["flops"],
        "nonzero_flops": table["total"]["nonzero_flops"],
        "layers": table,
        "wall_seconds": wall,
        "machine": machine(),
        "torch_version": loaded.get("torch_version"),
        "git": git_commit(),
        "date": started.isoformat(timespec="seconds"),
    }
    if experiment.script == "baseline":
        record.update(top1_acc=result["top1_acc"], train_seconds=result["train_seconds"],
                      inference=result["inference"])
    else:  # pruning.py times the parent and the pruned model in the same process
        before, after = result["before"], result["after"]
        record.update(top1_acc=after["top1_acc"], train_seconds=result["train_seconds"],
                      inference=after["throughput"], latency=after["latency"],
                      parent_top1_acc=before["top1_acc"], parent_parameters=before["parameters"],
                      parent_flops=before["flops"], parent_inference=before["throughput"],
                      parent_latency=before["latency"], parent_checkpoint_bytes=result["sizes"]["before"],
                      speedup=speedup(before["throughput"], after["throughput"]))
        if "deployed_throughput" in after:  # as a deployment runtime runs it (models/inference.py)
            record["deployed_speedup"] = speedup(before["deployed_throughput"],
                                                 after["deployed_throughput"])
        if "compression" in result:  # --quantize: Deep Compression's stages (pruners/quantization.py)
            record["compression"] = {**result["compression"],
                                     "path": relative(result["compression"]["path"])}
    return record


@contextlib.contextmanager
def working_directory(path: Path):
    """The scripts read their path flags relative to the working directory, and the recorded
    commands are meant to be pasted at the repository root: run them from there."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run(args):
    import pruners
    import torch
    from utils.data import load_dataset

    chosen = select(args.only)
    missing = sorted({flag.split("=", 1)[1] for e in chosen for flag in e.flags
                      if flag.startswith("--pruning_method=")} - set(pruners.pruner_names()))
    if missing:
        raise UserError(f"pruning method(s) {', '.join(missing)} not available in this checkout; "
                        "run --only baselines, or wait for them to land")
    records_path = Path(args.records)
    known = latest(load_records(records_path)) if records_path.is_file() else {}
    cache = {}

    def test_images(dataset):
        """The first test images of a dataset, read once, for Act% of sparse models."""
        if dataset not in cache:
            _, test, _ = load_dataset(dataset, args.data_dir, download=False,
                                      verify=not args.no_verify_data)
            cache[dataset] = test.images[:ACT_IMAGES]
        return cache[dataset]
    torch.set_num_threads(args.threads or torch.get_num_threads())

    print(f"{len(chosen)} experiments -> {relative(records_path)}"
          f"{' (quick smoke run)' if args.quick else ''}")
    with working_directory(ROOT):
        run_all(chosen, args, records_path, known, test_images)


def run_all(chosen, args, records_path, known, test_images):
    for experiment in chosen:
        parent_path = None
        if experiment.parent:
            parent = known.get(experiment.parent)
            if parent is None or not (ROOT / parent["checkpoint"]).is_file():
                raise UserError(f"{experiment.id} prunes {experiment.parent}'s checkpoint, which "
                                f"{relative(records_path)} does not hold; run --only {experiment.parent}")
            parent_path = parent["checkpoint"]
        rates_source = None
        if experiment.rates_from:
            rates_source = known.get(experiment.rates_from)
            if rates_source is None:
                raise UserError(f"{experiment.id} takes its rates from {experiment.rates_from}, "
                                f"which {relative(records_path)} does not hold; run --only "
                                f"{experiment.rates_from}")
        argv = experiment_argv(experiment, args.quick, Path(args.data_dir), Path(args.checkpoint_dir),
                               parent_path, verify_data=not args.no_verify_data,
                               rates_source=rates_source, out_dir=records_path.parent)
        if experiment.script == "sensitivity":
            record = run_sensitivity(experiment, argv, args.quick, known[experiment.parent])
        else:
            record = run_experiment(experiment, argv, args.quick, test_images)
        append_record(records_path, record)
        known[experiment.id] = record
        outcome = (f"top-1 {record['top1_acc']:.2%}" if "top1_acc" in record
                   else f"rates {record['rates']}")
        print(f"recorded {experiment.id}: {outcome}, {record['wall_seconds']:.0f} s", flush=True)

