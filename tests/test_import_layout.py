"""The package's import graph, read from the source: no module imports, directly or through
others, a module that imports it back (an import inside a function counts too, since it is a
dependency all the same), and the corruption engine's kernels stay below its torch steps."""

from __future__ import annotations

import ast
from pathlib import Path

import robustbench_bn

PACKAGE = Path(robustbench_bn.__file__).parent


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _import_graph() -> dict[str, set[str]]:
    """Each module's imports of other modules of the package. ``from package import name``
    counts as importing the submodule ``name`` where there is one, else the package."""
    modules = _module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here[: len(here) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in modules else base)
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    order: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(module: str) -> None:
        order[module] = lowest[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in order:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in on_stack:
                lowest[module] = min(lowest[module], order[imported])
        if lowest[module] == order[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return components


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    graph = _import_graph()
    assert "robustbench_bn.data.corruptions.common_kernels" in graph
    assert _cycles(graph) == []


def test_kernel_modules_import_no_torch_steps():
    engine = "robustbench_bn.data.corruptions"
    graph = _import_graph()
    assert graph[f"{engine}.common_kernels"] == set()
    steps = {f"{engine}.{name}" for name in ("ops", "noise", "blur", "weather", "digital")}
    steps |= {f"{engine}.spatter", engine}
    kernels = [name for name in graph if name.startswith(engine) and name.endswith("_kernels")]
    assert len(kernels) == 7
    for name in kernels:
        assert not graph[name] & steps, name


def test_reports_read_rows_and_build_no_models():
    graph = _import_graph()
    reached = set()
    pending = [name for name in graph if name.startswith("robustbench_bn.report")]
    while pending:
        module = pending.pop()
        if module not in reached:
            reached.add(module)
            pending.extend(graph[module])
    # The package's second-level names the reports reach, through any chain of imports.
    reached_parts = {name.split(".")[1] for name in reached if "." in name}
    assert not reached_parts & {"runner", "regression", "models", "methods", "finetune"}
