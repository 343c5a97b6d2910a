"""Static import graph of a package and its cycles, so the layering (dependencies point down) stays.

Every `import` / `from ... import` in a module counts, wherever it stands: at the top, inside a
function (a lazy import still is a dependency), or under `if TYPE_CHECKING:`. Importing
`pkg.sub.mod` from outside `pkg.sub` also runs `pkg/sub/__init__.py`, so it adds an edge to that
package; importing a sibling from inside the same package does not (the package is already being
initialised). Run as a script to print the cycles: `python tests/_import_graph.py [PACKAGE_DIR]`.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file for every .py file under `package_dir` (a package's name is its folder)."""
    root = package_dir.parent
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (any nesting level, TYPE_CHECKING included)."""
    modules = module_names(package_dir)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(node, name, is_package, modules):
                edges.update(_with_parents(target, name, modules))
        edges.discard(name)
        graph[name] = edges
    return graph


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> Iterable[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            found = _longest_known(alias.name, modules)
            if found:
                yield found
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against the importing module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            base_parts = package[: len(package) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:  # `from pkg import submodule` depends on the submodule
            sub = f"{base}.{alias.name}"
            if sub in modules:
                yield sub
            else:
                found = _longest_known(base, modules)
                if found:
                    yield found


def _longest_known(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def _with_parents(target: str, importer: str, modules: dict[str, Path]) -> set[str]:
    """The target plus each enclosing package the importer is not itself inside."""
    out = {target}
    parts = target.split(".")
    for n in range(1, len(parts)):
        package = ".".join(parts[:n])
        if package in modules and not (importer == package or importer.startswith(package + ".")):
            out.add(package)
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component with more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # iterative Tarjan: no recursion limit on deep graphs
        nonlocal counter
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(components)


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete loop a -> b -> ... -> a inside a component, for a readable failure message."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth-first back to the start
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in parents:
                    parents[child] = node
                    nxt.append(child)
        frontier = nxt
    return component


def describe_cycles(package_dir: Path) -> list[str]:
    """One line per cycle, 'a -> b -> a (n modules in the cycle)'; empty when the graph is acyclic."""
    graph = import_graph(package_dir)
    return [f"{' -> '.join(cycle_path(graph, c))} ({len(c)} modules: {', '.join(c)})" for c in find_cycles(graph)]


def main(argv: list[str]) -> int:
    package_dir = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "sibrar"
    lines = describe_cycles(package_dir)
    for line in lines:
        print(f"import cycle: {line}")
    if not lines:
        print(f"{package_dir}: no import cycle among {len(module_names(package_dir))} modules")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
