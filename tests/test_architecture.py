"""The import graph of `spmdbatch` has no cycles and no upward imports between its layers.

The layers, from the bottom: `errors`/`files` (no dependencies), `runtime` (values, primitives,
the registry and what batching rules share), `ad` (tracer, tape), `primitives` (each
primitive with its implementation, batching, ragged and VJP rules), `execution` (the execution of batch programs:
scheduler, lanes, calls), `frontend` (bytecode to batch program), `spmd`, `custom_vjp` and `nn` (the user
API), `distributed` (training on top of `nn`), and the package's `__init__`. A module may
import its own layer and the layers below it.

Every import statement counts, also one inside a function: an import moved into a function
still makes the importing module depend on the imported one; only the moment changes. Importing
`a.b.c` from outside package `a.b` runs `a/b/__init__.py` first, so it also counts as an
import of `a.b` (and of `a`).
"""
from __future__ import annotations

import ast
from pathlib import Path

import spmdbatch

ROOT = Path(spmdbatch.__file__).resolve().parent
PACKAGE = "spmdbatch"

# module (or package) name -> layer; a module's layer is that of its longest listed prefix
LAYERS = {
    "spmdbatch.errors": 0,
    "spmdbatch.files": 0,
    "spmdbatch.runtime": 1,
    "spmdbatch.ad": 2,
    "spmdbatch.primitives": 3,
    "spmdbatch.execution": 4,
    "spmdbatch.frontend": 5,
    "spmdbatch.spmd": 6,
    "spmdbatch.custom_vjp": 6,
    "spmdbatch.nn": 6,
    "spmdbatch.distributed": 7,
    "spmdbatch": 8,
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = (PACKAGE,) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"module {module} is in no layer: add it to LAYERS in {__file__}")


def import_edges() -> list[tuple[str, str, str]]:
    """Every (importer, imported, "file:line") between modules of the package."""
    mods = modules()
    edges = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in mods else module
                           for alias in node.names]
            where = f"{path.relative_to(ROOT.parent)}:{node.lineno}" if targets else ""
            for target in targets:
                if not target.startswith(PACKAGE):
                    continue
                # importing a.b.c from outside a.b first runs the __init__ of a.b (and of a)
                parts = target.split(".")
                for n in range(len(parts), 0, -1):
                    imported = ".".join(parts[:n])
                    if imported in mods and imported != name and not (
                            n < len(parts) and (name + ".").startswith(imported + ".")):
                        edges.append((name, imported, where))
    return edges


def cycles(edges) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_no_upward_imports():
    upward = sorted({f"{a} imports {b} ({where})" for a, b, where in import_edges()
                     if layer(a) < layer(b)})
    assert not upward, "imports from a lower layer into a higher one:\n  " + "\n  ".join(upward)


def test_no_import_cycles():
    edges = import_edges()
    report = []
    for component in cycles(edges):
        members = set(component)
        inside = sorted({f"{a} -> {b} ({where})" for a, b, where in edges
                         if a in members and b in members})
        report.append(" <-> ".join(component) + ":\n    " + "\n    ".join(inside))
    assert not report, "import cycles between modules:\n  " + "\n  ".join(report)


def test_the_checker_sees_cycles_and_upward_imports():
    # the checker itself, on a made-up graph: a cycle through three modules is one component
    fake = [("a", "b", ""), ("b", "c", ""), ("c", "a", ""), ("c", "d", "")]
    assert cycles(fake) == [["a", "b", "c"]]
    assert layer("spmdbatch.runtime.mapped") < layer("spmdbatch.execution.lanes")
    assert layer("spmdbatch.nn.layers") == layer("spmdbatch.spmd")
