"""The code's layout, as the project's style asks for it: the three packages import one way (mnist_zoo <- export <-
bench) with no cycles, no module is over 500 lines, and one module of the zoo runs backward passes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mnist_zoo", "export", "bench")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for package in PACKAGES
        for p in sorted((ROOT / package).glob("*.py"))
    }


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `path` imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:  # `from mnist_zoo import cli` imports the module mnist_zoo.cli
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules}


def test_packages_import_one_way_without_cycles():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    rank = {package: i for i, package in enumerate(PACKAGES)}
    for name, targets in graph.items():
        for target in targets:
            assert rank[target.split(".")[0]] <= rank[name.split(".")[0]], f"{name} imports {target}"
    # Depth-first search: a module met again while still on the path closes a cycle.
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_module_is_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_one_module_of_the_zoo_runs_backward_passes():
    def backward(path: Path) -> bool:  # loss.backward() or torch.autograd.grad(...)
        return any(
            isinstance(node, ast.Attribute)
            and (
                node.attr == "backward"
                or (node.attr == "grad" and ast.unparse(node.value).endswith("autograd"))
            )
            for node in ast.walk(ast.parse(path.read_text()))
        )

    found = [name for name, path in _modules().items() if name.startswith("mnist_zoo") and backward(path)]
    assert found == ["mnist_zoo.train"]
