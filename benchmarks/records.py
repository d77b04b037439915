"""The records behind the README's results: one JSON line per run in results/runs.jsonl (a quick
smoke run's in results/quick/), appended as each run ends and read back by the report and plots.
"""
import json
import os
from pathlib import Path
from typing import Dict, List, Sequence

from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "results"
FULL_RECORDS = RESULTS_DIR / "runs.jsonl"
QUICK_DIR = RESULTS_DIR / "quick"


def relative(path) -> str:
    """Paths inside the repository as repository-relative, so records read the same anywhere."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def load_records(path: Path) -> List[dict]:
    if not Path(path).is_file():
        raise UserError(f"no records at {relative(path)}; run `python benchmarks/reproduce.py run` first")
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{relative(path)} line {number} is not JSON ({exc.msg}); "
                            "delete that line or rerun the experiment")
    return records


def latest(records: Sequence[dict]) -> Dict[str, dict]:
    """The last record of each experiment: a rerun supersedes, the history stays in the file."""
    found = {}
    for record in records:
        found[record["experiment"]] = record
    return found


def append_record(path: Path, record: dict):
    """One line per run, flushed to disk at once, so an interrupted run keeps earlier records.
    An append, not utils.files.atomic_write: a line is all or nothing for the reader (a torn last
    line is reported by load_records), and open() gives a new file the usual umask permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())

