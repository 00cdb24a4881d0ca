"""The package's import graph has no cycle, and the network imports no checkpoint layout (issue #23).

Every ``import`` of a ``pretraining`` module counts, at any depth (a function-level import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pretraining"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "pretraining.model.modeling" in graph["pretraining.checkpoints.export"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


#: each folder's layer: a module may import its own folder and lower layers only (root helpers: 0; the aliases of
#: documented commands and the flag-reference generator sit on top)
LAYERS = {"pretraining": 0, "pretraining.errors": 0, "pretraining.atomic": 0, "pretraining.cli": 0,
          "pretraining.outputs": 0, "pretraining.resources": 0,
          "pretraining.model": 1, "pretraining.data": 1,
          "pretraining.checkpoints": 2,
          "pretraining.train": 3, "pretraining.finetune": 3,
          "pretraining.report": 4,
          "pretraining.flagref": 5, "pretraining.convert": 5, "pretraining.demo": 5, "pretraining.study": 5,
          "pretraining.training": 5}


def folder(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_upward_arrow_between_folders():
    graph = import_graph()
    unknown = sorted({folder(m) for m in graph} - set(LAYERS))
    assert not unknown, f"give these a layer in LAYERS: {unknown}"
    wrong = [f"{a} -> {b}" for a, targets in sorted(graph.items()) for b in sorted(targets)
             if folder(a) != folder(b) and (LAYERS[folder(b)] > LAYERS[folder(a)] or
                                             LAYERS[folder(b)] == LAYERS[folder(a)] > 0)]
    assert not wrong, "upward or sideways imports: " + "; ".join(wrong)


def test_the_network_knows_no_checkpoint_layout():
    graph = import_graph()
    for model in ("pretraining.model.modeling", "pretraining.model.layers"):
        assert all(folder(t) in ("pretraining.model", "pretraining.errors") for t in graph[model]), graph[model]


def test_each_folder_says_what_it_owns_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 60 and "import" in doc.lower(), f"{init}: say what it owns and what it may import"
