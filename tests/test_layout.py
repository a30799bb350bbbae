"""The source layout: no import cycles among spul's modules, no library module importing the command line,
no source file over 400 lines, no command-line function over 60."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "spul"
MAX_LINES = 400
MAX_CLI_FUNCTION_LINES = 60  # a verb's options, its checks and one call into the library


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The spul modules a file imports (at any depth: function-level imports count too)."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the spul modules it imports; a package's own submodules count as part of it only when
    they are imported through it, so `spul.data` -> `spul.data.presets` is an edge like any other."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imports(path, modules) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported once, from where it was entered)."""
    found, state = [], {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def is_parent(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ importing its own submodules, and those importing siblings through the
    # package, is how Python packages work: drop edges from a submodule up to its own package
    graph = {m: {d for d in deps if not is_parent(d, m)} for m, deps in graph.items()}
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_library_module_imports_the_cli():
    graph = import_graph()
    offenders = {
        m: sorted(d for d in deps if d == "spul.cli" or d.startswith("spul.cli."))
        for m, deps in graph.items()
        if not (m == "spul.cli" or m.startswith("spul.cli.") or m == "spul.__main__")
    }
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_source_file_over_400_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_cli_function_over_60_lines():
    long = {}
    for path in (PACKAGE / "cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLI_FUNCTION_LINES:
                    long[f"{path.relative_to(SRC)}:{node.name}"] = lines
    assert long == {}
