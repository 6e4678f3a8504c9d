"""Issue 15: the package's imports run one way and hold no cycle (a script over the package's own imports).

Every ``import attnviz...`` / ``from attnviz... import ...`` of every module counts, at module level
or inside a function (a lazy import is still a dependency); imports under ``if TYPE_CHECKING:`` are
annotations only and do not count. Layers, lowest first (a module may import its own layer or lower):
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "attnviz"

#: (layer, module prefixes), lowest first (README "Architecture"): the capture engine knows nothing of models,
#: inputs or views; loading knows the engine (which models need eager attention); each input module loads and
#: prepares its modality and runs the engine; analyses read captures; views draw them; the report writes them;
#: pipelines run a command; the CLI parses and prints.
LAYERS = (
    (0, ("attnviz.errors", "attnviz.types", "attnviz.version")),
    (1, ("attnviz.methods",)),
    (2, ("attnviz.capture", "attnviz.verify", "attnviz.signals", "attnviz.sparse", "attnviz.longt5", "attnviz.blocksparse",
         "attnviz.bands")),
    (3, ("attnviz.models",)),
    (4, ("attnviz.inputs",)),
    (5, ("attnviz.analysis",)),
    (6, ("attnviz.generate", "attnviz.vlm")),
    (7, ("attnviz.render",)),
    (8, ("attnviz.html",)),
    (9, ("attnviz.report", "attnviz.attention_file")),
    (10, ("attnviz.pipelines",)),
    (11, ("attnviz.cli",)),
    (12, ("attnviz.__main__", "attnviz")),
)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best = None
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), layer)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The attnviz modules ``path`` imports (submodules resolved: ``from attnviz.x import y`` -> ``attnviz.x.y``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("attnviz"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                if base.startswith("attnviz"):
                    for alias in child.names:
                        sub = f"{base}.{alias.name}"
                        found.add(sub if sub in modules else base)
            visit(child)

    visit(tree)
    found.discard(here)
    return {m for m in found if m in modules}


@pytest.fixture(scope="module")
def graph():
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_nothing_imports_upward(graph):
    bad = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
           for m, deps in graph.items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not bad, "\n".join(bad)


def test_low_layers_never_import_views_reports_or_the_cli(graph):
    """The issue's rule, spelled out: capture/analysis/inputs/methods/types import no render, html, report, pipelines or cli."""
    low = ("attnviz.capture", "attnviz.verify", "attnviz.signals", "attnviz.analysis", "attnviz.inputs", "attnviz.methods", "attnviz.types",
           "attnviz.models", "attnviz.errors", "attnviz.generate", "attnviz.vlm", "attnviz.version")
    high = ("attnviz.render", "attnviz.html", "attnviz.report", "attnviz.pipelines", "attnviz.cli")
    bad = [f"{m} imports {d}" for m, deps in graph.items() if m.startswith(low) for d in deps if d.startswith(high)]
    assert not bad, "\n".join(bad)


def test_html_does_not_import_render(graph):
    bad = [f"{m} imports {d}" for m, deps in graph.items() if m.startswith("attnviz.html") for d in deps
           if d.startswith("attnviz.render")]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle(graph):
    # a package's __init__ that re-exports its own submodules is not a cycle of the design: leave those edges out
    edges = {m: {d for d in deps if not (m != "attnviz" and d.startswith(m + "."))} for m, deps in graph.items()}
    edges["attnviz"] = set()  # the root only re-exports lazily (attnviz/__init__.py)
    cycles = _cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_finds_a_cycle_and_an_upward_import():
    """The checks can fail: a made-up graph with a cycle and an upward import is caught."""
    g = {"attnviz.capture.x": {"attnviz.render.y"}, "attnviz.render.y": {"attnviz.capture.x"}}
    assert _cycles(g) == [["attnviz.capture.x", "attnviz.render.y"]]
    assert layer_of("attnviz.render.y") > layer_of("attnviz.capture.x")


def test_cli_modules_are_thin():
    """Each CLI module stays under ~200 lines: options in, a pipeline call, printing out."""
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (PACKAGE / "cli").glob("*.py")}
    big = {name: n for name, n in sizes.items() if n > 230}
    assert not big, big
