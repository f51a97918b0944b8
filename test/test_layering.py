"""Layering of `light_tts`: every import points down the table below or stays inside its own layer, and no
modules import each other in a circle.

Layers, lowest first. A module may import modules of its own layer and of the layers below it, never above.
Every import counts: module level, inside functions, and under `if TYPE_CHECKING:` (a lazy import is still a
dependency, and is how circles hide).

| layer | packages / modules | what lives there |
|---|---|---|
| core | errors, model_config, model_dir, request_rules, sampling, text_tokens | facts and rules every process shares |
| kernels | kernels | Triton kernels with their torch references (`llm/`, `flow/`, `codec/`: none imports another) |
| models | models | nn.Modules: shared bodies, `models/<family>/` |
| engines | frontend, token2wav, llm, decode | text/audio features, the LLM and decode engines |
| families | families | the registry and what each family supplies to the processes |
| offline | pipeline, orpheus_pipeline, tools | the offline pipelines, model makers, parity CLI |
| server.runtime | server.runtime | ServerConfig, derived settings, placement, topology (facts, no I/O loops) |
| server.ipc | server.ipc | shared memory, wire messages, ZMQ channels, the process table |
| server.metrics | server.metrics | Prometheus metrics and the playback model |
| server.workers | server.workers | the encode, LLM and decode process loops |
| server.api | server.api | HTTP and WebSocket routes, their schemas, the HTTP worker's process |
| server.launch | server.launch | the launcher and supervisor |
| server.entry | server.api_server | `python -m light_tts.server.api_server` |
| bench | bench | benchmarks (may import anything) |

Apart from the stack: `clients` and `mcp` talk to a server over HTTP and import no other part of light_tts (they
install without torch); `mcp` may import `clients`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "light_tts"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "model_config", "model_dir", "request_rules", "sampling", "text_tokens"),
    ("kernels",),
    ("models",),
    ("frontend", "token2wav", "llm", "decode"),
    ("families",),
    ("pipeline", "orpheus_pipeline", "tools"),
    ("server.runtime",),
    ("server.ipc",),
    ("server.metrics",),
    ("server.workers",),
    ("server.api",),
    ("server.launch",),
    ("server.api_server",),
    ("bench",),
]
APART = {"clients": ("clients",), "mcp": ("mcp", "clients")}  # what each may import
CONTAINERS = {"light_tts", "light_tts.server"}  # packages that hold only a docstring


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, is_package: bool) -> set[str]:
    """Every `light_tts...` module this file imports, anywhere in it (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m == "light_tts" or m.startswith("light_tts.")}


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (names that are attributes, not modules, dropped)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = {m for m in imports_of(path, name, path.name == "__init__.py") if m in files and m != name}
        graph[name] = targets
    return graph


def layer_of(module: str) -> int | str | None:
    """Index in LAYERS (the longest matching prefix), a key of APART, or None for the package root."""
    rel = module.removeprefix("light_tts").removeprefix(".")
    best = None
    for index, names in enumerate(LAYERS):
        for n in names:
            if (rel == n or rel.startswith(n + ".")) and (best is None or len(n) > len(best[1])):
                best = (index, n)
    if best is not None:
        return best[0]
    top = rel.split(".")[0]
    return top if top in APART else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        a = layer_of(src)
        for dst in sorted(targets):
            b = layer_of(dst)
            if b is None:
                continue
            if isinstance(a, str) or isinstance(b, str):
                allowed = isinstance(a, str) and isinstance(b, str) and b in APART[a]
                allowed = allowed or (a == len(LAYERS) - 1)  # bench may import anything
            else:
                allowed = a is None or b <= a
            if not allowed:
                bad.append(f"{src} -> {dst}")
    return bad


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_every_module_has_a_layer():
    graph = import_graph()
    assert [m for m in graph if m not in CONTAINERS and layer_of(m) is None] == []
    assert all(graph[m] == set() for m in CONTAINERS)


def test_no_import_points_up():
    assert upward_imports(import_graph()) == []


def test_no_circles():
    assert circles(import_graph()) == []


def test_the_lm_flow_and_codec_kernels_stay_apart():
    """kernels/llm/, kernels/flow/ and kernels/codec/ share only kernels/dispatch.py and kernels/interpreter.py:
    each engine's kernels change alone."""
    sides = ("light_tts.kernels.llm", "light_tts.kernels.flow", "light_tts.kernels.codec")
    crossing = [
        f"{src} -> {dst}"
        for src, targets in sorted(import_graph().items())
        for dst in sorted(targets)
        for a in sides
        for b in sides
        if a != b and src.startswith(a) and dst.startswith(b)
    ]
    assert crossing == []


@pytest.fixture
def fake_package(tmp_path):
    """A tiny light_tts tree: a runtime module and an api module importing it (allowed)."""
    root = tmp_path / "light_tts"
    for d in ("server/runtime", "server/api"):
        (root / d).mkdir(parents=True)
        (root / d / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "server/__init__.py").write_text("")
    (root / "server/runtime/config.py").write_text("X = 1\n")
    (root / "server/api/app.py").write_text("from light_tts.server.runtime.config import X\n")
    return root


def test_the_checks_catch_an_upward_import_and_a_circle(fake_package):
    assert upward_imports(import_graph(fake_package)) == [] and circles(import_graph(fake_package)) == []
    # a lazy import from the lower layer back up: both an upward import and a circle
    (fake_package / "server/runtime/config.py").write_text(
        "X = 1\n\ndef f():\n    from light_tts.server.api.app import X\n"
    )
    graph = import_graph(fake_package)
    assert upward_imports(graph) == ["light_tts.server.runtime.config -> light_tts.server.api.app"]
    assert circles(graph) == [["light_tts.server.api.app", "light_tts.server.runtime.config"]]
