"""The package's layers run one way, checked from the source (no import needed):

* no import cycle among ``hyperion_node`` modules at module level (``TYPE_CHECKING`` blocks aside);
* no import of a ``hyperion_node`` module inside a function outside ``cli/`` (where each command imports
  what it runs, so that the CLI starts at once): an import inside a function must not hide a cycle;
* the configuration loader composes components' settings without their logic: it imports only settings
  modules and plain data;
* the production package never imports the demo (``hyperion_demo``), except ``start --demo`` in the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hyperion_node

PACKAGE = Path(hyperion_node.__file__).parent
# What config/ may import from the rest of the package: settings and the plain data they are made of.
CONFIG_MAY_IMPORT = {"hyperion_node.errors", "hyperion_node.settings", "hyperion_node.scheduler.weights"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return [name for name in names if name.split(".")[0] in ("hyperion_node", "hyperion_demo")]


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """Module-level imports per module, and (module, function, target) for imports inside functions."""
    top: dict[str, set[str]] = {}
    inner: list[tuple[str, str, str]] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        top[module] = set()
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                top[module].update(_targets(node, module, is_package))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        inner.extend((module, node.name, t) for t in _targets(sub, module, is_package)[:1])
    return top, inner


TOP, INNER = _imports()


def test_no_import_cycles() -> None:
    graph = {m: {t for t in targets if t in MODULES and t != m} for m, targets in TOP.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_imports_inside_functions_only_in_the_cli() -> None:
    hidden = [f"{m}.{fn} imports {t}" for m, fn, t in INNER if not m.startswith("hyperion_node.cli")]
    assert hidden == []


def test_the_config_loader_imports_settings_not_logic() -> None:
    for module, targets in TOP.items():
        if not module.startswith("hyperion_node.config"):
            continue
        for target in targets:
            if target not in MODULES:
                continue  # a name imported from a module, listed with its module
            allowed = (target.startswith("hyperion_node.config") or target.endswith(".settings")
                       or target in CONFIG_MAY_IMPORT or target == "hyperion_node")
            assert allowed, f"{module} imports {target}: the loader composes settings, not components"


def test_the_core_never_imports_the_demo() -> None:
    at_top = sorted(f"{m} imports {t}" for m, targets in TOP.items() for t in targets
                    if t.startswith("hyperion_demo"))
    inside = sorted(f"{m}.{fn}" for m, fn, t in INNER if t.startswith("hyperion_demo"))
    assert at_top == []
    assert inside == ["hyperion_node.cli.app.start"]
