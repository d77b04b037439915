"""The README's commands run, in order, on a fresh clone: checked statically, without running them.

Every ```bash block is read in order (continuation lines joined, comments dropped). Each
`python SCRIPT.py ...` command must name a script that exists, pass only flags that script's
get_args_parser() defines, spelled out in full (argparse would accept an abbreviation), with
values it accepts. Each checkpoint a command loads (--load_folder_model=NAME) must be one an
earlier command makes: baseline.py (when it trains) makes <model>_<dataset>_acc_<acc>_epoch_<epochs>,
pruning.py makes <model>_<method>_<dataset>_acc_<acc>_epoch_<epochs> from the model and dataset of
the checkpoint it loads; the accuracy digits are whatever the run reaches, so they are not checked.
"""
import argparse
import importlib
import fnmatch
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tests.conftest import ROOT
from utils.checkpoints import checkpoint_name
from utils.errors import UserError

README = ROOT / "README.md"
SHELL_FENCES = ("bash", "sh", "shell")
SEPARATORS = ("&&", "||", ";", "|", "&")
ACC_PLACEHOLDER = "0.0000"


@dataclass
class Command:
    line: int                      # README line the command starts on
    script: str                    # as written: baseline.py, benchmarks/reproduce.py
    argv: List[str]                # what follows the script
    parser: Optional[argparse.ArgumentParser] = None
    args: Optional[argparse.Namespace] = None  # parsed, when every flag checked out
    problems: List[str] = field(default_factory=list)

    def __str__(self):
        return f"README line {self.line}: python {self.script} {shlex.join(self.argv)}"


def shell_lines(text: str) -> List[Tuple[int, str]]:
    """(line number, logical line) of every ```bash block, backslash continuations joined."""
    found, fence, pending, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            pending = ""
            continue
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found.append((start, pending + line))
        pending = ""
    return found


def python_commands(text: str) -> List[Command]:
    """Every `python SCRIPT ...` (or `torchrun ... SCRIPT ...`) of the README's shell blocks, in
    order (python -m ... skipped)."""
    commands = []
    for number, line in shell_lines(text):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens, pieces = list(lexer), [[]]
        for token in tokens:
            if token in SEPARATORS:
                pieces.append([])
            else:
                pieces[-1].append(token)
        for argv in pieces:
            while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
                argv = argv[1:]  # environment assignments: OMP_NUM_THREADS=1 python ...
            if argv and Path(argv[0]).name == "torchrun":
                # torchrun's own options, then the script: checked like a python command
                script = next((token for token in argv[1:] if token.endswith(".py")), None)
                if script is not None:
                    commands.append(Command(number, script, argv[argv.index(script) + 1:]))
                continue
            if not argv or not re.fullmatch(r"python(3(\.\d+)?)?", Path(argv[0]).name):
                continue
            rest = argv[1:]
            while rest and rest[0].startswith("-") and rest[0] != "-m":
                rest = rest[1:]  # interpreter options such as -u
            if rest and rest[0] != "-m":
                commands.append(Command(number, Path(rest[0]).as_posix(), rest[1:]))  # ./x.py: x.py
    return commands


_parsers: Dict[str, argparse.ArgumentParser] = {}


def script_parser(script: str) -> argparse.ArgumentParser:
    if script not in _parsers:
        module = importlib.import_module(Path(script).with_suffix("").as_posix().replace("/", "."))
        if not hasattr(module, "get_args_parser"):
            raise AttributeError(f"{script} has no get_args_parser()")
        _parsers[script] = module.get_args_parser()
    return _parsers[script]


def check_flags(command: Command) -> Command:
    """The script exists and knows every flag, in full, with its value; fills command.args."""
    path = ROOT / command.script
    if not path.is_file() or path.suffix != ".py":
        command.problems.append(f"{command}: no script {command.script} in the repository")
        return command
    try:
        command.parser = script_parser(command.script)
    except (ImportError, AttributeError) as exc:
        command.problems.append(f"{command}: cannot build its parser ({exc})")
        return command
    known = {option for action in command.parser._actions for option in action.option_strings}
    for token in command.argv:
        if len(token) > 1 and token.startswith("-") and not re.fullmatch(r"-\d[\d.e-]*", token):
            flag = token.split("=", 1)[0]
            if flag not in known:
                command.problems.append(f"{command}: {command.script} has no flag {flag}")
    if command.problems:
        return command
    from script_setup import RESUME_OVERRIDES, _given_flags, _without_resume
    resume, rest = _without_resume(command.argv)
    if resume is not None:  # the run's own flags come from the state file
        extra = [flag for flag in _given_flags(rest) if flag not in RESUME_OVERRIDES]
        if extra:
            command.problems.append(f"{command}: --resume refuses {', '.join(extra)}")
        return command
    try:
        command.args = command.parser.parse_args(command.argv)
    except (UserError, SystemExit) as exc:
        command.problems.append(f"{command}: {command.script} refuses its flags ({exc})")
    return command


def made(model: str, dataset: str, epochs: int, method: Optional[str], line: int) -> dict:
    """What a run saves, whatever accuracy it reaches: the pattern its name (without .pt)
    matches, the name as the README would write it, and the model and dataset it holds."""
    name = Path(checkpoint_name(model, dataset, 0.0, epochs, method=method)).stem
    before, after = name.split(f"_acc_{ACC_PLACEHOLDER}_")
    return {"pattern": re.compile(rf"{re.escape(before)}_acc_\d\.\d{{4}}_{re.escape(after)}"),
            "name": f"{before}_acc_<acc>_{after}", "example": f"{before}_acc_0.9876_{after}",
            "model": model, "dataset": dataset, "line": line}


def loads(maker: dict, stem: str) -> bool:
    """``stem`` (a name, or a name with wildcards for the accuracy) is what ``maker`` saves."""
    return bool(maker["pattern"].fullmatch(stem)) or (
        any(c in stem for c in "*?[") and fnmatch.fnmatchcase(maker["example"], stem))


def check_checkpoints(commands: List[Command]) -> List[str]:
    """Each --load_folder_model names a checkpoint an earlier command makes, of the --model and
    --dataset the command names (if it names them)."""
    makers: List[dict] = []
    problems = []
    for command in commands:
        args = command.args
        if args is None:
            continue  # its flags are already reported
        parent = None
        name = getattr(args, "load_folder_model", None)
        if name:
            stem = Path(name).name
            stem = stem[:-3] if stem.endswith(".pt") else stem
            candidates = [maker for maker in makers if loads(maker, stem)]
            if not candidates:
                earlier = ", ".join(maker["name"] for maker in makers) or "nothing"
                problems.append(f"{command}: loads {name}, which no earlier README command makes "
                                f"(earlier ones make: {earlier}); add the baseline.py or "
                                f"pruning.py command that makes it before this one")
                continue
            parent = candidates[-1]
            for flag in ("model", "dataset"):
                wanted = getattr(args, flag, None)
                if wanted is not None and wanted != parent[flag]:
                    problems.append(f"{command}: --{flag}={wanted}, but {name} (made on README "
                                    f"line {parent['line']}) is a {parent[flag]} checkpoint")
        if command.script == "baseline.py" and args.do_training and args.epochs > 0:
            makers.append(made(args.model, args.dataset, args.epochs, None, command.line))
        elif command.script == "pruning.py" and parent is not None:
            makers.append(made(parent["model"], parent["dataset"], args.epochs,
                               args.pruning_method, command.line))
    return problems


def readme_problems(text: str) -> Tuple[List[str], List[str]]:
    """(flag problems, checkpoint problems) of a README's commands. Flags are parsed in an empty
    folder where the files earlier commands write exist (sensitivity.py's rates files, which
    pruning.py --layer_rates reads at parse time), so a flag reading a file no earlier command
    makes is a problem."""
    import tempfile
    import models
    commands = []
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            for command in python_commands(text):
                commands.append(check_flags(command))
                if command.script == "sensitivity.py" and command.args is not None:
                    for model in models.model_names():  # whichever model it analysed
                        out = Path(command.args.output or
                                   f"results/sensitivity_{model}_{command.args.method}.csv")
                        out.parent.mkdir(parents=True, exist_ok=True)
                        out.with_suffix(".json").write_text('{"fc1": 0.5}')
        finally:
            os.chdir(previous)
    return [p for c in commands for p in c.problems], check_checkpoints(commands)


# --- the README itself -------------------------------------------------------------------------

def test_the_readme_runs_the_three_scripts():
    scripts = [command.script for command in python_commands(README.read_text())]
    assert {"baseline.py", "pruning.py", "calFLOP.py"} <= set(scripts)


def test_every_script_the_readme_runs_exists_and_knows_its_flags():
    flag_problems, _ = readme_problems(README.read_text())
    assert not flag_problems, "\n".join(flag_problems)


def test_every_checkpoint_the_readme_loads_is_made_by_an_earlier_command():
    _, checkpoint_problems = readme_problems(README.read_text())
    assert not checkpoint_problems, "\n".join(checkpoint_problems)


# --- the checker, on small READMEs ---------------------------------------------------------------

def epochs_default(script: str) -> int:
    return script_parser(script).get_default("epochs")


def fenced(*lines: str, fence: str = "bash") -> str:
    return "\n".join(["# Title", "", f"```{fence}", *lines, "```", ""])


def test_blocks_are_read_with_continuations_joined_and_comments_dropped():
    text = fenced("# Train it, then evaluate it",
                  "python baseline.py --model=lenet_5 \\",
                  "    --epochs=3",
                  "python3 -m pytest -q && python calFLOP.py --model=lenet_5  # a table") \
        + fenced("python nosuch.py --model=x", fence="")
    commands = python_commands(text)
    assert [(c.line, c.script, c.argv) for c in commands] == [
        (5, "baseline.py", ["--model=lenet_5", "--epochs=3"]),
        (7, "calFLOP.py", ["--model=lenet_5"])]


def test_a_chain_of_made_checkpoints_passes():
    baseline_epochs, pruning_epochs = epochs_default("baseline.py"), epochs_default("pruning.py")
    text = fenced(
        "python baseline.py --model=lenet_5_caffe",
        "python baseline.py --model=lenet_5_caffe --do_training=False \\",
        f"    --load_folder_model=lenet_5_caffe_mnist_acc_0.9911_epoch_{baseline_epochs}",
        f"python pruning.py --load_folder_model=lenet_5_caffe_mnist_acc_0.9922_epoch_{baseline_epochs}.pt "
        "--pruning_method=fpgm --cut_rate=0.4",
        "python calFLOP.py --load_folder_model="
        f"checkpoints/lenet_5_caffe_fpgm_mnist_acc_0.9900_epoch_{pruning_epochs}.pt")
    assert readme_problems(text) == ([], [])


def test_a_checkpoint_no_earlier_command_makes_is_reported():
    epochs = epochs_default("baseline.py")
    text = fenced(
        "python baseline.py --model=lenet_300_100 --dataset=mnist",
        "python pruning.py --load_folder_model=lenet_5_caffe_mnist_acc_0.9922_epoch_30 \\",
        "    --pruning_method=fpgm --cut_rate=0.4",
        f"python pruning.py --load_folder_model=lenet_300_100_mnist_acc_0.9800_epoch_{epochs + 5}",
        f"python calFLOP.py --load_folder_model=lenet_300_100_mnist_acc_0.98_epoch_{epochs}",
        f"python pruning.py --load_folder_model=lenet_300_100_fpgm_mnist_acc_0.9800_epoch_{epochs}",
        f"python calFLOP.py --load_folder_model=lenet_300_100_mnist_acc_0.9800_epoch_{epochs}")
    flag_problems, problems = readme_problems(text)
    assert flag_problems == []
    assert [p.split(":")[0] for p in problems] == [f"README line {n}" for n in (5, 7, 8, 9)]
    assert "loads lenet_5_caffe_mnist_acc_0.9922_epoch_30, which no earlier README command makes" \
        in problems[0]


def test_order_evaluation_only_and_model_mismatch_are_reported():
    name = f"lenet_5_mnist_acc_0.9876_epoch_{epochs_default('baseline.py')}"
    text = fenced(
        f"python calFLOP.py --load_folder_model={name}",                      # before it is made
        "python baseline.py --model=lenet_5 --do_training=False",              # makes nothing
        f"python calFLOP.py --load_folder_model={name}",
        "python baseline.py --model=lenet_5",
        f"python baseline.py --model=lenet_300_100 --do_training=False --load_folder_model={name}",
        f"python pruning.py --load_folder_model={name} --dataset=fashion_mnist")
    _, problems = readme_problems(text)
    assert [p.split(":")[0] for p in problems] == [f"README line {n}" for n in (4, 6, 8, 9)]
    assert "--model=lenet_300_100, but" in problems[2] and "is a lenet_5 checkpoint" in problems[2]
    assert "--dataset=fashion_mnist, but" in problems[3]


def test_missing_scripts_unknown_abbreviated_and_refused_flags_are_reported():
    text = fenced(
        "python nosuch.py --model=lenet_5",
        "python baseline.py --model=lenet_5 --no_such_flag=1",
        "python baseline.py --model=lenet_5 --learning=0.1",          # argparse would take it
        "python baseline.py --model=no_such_model",
        "python calFLOP.py --model=lenet_5 --format=csv")
    flag_problems, _ = readme_problems(text)
    assert len(flag_problems) == 4
    assert "no script nosuch.py" in flag_problems[0]
    assert "has no flag --no_such_flag" in flag_problems[1]
    assert "has no flag --learning" in flag_problems[2]
    assert "refuses its flags" in flag_problems[3] and "no_such_model" in flag_problems[3]


def test_abbreviations_are_not_known_flags():
    argv = ["--load_folder=x", "--cut=0.4"]
    parser = script_parser("pruning.py")
    assert parser.parse_known_args(argv)[1] == argv  # the scripts refuse abbreviations too
    command = check_flags(Command(1, "pruning.py", argv))
    assert [p.split(": ")[-1] for p in command.problems] == \
        ["pruning.py has no flag --load_folder", "pruning.py has no flag --cut"]
