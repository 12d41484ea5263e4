"""docs/ARCHITECTURE.md stays true: every kitlib module is in its layer table once, imports point down (or sideways in a
layer), and there is no import cycle."""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO

KITLIB = REPO / "kitlib"


def _layers() -> dict[str, int]:
    """module -> layer number, from the table of docs/ARCHITECTURE.md's "Layers" section."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for line in section.splitlines():
        match = re.match(r"^\| (\d+) [^|]*\| ([^|]*)\|", line)
        if match:
            for name in re.findall(r"`([\w]+)`", match.group(2)):
                assert name not in layers, f"{name} is in two layers"
                layers[name] = int(match.group(1))
    return layers


def _imports(path) -> set[str]:
    """The kitlib modules a module imports, leaving out what runs under ``if __name__ == "__main__":``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tree.body = [n for n in tree.body if not (isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "kitlib":
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kitlib."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("kitlib."))
    return names - {path.stem}


def test_every_module_has_a_layer():
    modules = {p.stem for p in KITLIB.glob("*.py")} - {"__init__"}
    layers = _layers()
    assert set(layers) == modules, (sorted(modules - set(layers)), sorted(set(layers) - modules))


def test_imports_point_down_and_have_no_cycle():
    layers = _layers()
    graph = {p.stem: _imports(p) for p in KITLIB.glob("*.py") if p.stem != "__init__"}
    up = [(m, d) for m, deps in graph.items() for d in deps if layers[d] > layers[m]]
    assert not up, f"imports that point up a layer (module, imported): {up}"
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in graph[module]:
            visit(dep, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_modules_and_functions_stay_small():
    """No module over ~600 lines; no function over 80 lines of code (its docstring aside)."""
    for path in KITLIB.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert text.count("\n") <= 620, f"{path.name}: {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                doc_lines = doc.count("\n") + 1 if doc else 0
                code = node.end_lineno - node.lineno + 1 - doc_lines
                assert code <= 80, f"{path.name}: {node.name} has {code} lines of code"
