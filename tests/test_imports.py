"""The import graph of sllmx and its built-in plugins (function-level imports included): no circle, and no
library module imports the runner (run.py) or a command-line module, so the layers depend one way."""

import ast

from tests.common import ROOT


def module_graph() -> dict[str, set[str]]:
    """``{module: sllmx modules it imports}`` for sllmx/ and plugins/ (installed as sllmx_plugins), from the source."""
    files = {**{p: "sllmx" for p in (ROOT / "sllmx").rglob("*.py")},
             **{p: "sllmx_plugins" for p in (ROOT / "plugins").rglob("*.py")}}
    names = {}
    for path, package in files.items():
        parts = path.relative_to(ROOT / ("sllmx" if package == "sllmx" else "plugins")).with_suffix("").parts
        names[path] = ".".join((package, *parts)).removesuffix(".__init__")
    known = set(names.values())
    graph: dict[str, set[str]] = {name: set() for name in known}
    for path, name in names.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in known and t != name)
    for name in known:  # importing a.b.c runs the packages a and a.b first
        parts = name.split(".")
        graph[name].update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in known and p != name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_the_source():
    graph = module_graph()
    assert "sllmx.context" in graph["sllmx.run"] and "sllmx.records" in graph["sllmx.context"]
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]  # the check can fail


def test_no_import_circle():
    assert circles(module_graph()) == []


#: the command-line modules (``python -m ...``), which may import the runner and each other
COMMANDS = {"sllmx.__main__", "sllmx.data.__main__", "sllmx.evaluate", "sllmx.export", "sllmx.chat", "sllmx.report",
            "sllmx.abtest"}


def test_no_library_module_imports_the_runner_or_a_command_line():
    graph = module_graph()
    bad = sorted((m, t) for m, targets in graph.items() if m not in COMMANDS
                 for t in targets if t in COMMANDS or (t == "sllmx.run" and m != "sllmx.run"))
    assert bad == []


def test_the_core_imports_no_built_in_plugin():
    """Built-ins load through the entry points like third-party plugins; the core names none of them."""
    graph = module_graph()
    bad = sorted((m, t) for m, targets in graph.items() if m.startswith("sllmx.") or m == "sllmx"
                 for t in targets if t.startswith("sllmx_plugins"))
    assert bad == []


def test_the_layers_depend_one_way():
    """interfaces <- plugins <- data <- run <- command lines: the plugin interfaces and the record lifecycle's
    plain types import nothing of the data pipeline, the runner or the sweep."""
    graph = module_graph()
    low = {"sllmx.interfaces", "sllmx.hookspecs", "sllmx.context", "sllmx.records", "sllmx.config",
           "sllmx.errors", "sllmx.atomic", "sllmx.plugins"}
    high = {m for m in graph if m.startswith(("sllmx.data", "sllmx.sweep", "sllmx.training", "sllmx.lifecycle",
                                                "sllmx.evaluation"))} | {"sllmx.run"}
    bad = sorted((m, t) for m in low for t in graph[m] if t in high)
    # built-in plugins use the readers and row helpers, never the pipeline, the checks or the runner
    above = {"sllmx.data.pipeline", "sllmx.data.checks", "sllmx.data.detect", "sllmx.data.holdout"} | high - {
        "sllmx.data", "sllmx.data.readers", "sllmx.data.rows", "sllmx.data.dedup", "sllmx.data.pii",
        "sllmx.sweep", "sllmx.sweep.config"}
    closure = {}

    def reach(m, seen):
        for t in graph[m]:
            if t not in seen:
                seen.add(t)
                reach(t, seen)
        return seen

    for m in graph:
        if m.startswith("sllmx_plugins"):
            closure[m] = reach(m, set())
    bad += sorted((m, t) for m, seen in closure.items() for t in seen if t in above)
    assert bad == []
