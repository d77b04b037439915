"""examples/ run as a user runs them: from outside the checkout, with the one documented step
(PYTHONPATH=<checkout>); the README's "Use from Python" code is the example's own."""
import os
import re
import subprocess
import sys

from tests.conftest import ROOT

import pytest

EXAMPLES = ROOT / "examples"
EXAMPLE = EXAMPLES / "prune_mobilenet_v2.py"


def test_the_mobilenet_example_runs_from_outside_the_checkout(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(EXAMPLE), "--epochs=2", "--batches=2",
                           "--image_size=32", f"--output={tmp_path}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    dense, compact = (int(n.replace(",", "")) for n in re.findall(r"([\d,]+) -> ([\d,]+)", line)[0])
    assert compact < 0.8 * dense, line
    assert "outputs differ by 0.0e+00" in line, line
    assert (tmp_path / "mobilenet_v2_pruned.pt").is_file()


def _code_lines(text: str):
    return [line.split("#")[0].strip() for line in text.splitlines()
            if line.split("#")[0].strip()]


@pytest.mark.parametrize("attention, heads, widths", [
    ("heads", "[3, 3, 3, 3]", "[(16, 16), (16, 16), (16, 16), (16, 16)]"),
    ("head_width", "[6, 6, 6, 6]", "[(8, 8), (8, 8), (8, 8), (8, 8)]")])
def test_the_vit_example_prunes_heads_and_loads_them_back(tmp_path, attention, heads, widths):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(EXAMPLES / "prune_vit.py"), "--epochs=1",
                           "--batches=2", "--rate=0.5", f"--attention={attention}",
                           f"--output={tmp_path}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    heads_line, size_line = done.stdout.strip().splitlines()[-2:]
    assert heads_line == (f"heads per block [6, 6, 6, 6] -> {heads}; (query/key, value) width of a "
                          f"head [(16, 16), (16, 16), (16, 16), (16, 16)] -> {widths}; MLP width "
                          "[384, 384, 384, 384] -> [192, 192, 192, 192]"), heads_line
    assert "outputs differ by 0.0e+00" in size_line, size_line
    assert (tmp_path / "vit_pruned.pt").is_file()


@pytest.mark.parametrize("position, name", [(0, "prune_mobilenet_v2.py"), (1, "prune_vit.py")])
def test_the_readme_python_section_is_the_examples(position, name):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[position]
    example = set(_code_lines((EXAMPLES / name).read_text()))
    missing = [line for line in _code_lines(block) 
               if line not in example and not line.startswith(("for images, labels in", "..."))]
    assert not missing, f"README lines not in {name}: {missing}"
