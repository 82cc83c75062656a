"""The package layout of docs/ARCHITECTURE.md, checked from the source: one package per stage,
imports only downward, no import circle, no function-level import but the ones that keep
TensorFlow off the serving path, an engine's runtime out of processes that serve with another,
ccxt's WebSocket half out of processes that never stream and PostgreSQL's driver out of
processes on SQLite, no module over ~350 lines.

`python -m pytest tests/test_layout.py` is the check; it reads the code, it imports nothing.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "chronoprice"
MAX_LINES = 350

# What each part may import of chronoprice (the longest matching prefix decides). Lower stages
# never import higher ones; evaluation.metrics is pure and imports nothing of chronoprice, so that
# model training and the store's retention (which folds scores into sums) may use it.
ALLOWED = {
    "market": {"market"},
    "store": {"market", "store", "logs", "evaluation.metrics"},
    "evaluation.metrics": set(),
    "model": {"model", "evaluation.metrics"},
    "evaluation": {"evaluation", "model"},
    "service": {"market", "store", "model", "evaluation", "service", "config"},
    "web": {"market.source", "market.timeframes", "market.markets", "store", "model", "evaluation", "service", "web", "config", "logs"},
    "config": {"market.timeframes", "market.markets", "store.schema"},
    "logs": set(),
    # The rig: what the tests and the benchmarks share, on top of the stages it drives.
    "testing": {"testing", "market", "store", "config"},
    # The doors may use every stage; bench also the rig, and the command line the benchmarks.
    "bench": {"bench", "testing", "market", "store", "model", "evaluation", "service", "web", "config", "logs"},
    "cli": {"cli", "bench", "market", "store", "model", "evaluation", "service", "web", "config", "logs"},
}
ROOT_FILES = {"__init__.py", "__main__.py", "config.py", "logs.py"}  # beside the stage, door and rig packages
# Third-party packages only one stage may touch.
CONFINED = {"ccxt": ("market.ccxt_rest", "market.stream"), "aiohttp": ("testing.stream",), "tensorflow": ("model.network",), "keras": ("model.network", "model.training"),
            "onnx": ("model.onnx_graph",), "onnxruntime": ("model.engines",), "ai_edge_litert": ("model.engines",), "ctypes": ("model.native",),
            "dash": ("web",), "flask": ("web",), "flask_caching": ("web",), "sqlite_utils": ("store.sqlite",),
            "psycopg": ("store.postgres",), "psycopg_pool": ("store.postgres",)}
TENSORFLOW_MODULES = {"model.network", "model.training", "model.series_training", "evaluation.timeframe_models"}
# An engine's runtime is imported when the engine is made: a process carries only the one it uses.
# So are ccxt's WebSocket half when a stream starts, the PostgreSQL store when one is opened, and the
# peers' statsforecast (an optional extra) when they are asked for.
LAZY_RUNTIMES = {"onnxruntime", "ai_edge_litert.interpreter", "ccxt.pro", "store.postgres", "statsforecast.models"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function?) for every import in the file; chronoprice modules
    are named without the `chronoprice.` prefix, `from package import module` names the module."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                for alias in child.names:
                    candidate = f"{child.module}.{alias.name}"
                    found.append((candidate if candidate.removeprefix("chronoprice.") in MODULES else child.module, in_function))
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return [(name.removeprefix("chronoprice.") if name.startswith("chronoprice.") else name, inside) for name, inside in found]


def internal_edges() -> dict[str, set[str]]:
    return {name: {target for target, _ in imports_of(path) if target in MODULES} for name, path in MODULES.items()}


def rule_for(module: str, table: dict) -> str | None:
    keys = [key for key in table if module == key or module.startswith(key + ".")]
    return max(keys, key=len) if keys else None


def within(target: str, allowed: set[str]) -> bool:
    return any(target == part or target.startswith(part + ".") for part in allowed)


def test_there_is_no_import_circle():
    graph = internal_edges()
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


def test_each_stage_imports_only_what_is_below_it():
    wrong = []
    for module, targets in internal_edges().items():
        rule = rule_for(module, ALLOWED)
        if rule is None:  # __main__ starts the command line
            continue
        wrong += [f"{module} imports {target}" for target in sorted(targets) if not within(target, ALLOWED[rule])]
    assert wrong == []


def test_heavy_and_io_libraries_stay_in_their_stage():
    wrong = []
    for module, path in MODULES.items():
        for target, _ in imports_of(path):
            library = target.split(".")[0]
            if library in CONFINED and not within(module, set(CONFINED[library])):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_function_level_imports_only_keep_tensorflow_and_unused_runtimes_out_of_a_process():
    wrong = [f"{module} imports {target} inside a function" for module, path in MODULES.items()
             for target, inside in imports_of(path) if inside and target not in TENSORFLOW_MODULES | LAZY_RUNTIMES
             and not (module.startswith("cli.") and target.startswith("bench."))]  # only `bench` loads the benchmarks
    assert wrong == []


def test_the_package_root_holds_only_the_entrances_settings_and_logs():
    assert {path.name for path in PACKAGE.glob("*.py")} == ROOT_FILES


def test_no_module_is_over_350_lines():
    long = {module: count for module, path in MODULES.items() if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_see_a_circle_and_a_wrong_way_import(tmp_path):
    """The checks above can fail: a planted circle and an upward import are both found."""
    graph = {"a": {"b"}, "b": {"a"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
    assert not within("service.tick", ALLOWED[rule_for("market.ccxt_rest", ALLOWED)])
    assert within("evaluation.metrics", ALLOWED[rule_for("model.training", ALLOWED)])
    assert not within("model.features", ALLOWED[rule_for("evaluation.metrics", ALLOWED)])
    source = tmp_path / "sample.py"
    source.write_text("import os\n\ndef late():\n    from chronoprice.model import network\n")
    assert imports_of(source) == [("os", False), ("model.network", True)]


def test_docs_architecture_names_every_module():
    """Each module by its path in the package or, in its package's row, by its file name."""
    document = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    unnamed = [path.relative_to(PACKAGE).as_posix() for path in MODULES.values() if path.name not in ("__init__.py", "__main__.py")
               and path.relative_to(PACKAGE).as_posix() not in document and path.name not in document]
    assert unnamed == []
