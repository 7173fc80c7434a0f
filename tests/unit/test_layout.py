"""The code's shape: each layer imports only the ones below it, and no modules import in a circle.

Layers, bottom up (ARCHITECTURE.md draws them): ncloud's shared basics (errors, settings,
protocol, the client, the manifest format) <- cluster.core (store, storage, accounts,
reservations) <- jobs (datasets, volumes, models, training, batches, sandbox) <- serve
(the API routes, deployments) <- cluster.control (the controller, the schema, the local
cluster) <- ncloud.cli. Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ncloud", "cluster", "jobs", "serve")
LAYERS = ("ncloud", "cluster.core", "jobs", "serve", "cluster.control", "ncloud.cli")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _layer(module: str) -> int:
    """The highest layer whose prefix names the module (cluster itself: core's level)."""
    best = 1 if module == "cluster" else 0
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            best = i
    return best


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                named = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for target in named:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        edges[name] = targets
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_each_layer_imports_only_the_layers_below_it() -> None:
    edges = _imports(_modules())
    upward = sorted(
        f"{m} ({LAYERS[_layer(m)]}) imports {t} ({LAYERS[_layer(t)]})"
        for m, targets in edges.items()
        for t in targets
        if _layer(t) > _layer(m)
    )
    assert upward == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert _cycles(_imports(_modules())) == []


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("serve.routes.models") > _layer("jobs.models.state") > _layer("cluster.core")
    assert _layer("ncloud.cli.models") > _layer("cluster.control.local") > _layer("ncloud.errors")
