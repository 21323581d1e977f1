"""The package's import graph: no module imports a higher layer, and no two modules import each other.

Layers, lowest first (a module may import its own layer and the ones below):
  0 errors, fsutil, progress, checks, config, sampling, background_server   shared plumbing
  1 models, tiny, compress, llm, synth                   models, compression, generation backends, data
  2 train, eval                                          what consumes them
  3 extend, serve, bench                                 workflows built over training and evaluation
  4 commands, cli, __main__                              the command line

Imports inside functions count as well (they are still dependencies), and so do imports under
`if TYPE_CHECKING:` for the layers; those are not imports at run time, so they make no cycle. Run:
    python -m pytest tests/test_layers.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "selfctx"
LAYERS = [
    {"errors", "fsutil", "progress", "checks", "config", "sampling", "background_server", "__init__"},
    {"models", "tiny", "compress", "llm", "synth"},
    {"train", "eval"},
    {"extend", "serve", "bench"},
    {"commands", "cli", "__main__"},
]
# Known exceptions, to be removed, never added to.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            found.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return found


def _import_graph(*, runtime_only: bool = False) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}

    def owner(target: str) -> str | None:  # the module a dotted import name lives in
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        skip = _type_only(tree) if runtime_only else set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("selfctx"):
                    found = owner(target)
                    if found and found != name:
                        graph[name].add(found)
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, group in enumerate(LAYERS):
        if top in group:
            return i
    raise AssertionError(f"{module}: its top-level name {top!r} has no layer: add it to LAYERS")


def test_no_module_imports_a_higher_layer() -> None:
    graph = _import_graph()
    upward = sorted(
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in graph.items()
        for b in targets
        if _layer(b) > _layer(a) and a != "selfctx"
    )
    assert upward == []


def test_no_import_cycles_beyond_the_known_ones() -> None:
    graph = _import_graph(runtime_only=True)
    # Strongly connected components (Tarjan): any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    cycles = {tuple(sorted(c)) for c in components if len(c) > 1}
    assert cycles <= KNOWN_CYCLES, f"new import cycles: {sorted(cycles - KNOWN_CYCLES)}"
