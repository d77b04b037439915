"""The packages' static import graph: one way (pruners -> models -> utils), no cycle.

Every module under models/, pruners/ and utils/ is parsed with ast, imports inside functions
included (a lazy import still ties the modules together: it only hides the circle until the
function runs). Written over whatever modules exist, so files may move without touching it."""
import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("utils", "models", "pruners")
# Lower layers must not import higher ones: scripts -> pruners -> models -> utils.
LAYER = {"utils": 0, "models": 1, "pruners": 2}

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> Dict[str, Path]:
    return {module_name(path): path for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))}


def resolve(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The project module ``name`` refers to (the longest known prefix), or None outside it."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """Project modules ``module`` imports anywhere in its body; ``from package import x`` counts
    as importing the submodule ``package.x`` when there is one, else the package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            targets = [f"{source}.{alias.name}" for alias in node.names] + [source]
            # "from utils import cli": the submodule when it exists, not the package as well.
            submodules = [t for t in targets[:-1] if t in modules]
            if len(submodules) == len(node.names):
                targets = submodules
        else:
            continue
        for target in targets:
            resolved = resolve(target, modules)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph() -> Dict[str, Set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colours)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: finished
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def upward_edges(graph: Dict[str, Set[str]]):
    """(module, imported package) where a lower layer imports a higher one."""
    edges = set()
    for module, targets in graph.items():
        for target in targets:
            low, high = module.split(".")[0], target.split(".")[0]
            if LAYER[high] > LAYER[low]:
                edges.add((module, high))
    return edges


def test_the_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_one_way_pruners_models_utils():
    upward = upward_edges(import_graph())
    unexpected = sorted(upward)
    assert not unexpected, "lower layer imports a higher one: " + ", ".join(
        f"{module} imports {package}" for module, package in unexpected)


def test_no_package_module_imports_the_scripts_composition_root():
    graph_modules = project_modules()
    offenders = []
    for name, path in graph_modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in SCRIPT_LEVEL_MODULES for n in names):
                offenders.append(name)
    assert not offenders, f"imports a script-level module: {sorted(set(offenders))}"


# Modules beside the scripts (the scripts themselves and their composition root).
SCRIPT_LEVEL_MODULES = {path.stem for path in ROOT.glob("*.py")}


def test_the_checker_finds_a_cycle_through_a_lazy_import(tmp_path):
    """The checker itself: a cycle closed by an import inside a function is found."""
    graph = {"utils.a": {"utils.b"}, "utils.b": {"utils.c"}, "utils.c": {"utils.a"}}
    assert find_cycle(graph) == ["utils.a", "utils.b", "utils.c", "utils.a"]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from utils import cli\n")
    assert imports_of("utils.m", source, {"utils": source, "utils.cli": source,
                                          "utils.m": source}) == {"utils.cli"}


def test_every_module_of_models_is_imported_so_a_new_file_registers_itself():
    """models/__init__.py imports its folder (pkgutil): a model file added by the README's
    recipe is registered without an import list to update."""
    import subprocess
    import sys
    expected = sorted(f"models.{path.stem}" for path in (ROOT / "models").glob("*.py")
                      if path.stem != "__init__")
    code = ("import sys, models; print(' '.join(sorted(m for m in sys.modules "
            "if m.startswith('models.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert sorted(set(expected) - set(out)) == []
