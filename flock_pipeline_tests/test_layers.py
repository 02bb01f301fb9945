"""The package's layers hold: every import of the package (at module level, inside functions, under TYPE_CHECKING)
points down the layer order or stays in its own layer, and no modules import each other round in a cycle.

Layer order (lowest first): errors; store; core; resources; validator; defs; definitions; miner and demo; cli.
A module may import its own layer and the layers below it. Nothing imports demo.py or cli.py but the command
line itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "flock_pipeline"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS = ["errors", "store", "core", "resources", "validator", "defs", "definitions", "miner|demo", "cli"]
RANK = {name: i for i, group in enumerate(LAYERS) for name in group.split("|")}


def layer_of(module: str) -> int | None:
    """The rank of a module's layer (None: the package's own __init__, which may be imported by anything)."""
    parts = module.split(".")
    return RANK[parts[1]] if len(parts) > 1 else None


def sources(root: Path = ROOT) -> dict[str, str]:
    """module name -> source text, for every module of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        out[".".join(parts)] = path.read_text()
    return out


def imports(module: str, source: str, modules: set[str], is_package: bool) -> set[str]:
    """The package's modules that `module` imports anywhere in its source (lazy imports included)."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` where c is a name, not a module
                name = name.rpartition(".")[0]
            if name.startswith(PACKAGE) and name != module:
                found.add(name)
    return found


def graph(files: dict[str, str]) -> dict[str, set[str]]:
    modules = set(files)
    packages = {m for m in modules if any(other.startswith(m + ".") for other in modules)}
    return {m: imports(m, src, modules, m in packages) for m, src in files.items()}


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports against the layer order."""
    bad = []
    for module, targets in edges.items():
        here = layer_of(module)
        for target in sorted(targets):
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                bad.append(f"{module} -> {target}")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_layer():
    assert all(len(m.split(".")) == 1 or m.split(".")[1] in RANK for m in sources()), sorted(
        m for m in sources() if len(m.split(".")) > 1 and m.split(".")[1] not in RANK)


def test_no_import_points_up_the_layers():
    assert upward(graph(sources())) == []


def test_no_modules_import_each_other_in_a_cycle():
    assert cycles(graph(sources())) == []


def test_nothing_but_the_command_line_imports_the_demo_or_the_cli():
    edges = graph(sources())
    importers = {m for m, targets in edges.items()
                 if any(t == f"{PACKAGE}.demo" or t.startswith(f"{PACKAGE}.cli") for t in targets)}
    assert all(m.startswith(f"{PACKAGE}.cli") for m in importers), importers


@pytest.mark.parametrize("module, added, expect", [
    pytest.param(f"{PACKAGE}.core.scoring", "def f():\n    from flock_pipeline.defs import assets\n",
                 f"{PACKAGE}.core.scoring -> {PACKAGE}.defs.assets", id="lazy-core-to-defs"),
    pytest.param(f"{PACKAGE}.store.records", "import flock_pipeline.resources.hub\n",
                 f"{PACKAGE}.store.records -> {PACKAGE}.resources.hub", id="store-to-resources"),
    pytest.param(f"{PACKAGE}.validator.shards", "if False:\n    from ..defs.epoch import run_epoch\n",
                 f"{PACKAGE}.validator.shards -> {PACKAGE}.defs.epoch", id="relative-validator-to-defs"),
])
def test_a_deliberately_added_upward_import_is_caught(module, added, expect):
    files = sources()
    files[module] += "\n" + added
    assert expect in upward(graph(files))


def test_a_deliberately_added_cycle_is_caught():
    files = sources()
    files[f"{PACKAGE}.core.dedup"] += "\ndef f():\n    from flock_pipeline.core.competitions import curation\n"
    assert any({f"{PACKAGE}.core.dedup", f"{PACKAGE}.core.competitions.curation"} <= set(c)
               for c in cycles(graph(files)))


def test_core_and_store_import_neither_dagster_nor_the_chain_sdk():
    """Pure layers: the domain code and the store run without Dagster and without bittensor (the chain SDK is
    reached only through the chain resource)."""
    found = []
    for module, source in sources().items():
        if layer_of(module) in (RANK["store"], RANK["core"], RANK["errors"]):
            for node in ast.walk(ast.parse(source)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                found += [f"{module}: {n}" for n in names if n.split(".")[0] in ("dagster", "bittensor")]
    assert found == []


def test_every_error_of_the_product_is_a_flock_error_with_an_exit_code():
    """One hierarchy: the command line maps `exit_code` (and `label`), never a class name."""
    import importlib
    import inspect

    from flock_pipeline.errors import FlockError

    outside = []
    for module in sources():
        if module.endswith((".demo", ".definitions", ".__main__")) or ".defs" in module or ".cli" in module:
            continue  # importing these builds resources or definitions, or runs a program; checked below
        for name, obj in inspect.getmembers(importlib.import_module(module), inspect.isclass):
            if name.startswith("_"):
                continue  # a module's private control flow (a retry signal), never raised out of it
            if issubclass(obj, BaseException) and obj.__module__ == module and not issubclass(obj, FlockError):
                outside.append(f"{module}.{name}")
    from flock_pipeline.defs.assets import BatchFailed
    from flock_pipeline.defs.epoch import EpochFailed
    from flock_pipeline.demo import DemoHomeError

    assert outside == [] and all(issubclass(e, FlockError) for e in (BatchFailed, EpochFailed, DemoHomeError))
    assert all(isinstance(e.exit_code, int) for e in FlockError.__subclasses__())
