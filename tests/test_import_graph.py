"""The shape of the house: imports between the project's modules form no circle, point from the
entry points down to the concern packages, and sit at the top of each module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "masactrl_engine", "pose_sources")
# flows/: which concern packages each may import (the entry points at flows/'s top may import all).
ALLOWED = {
    "jobdir": set(),
    "job": {"jobdir"},
    "quality": {"jobdir", "job"},
    "sweeps": {"job", "jobdir", "quality"},
    "ui": {"jobdir", "job", "quality", "sweeps"},
    "execution": {"job", "jobdir", "ui", "quality"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported project module, at the top of the module?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target in modules and target != name:
                found.append((target, id(node) in top))
                break
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {t for t, _ in _imports(path, modules)} for name, path in modules.items()}


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_flows_concern_packages_import_downwards_only():
    wrong = []
    for name, targets in _graph().items():
        parts = name.split(".")
        if parts[0] != "flows" or len(parts) < 3:
            continue  # the entry points at flows/'s top may use every concern package
        for target in targets:
            tparts = target.split(".")
            if tparts[0] == "flows" and len(tparts) >= 2 and tparts[1] != parts[1]:
                if len(tparts) == 2 or tparts[1] not in ALLOWED[parts[1]]:
                    wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def test_engine_and_pose_sources_know_nothing_of_flows_or_prefect():
    for name, path in _modules().items():
        if name.startswith(("masactrl_engine", "pose_sources")):
            text = path.read_text()
            assert "import prefect" not in text and "from prefect" not in text, name
            assert "from flows" not in text and "import flows" not in text, name


def test_flows_imports_of_flows_sit_at_the_top():
    """Only heavy optional dependencies (torch through the engine, scipy) may load inside a function."""
    modules = _modules()
    inside = [f"{name} imports {target} inside a function"
              for name, path in modules.items() if name.startswith("flows")
              for target, at_top in _imports(path, modules) if not at_top and target.startswith("flows")]
    assert not inside, inside


def test_comments_carry_no_ticket_tags():
    """A reader cannot resolve "(C.4)" or "issue 13": comments say why in words."""
    tag = re.compile(r"\bissue \d+\b|\([A-D]\.\d+[^)]*\)|\b[A-D]\.\d+:", re.I)
    found = [f"{name}:{i}: {line.strip()}" for name, path in _modules().items()
             for i, line in enumerate(path.read_text().splitlines(), 1) if tag.search(line)]
    assert not found, found
