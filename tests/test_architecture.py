"""The package's import graph: no cycles, and every import points down the layers of the design.

Built from the source with ``ast`` (imports inside functions count too: a lazy import that goes up a
layer is still an arrow the wrong way), so the test needs no third-party tool.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "un2clip"

# The layers, lowest first: a module may import from its own layer and from the layers below it.
# A module belongs to the layer of the longest prefix listed here that names it; the package itself
# ("un2clip", its __init__) names only itself.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("un2clip", "un2clip.argtypes", "un2clip.errors", "un2clip.files", "un2clip.registry", "un2clip.runs",
     "un2clip.data"),  # foundation
    ("un2clip.models",),  # what a model is
    ("un2clip.load",),  # any spec -> a model
    ("un2clip.objectives",),  # what is minimised
    ("un2clip.eval.core",),  # what every evaluation shares: embedding, metrics, result files
    # what is done with models; the evaluations grouped by what they measure
    ("un2clip.train", "un2clip.export", "un2clip.curate", "un2clip.sketch",
     "un2clip.eval.encoder", "un2clip.eval.seg", "un2clip.eval.downstream", "un2clip.eval.mllm", "un2clip.eval.decoder"),
    ("un2clip.eval",),  # the registry of evaluations (un2clip.eval's __init__)
    ("un2clip.world", "un2clip.bench"),  # workflows: the world's experiments, benchmarks
    ("un2clip.cli",),  # entry points; nothing imports them
)


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] in ("__init__", "__main__") and len(parts) > 1 else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: modules of the package it imports}, for every ``.py`` file under ``root``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    prefix = root.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == prefix}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                if module.split(".")[0] != prefix:
                    continue
                for alias in node.names:  # `from un2clip.eval import mmvp` imports the module un2clip.eval.encoder.mmvp
                    full = f"{module}.{alias.name}"
                    targets.add(full if full in files else module)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def layer_of(module: str, layers=LAYERS) -> int:
    best, level = -1, None
    for i, names in enumerate(layers):
        for prefix in names:
            below = "." in prefix and module.startswith(prefix + ".")
            if (module == prefix or below) and len(prefix) > best:
                best, level = len(prefix), i
    if level is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return level


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    return sorted(f"{a} (layer {layer_of(a, layers)}) imports {b} (layer {layer_of(b, layers)})"
                  for a, targets in graph.items() for b in targets if layer_of(b, layers) > layer_of(a, layers))


# -- the checks themselves can fail: a hand-built package with a cycle and an upward arrow ---------------

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    pkg = _write(tmp_path / "un2clip", {
        "__init__.py": "",
        "data/__init__.py": "from un2clip.data import a\n",
        "data/a.py": "def f():\n    from un2clip.models import m  # lazy, still an arrow\n",
        "models/__init__.py": "",
        "models/m.py": "from ..data import a\nfrom un2clip.data.a import f\n",
    })
    graph = import_graph(pkg)
    assert graph["un2clip.models.m"] == {"un2clip.data.a"}  # relative import resolved
    assert graph["un2clip.data"] == {"un2clip.data.a"}
    assert find_cycle(graph) == ["un2clip.data.a", "un2clip.models.m", "un2clip.data.a"]
    layers = (("un2clip", "un2clip.data"), ("un2clip.models",))
    assert upward_imports(graph, layers) == ["un2clip.data.a (layer 0) imports un2clip.models.m (layer 1)"]
    del graph["un2clip.data.a"]
    assert find_cycle(graph) is None and upward_imports(graph, layers) == []
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("un2clip.elsewhere", layers)


# -- the package ---------------------------------------------------------------------------------------

def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_imports_point_down_the_layers():
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    assert upward_imports(graph) == []


def test_nothing_imports_the_cli():
    graph = import_graph()
    assert sorted(a for a, targets in graph.items() if not a.startswith("un2clip.cli")
                  and any(t.startswith("un2clip.cli") for t in targets)) == []
