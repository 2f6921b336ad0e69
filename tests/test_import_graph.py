"""The import graph of speechvq/ has no circles (docs/ARCHITECTURE.md: lower layers never import upper ones).

The graph is read from the code with `ast`, function-level imports included: a lazy import still makes the importer
depend on the imported module, and a circle through one is a circle. A submodule's implicit import of its parent
package is not an edge (Python runs the parent's __init__ first, but the submodule does not use it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "speechvq"


def import_graph(package: Path) -> dict[str, set[str]]:
    """module name -> the modules of the package it imports (dotted names, packages by their own name)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph = {}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]  # what `from .` means in this file
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".")
                base = base if node.level else node.module or ""
                # `from pkg import sub` imports the submodule sub; `from mod import name` imports mod
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted; a self-import is none."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_speechvq_has_no_import_circles():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and graph["speechvq.pipeline"], "the graph was not read"
    assert circles(graph) == []


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "pkg"


def test_a_planted_circle_is_found(tmp_path):
    """Each way of writing an import that the speechvq tree uses closes a circle here, and the checker sees it."""
    package = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/leaf.py": "import os\n",
            "pkg/schema.py": "from .leaf import x\n",
            "pkg/kernels.py": "def f():\n    from .dispatch import bound  # lazy, still an edge\n",
            "pkg/dispatch.py": "from . import kernels\n",
            "pkg/family/__init__.py": "from .member import Member\n",
            "pkg/family/member.py": "from ..schema import Config\nfrom . import REGISTRY\n",
            "pkg/top.py": "import pkg.schema\nfrom pkg.family import member\n",
        },
    )
    graph = import_graph(package)
    assert graph["pkg.kernels"] == {"pkg.dispatch"} and graph["pkg.dispatch"] == {"pkg.kernels"}
    assert graph["pkg.top"] == {"pkg.schema", "pkg.family.member"}
    assert circles(graph) == [["pkg.dispatch", "pkg.kernels"], ["pkg.family", "pkg.family.member"]]


def test_a_circle_through_three_modules_is_one_component(tmp_path):
    package = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .b import x\n",
            "pkg/b.py": "from .c import y\n",
            "pkg/c.py": "from .a import z\n",
            "pkg/d.py": "from .a import z\n",
        },
    )
    assert circles(import_graph(package)) == [["pkg.a", "pkg.b", "pkg.c"]]
