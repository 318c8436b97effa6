"""The house rules of the code layout, checked on the import graph of the project's sources.

- no import cycle between the project's modules (lazy imports inside functions count: a cycle
  hidden in a function is still two modules that cannot be understood apart);
- ``nautilus_trader`` is imported only inside ``backtest_pipeline/engine/`` (the one package a
  move to NautilusTrader 2.x has to touch);
- the library ``backtest_pipeline/`` imports no Dagster module (it is the code location's job);
- no private (``_name``) object is imported from another project module;
- the code location's top-level modules are this repository's, not an installed package's.

The benchmark (``benchmarks/naive.py`` is NautilusTrader used alone, as the baseline) and the
tests are not part of the layout and are not checked.
"""

from __future__ import annotations

import ast
import graphlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "backtest_pipeline"
SHELL_PACKAGES = ("assets", "resources")
SHELL_MODULES = ("definitions", "launch", "local_queue")
ENGINE = f"{LIBRARY}.engine"


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str  # the module (or, for `from m import name`, `m.name` when that is a module)
    names: tuple[str, ...]
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    files = [*sorted((ROOT / LIBRARY).rglob("*.py"))]
    for pkg in SHELL_PACKAGES:
        files += sorted((ROOT / pkg).rglob("*.py"))
    files += [ROOT / f"{m}.py" for m in SHELL_MODULES]
    return {module_name(f): f for f in files}


def imports_of(name: str, path: Path, modules: set[str]) -> list[Import]:
    out: list[Import] = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(name, a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importer's package
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            names = tuple(a.name for a in node.names)
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            out += [Import(name, m, (), node.lineno) for m in submodules]
            rest = tuple(n for n in names if f"{base}.{n}" not in modules)
            if rest or not submodules:
                out.append(Import(name, base, rest, node.lineno))
    return out


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    files = project_files()
    modules = set(files)
    edges = [imp for name, path in files.items() for imp in imports_of(name, path, modules)]
    return files, edges


def owner(imported: str, modules: set[str]) -> str | None:
    """The project module an import refers to (the longest known prefix), or None if external."""
    parts = imported.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def test_the_graph_is_read(graph: tuple[dict[str, Path], list[Import]]) -> None:
    files, edges = graph
    # The reader must see the project: the library's packages, the shell and real edges.
    for expected in (f"{LIBRARY}.run.runner", f"{ENGINE}.driver", "assets.backtest", "definitions"):
        assert expected in files
    internal = [e for e in edges if owner(e.imported, set(files))]
    assert len(internal) > 100, "too few project imports found: the graph reader is broken"


def test_no_import_cycle(graph: tuple[dict[str, Path], list[Import]]) -> None:
    files, edges = graph
    modules = set(files)
    deps: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        target = owner(e.imported, modules)
        # A module importing its own package's __init__ (empty here) is not a cycle.
        if target and target != e.importer and not e.importer.startswith(target + "."):
            deps[e.importer].add(target)
    try:
        tuple(graphlib.TopologicalSorter(deps).static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        pytest.fail("import cycle: " + " → ".join(reversed(cycle)))


def test_nautilus_only_inside_the_engine_package(
    graph: tuple[dict[str, Path], list[Import]],
) -> None:
    files, edges = graph
    outside = [
        f"{files[e.importer].relative_to(ROOT)}:{e.line} imports {e.imported}"
        for e in edges
        if e.imported.split(".")[0] == "nautilus_trader"
        and not (e.importer == ENGINE or e.importer.startswith(ENGINE + "."))
    ]
    assert not outside, "nautilus_trader imported outside backtest_pipeline/engine/:\n" + "\n".join(
        outside
    )
    inside = [e for e in edges if e.imported.startswith("nautilus_trader")]
    assert inside, "no nautilus_trader import found at all: the check would pass vacuously"


def test_the_library_knows_nothing_of_dagster(
    graph: tuple[dict[str, Path], list[Import]],
) -> None:
    files, edges = graph
    shell = set(SHELL_PACKAGES) | set(SHELL_MODULES)
    found = [
        f"{files[e.importer].relative_to(ROOT)}:{e.line} imports {e.imported}"
        for e in edges
        if e.importer.split(".")[0] == LIBRARY
        and (e.imported.split(".")[0] in shell or e.imported.split(".")[0].startswith("dagster"))
    ]
    assert not found, "the library imports Dagster or the code location:\n" + "\n".join(found)
    assert any(e.imported.startswith("dagster") for e in edges), "no Dagster import seen at all"


def test_no_private_name_imported_across_modules(
    graph: tuple[dict[str, Path], list[Import]],
) -> None:
    files, edges = graph
    modules = set(files)
    found = [
        f"{files[e.importer].relative_to(ROOT)}:{e.line} takes {n} from {e.imported}"
        for e in edges
        if owner(e.imported, modules)
        for n in e.names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert not found, "private names used across modules:\n" + "\n".join(found)


@pytest.mark.parametrize("name", [*SHELL_PACKAGES, *SHELL_MODULES])
def test_top_level_names_are_ours_alone(name: str) -> None:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve().is_relative_to(ROOT), f"{name} resolves to {spec.origin}"
    # No other entry of the path (site-packages included) ships a module of the same name that
    # a different working directory or install order could pick up instead.
    shadows = [
        str(p)
        for entry in sys.path
        if entry and Path(entry).resolve() != ROOT and Path(entry).is_dir()
        for p in (Path(entry) / name, Path(entry) / f"{name}.py")
        if p.exists()
    ]
    assert not shadows, f"{name} is also provided by {shadows}"


@pytest.mark.parametrize(
    "module, attribute",
    [
        ("launch", "REPO_ROOT"),
        ("local_queue", "REPO_ROOT"),
        ("resources.ucs_resource", "REPO_ROOT"),
        ("backtest_pipeline.config", "CONFIGS_DIR"),
    ],
)
def test_paths_anchored_at_the_repository(module: str, attribute: str) -> None:
    """Modules that find the repository's files from their own location must land on its root
    (or its ``configs/``) after any move: a wrong ``parents[n]`` reads files outside the clone."""
    path = getattr(importlib.import_module(module), attribute)
    root = path if attribute == "REPO_ROOT" else path.parent
    assert root == ROOT, f"{module}.{attribute} = {path}, expected under {ROOT}"
    assert (root / "pyproject.toml").is_file()
