"""The package's conventions, checked (CONTRIBUTING.md): one checks module per lab subpackage,
imported the same public way by every notebook; honest ``__all__``; lazy imports that stay
lazy; no import cycle."""
import ast
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import labsupport

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "labsupport"
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
LAB_SUBPACKAGES = [name for name in SUBPACKAGES if (PACKAGE / name / "checks.py").exists()]
KNOWN_CYCLES = []  # (the launcher's loop with _worker is gone: progress has its own module)


def _code_cells(path):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == "code"]


def test_every_lab_subpackage_has_checks_and_mirrored_test_files():
    assert {"collectives", "tensor_parallel", "manual_split", "pipeline", "deepspeed_pipe",
            "checkpointing"} <= set(LAB_SUBPACKAGES)
    for name in LAB_SUBPACKAGES:
        for test in (f"test_{name}.py", f"test_{name}_checks.py"):
            assert (ROOT / "tests" / test).exists(), f"labsupport/{name} has no tests/{test}"


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")),
                         ids=lambda p: p.stem)
def test_notebooks_import_checks_the_public_way_and_nothing_private(path):
    imports = [line.strip() for cell in _code_cells(path) for line in cell.splitlines()
               if re.match(r"\s*(from|import)\s+labsupport", line)]
    for line in imports:
        names = re.split(r"[\s,.()]+", line)
        assert not any(n.startswith("_") for n in names if n), f"{path.name}: {line}"
    checks = [line for line in imports if re.search(r"\bchecks\b", line)]
    for line in checks:
        assert re.fullmatch(r"from labsupport\.\w+ import .*\bchecks\b.*", line), (
            f"{path.name}: import a lab's checks as 'from labsupport.<subpackage> import "
            f"checks', not {line!r}")
        assert " as " not in line, f"{path.name}: {line}"


def _modules():
    for info in pkgutil.walk_packages(labsupport.__path__, "labsupport."):
        if info.name.endswith("__main__"):
            continue
        yield info.name


@pytest.mark.parametrize("name", ["labsupport", *_modules()])
def test_all_lists_exactly_the_public_names(name):
    if name.startswith("labsupport.deepspeed_pipe"):
        pytest.importorskip("deepspeed")
    module = importlib.import_module(name)
    declared = getattr(module, "__all__", None)
    if declared is None:
        return
    assert len(declared) == len(set(declared)), f"{name}.__all__ repeats a name"
    missing = [n for n in declared if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"
    if not hasattr(module, "__path__"):
        return  # a module: __all__ may leave helpers out; a package's __init__ must not
    bound = {n for n, v in vars(module).items()
             if not n.startswith("_") and not isinstance(v, type(sys))
             and getattr(v, "__module__", name).startswith("labsupport")}
    assert bound <= set(declared), f"{name} exports {sorted(bound - set(declared))} outside __all__"


@pytest.mark.parametrize("code, must_not_load", [
    ("import labsupport.pipeline", "labsupport.pipeline.run"),
    ("import labsupport.deepspeed_pipe", "deepspeed"),
    ("import labsupport", "matplotlib"),
])
def test_lazy_imports_stay_lazy(code, must_not_load):
    probe = f"{code}; import sys; print({must_not_load!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_lazy_names_arrive_on_first_use():
    from labsupport import pipeline

    assert "run_pipeline" in dir(pipeline) and "run_pipeline" in pipeline.__all__
    assert callable(pipeline.run_pipeline)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        pipeline.nope


def _import_graph():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path

    def known(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {known(a.name) for a in node.names if a.name.startswith("labsupport")}
            elif isinstance(node, ast.ImportFrom):
                base = here.split(".")[:len(here.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                if target.startswith("labsupport"):
                    deps |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules
                             else known(target) for a in node.names}
        graph[name] = deps - {None, name}
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    graph = _import_graph()
    # The toolkit sits low; how its failures render (verdict) sits lower still.
    assert graph["labsupport.checks"] <= {"labsupport.launcher", "labsupport.verdict"}
    assert graph["labsupport.verdict"] == set()
    cycles = [c for c in _cycles(graph) if c not in KNOWN_CYCLES]
    assert not cycles, f"import cycles: {cycles}"
