"""The package's layers: the maths and training loop know nothing of Ray or the
analysis, the analysis nothing of Ray, and no two modules import each other in a
circle (imports inside functions included: a lazy import is an import still)."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "mtlrank_ray"


def imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in the file)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [f"{target}.{alias.name}" for alias in node.names] + [target]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mtlrank_ray"):
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names if a.name.startswith("mtlrank_ray")]
            else:
                continue
            found |= {c for c in candidates[:-1] if _exists(c)} or {c for c in candidates[-1:] if _exists(c)}
        graph[name] = found - {name}
    return graph


def _exists(module: str) -> bool:
    path = REPO / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """A circle through each module on one (depth-first search), as a path."""
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(module, path):
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_no_module_imports_itself_in_a_circle():
    graph = {a: {b for b in targets if not b.startswith(a + ".") and not a.startswith(b + ".")}
             for a, targets in imports().items()}
    assert circles(graph) == []


def test_the_maths_and_the_analysis_import_no_ray_layer():
    for module, targets in imports().items():
        if module.startswith(("mtlrank_ray.core", "mtlrank_ray.data", "mtlrank_ray.analysis")):
            assert not [t for t in targets if t.startswith("mtlrank_ray.distributed")], module
