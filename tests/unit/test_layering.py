"""The package's floors: imports only go down, and no module imports itself in a circle.

Every module of ``inspect/defectscan``, ``flows/`` and ``benchmarks/`` is read with ``ast``
(imports inside functions and under ``TYPE_CHECKING`` count: a lazy import is a dependency
too) and placed on a floor of :data:`FLOORS`, bottom first; ARCHITECTURE.md draws the same
picture. A module may import from its own floor or below, never above, and the import graph
has no cycle. A new module must be given a floor here, or this test fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Floors, bottom up. ``name`` is a module (without ``defectscan.``); ``name.*`` its submodules.
#: The most specific entry wins: ``sources.base`` (plain records) sits below ``sources.*``.
FLOORS: list[tuple[str, list[str]]] = [
    ("errors", ["defectscan", "errors"]),
    (
        "foundations",
        [
            "imaging",
            "image_headers",
            "tiling",
            "config",
            "plant_file",
            "inputs",
            "metrics",
            "logs",
            "masking",
            "synth",
            "image_stats",
            "sources.base",
            "store.records",
            "cpu_budget",
        ],
    ),
    ("model", ["model", "model.spec", "model.unet", "model.checkpoint", "model.backends"]),
    ("postprocess", ["postprocess", "postprocess_bands"]),
    ("engines", ["model.export", "model.engines", "model.quantise"]),
    ("pipeline", ["pipeline"]),
    (
        "store, sources, archive, report",
        [
            "store",
            "store.*",
            "sources",
            "sources.*",
            "sources.redis_producer",  # covered by sources.*; named: the stream's producer side
            "sources.redis_commands",
            "sources.redis_groups",
            "sources.redis_messages",
            "archive",
            "batch_records",
            "report",
        ],
    ),
    ("service", ["service"]),
    (
        "monitor, batch, training, drift, health",
        [
            "monitor",
            "monitor_stats",
            "monitor_build",
            "monitor_controls",
            "engine_upgrade",
            "champion",
            "batch",
            "training",
            "training.*",
            "drift",
            "drift.*",
            "health",
            "orchestration",
            "flow_params",
            "retention",
            "supervisor",
        ],
    ),
    ("flows", ["flows", "flows.*", "demo"]),
    ("cli, console", ["cli", "cli.*", "console", "console.*"]),
    ("benchmarks", ["benchmarks.*"]),
]


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for root, prefix in ((REPO / "inspect", ""), (REPO, "")):
        tops = ["defectscan"] if root.name == "inspect" else ["flows"]
        for top in tops:
            for f in sorted((root / top).rglob("*.py")):
                parts = list(f.relative_to(root).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                mods[prefix + ".".join(parts)] = f
    for f in sorted((REPO / "benchmarks").glob("*.py")):
        mods[f"benchmarks.{f.stem}"] = f
    return mods


MODULES = _modules()
BENCH = {m.removeprefix("benchmarks.") for m in MODULES if m.startswith("benchmarks.")}


def _resolve(name: str) -> str | None:
    if name.split(".")[0] in BENCH:
        return f"benchmarks.{name.split('.')[0]}"
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path) -> set[str]:
    """The project modules ``module`` imports (resolved to the deepest existing module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package(module, path).split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    deps = {_resolve(n) for n in found}
    return {d for d in deps if d and d != module}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def floor_of(module: str) -> int:
    """The floor index of a module; KeyError when no entry places it."""
    name = module.removeprefix("defectscan.") if module != "defectscan" else module
    best: tuple[int, int] | None = None  # (specificity, floor)
    for i, (_, names) in enumerate(FLOORS):
        for pattern in names:
            if pattern.endswith(".*"):
                stem = pattern[:-2]
                if name.startswith(stem + ".") and (best is None or len(stem) > best[0]):
                    best = (len(stem), i)
            elif name == pattern and (best is None or len(pattern) + 1000 > best[0]):
                best = (len(pattern) + 1000, i)
    if best is None:
        raise KeyError(module)
    return best[1]


def test_every_module_has_a_floor() -> None:
    unplaced = []
    for m in MODULES:
        try:
            floor_of(m)
        except KeyError:
            unplaced.append(m)
    assert unplaced == [], "give these modules a floor in FLOORS (and ARCHITECTURE.md)"


def test_imports_only_go_down() -> None:
    upward = [
        f"{m} ({FLOORS[floor_of(m)][0]}) imports {d} ({FLOORS[floor_of(d)][0]})"
        for m, deps in GRAPH.items()
        for d in sorted(deps)
        if floor_of(d) > floor_of(m)
    ]
    assert upward == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def test_no_import_cycles() -> None:
    # A package's __init__ that re-exports its submodules is not a circle with them.
    graph = {
        m: {d for d in deps if not (MODULES[d].name == "__init__.py" and m.startswith(d + "."))}
        for m, deps in GRAPH.items()
    }
    assert _cycles(graph) == []


def test_command_modules_never_import_the_assembler() -> None:
    offenders = [
        m
        for m, deps in GRAPH.items()
        if m.startswith("defectscan.cli.")
        and ("defectscan.cli" in deps)
        and not m.endswith("__main__")
    ]
    assert offenders == []


def test_the_library_never_imports_benchmarks_or_tests() -> None:
    for m, path in MODULES.items():
        if m.startswith("benchmarks."):
            continue
        text = path.read_text()
        for needle in ("import benchmarks", "from benchmarks", "from helpers", "import tests"):
            assert needle not in text, m


def test_the_checker_sees_a_planted_circle_and_an_upward_import() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert floor_of("defectscan.pipeline") > floor_of("defectscan.postprocess")
    assert floor_of("defectscan.sources.base") < floor_of("defectscan.sources.folder")
    with pytest.raises(KeyError):
        floor_of("defectscan.nowhere")
