"""The layout is the architecture: layers are folders, imports flow one way, and no module imports itself back.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a cycle that only type checkers
see still means two modules that cannot be read or changed one without the other.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mapreduce", "storage")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                # ``from pkg import mod`` imports the module ``pkg.mod``; ``from pkg import name``, the package
                candidates = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {c for c in candidates if c in modules and c != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def _imports_of(prefix: str, graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(m, t) for m, ts in graph.items() if m == prefix or m.startswith(prefix + ".") for t in ts}


def test_storage_knows_nothing_of_the_protocol() -> None:
    graph = import_graph()
    assert {(m, t) for m, t in _imports_of("storage", graph) if t.startswith("mapreduce")} == set()


def test_the_object_format_depends_only_on_the_foundation() -> None:
    """``mapreduce.wire`` (names, keys, hash tree, signing, codec, records) may use the run spec, the plan and the
    errors, never the network, the roles or the tooling: a second implementation reads it on its own."""
    foundation = {"mapreduce", "mapreduce.errors", "mapreduce.spec", "mapreduce.plan", "mapreduce.windows", "mapreduce.seeds"}
    graph = import_graph()
    outside = {(m, t) for m, t in _imports_of("mapreduce.wire", graph)
               if not t.startswith("mapreduce.wire") and t not in foundation}
    assert outside == set()


def test_roles_do_not_import_the_tooling_or_the_swarm() -> None:
    """Imports flow one way: ``ops`` (command line, metrics, reports) and ``swarm`` are built on the roles."""
    graph = import_graph()
    upward = {(m, t) for m, ts in graph.items() if m.startswith("mapreduce")
              and not m.startswith(("mapreduce.ops", "mapreduce.swarm")) and m not in ("mapreduce.__main__",)
              for t in ts if t.startswith(("mapreduce.ops", "mapreduce.swarm"))}
    assert upward == set()


def test_the_public_face_names_what_a_program_needs() -> None:
    """``from mapreduce import Peer, Network, ...``: every exported name resolves to the object its module defines."""
    import importlib

    import mapreduce

    for needed in ("Peer", "PeerConfig", "Broadcaster", "Network", "StorePool", "RunSpec", "Signer", "BucketLocation",
                   "ProtocolError", "StorageError", "NotAParticipant"):
        assert needed in mapreduce.__all__
    for name, module in mapreduce._EXPORTS.items():
        assert getattr(mapreduce, name) is getattr(importlib.import_module(module), name)
    assert set(mapreduce.__all__) <= set(dir(mapreduce))
