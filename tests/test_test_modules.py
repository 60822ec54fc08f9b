"""The test modules share helpers only through tests/support/, never through each other.

A test module imported by another runs its module-level code (markers, fixtures,
constants) twice under two names, and couples two suites that should change
alone; the developers' guide puts shared helpers in tests/support/.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_test_module_imports_another():
    modules = {p.stem for p in TESTS.glob("test_*.py")} | {"conftest"}
    found = {
        path.name: sorted(
            name
            for name in _imported_modules(path)
            if name.split(".")[0] in modules or name.startswith("tests.")
        )
        for path in [*TESTS.glob("*.py"), *(TESTS / "support").glob("*.py")]
    }
    assert {name: imports for name, imports in found.items() if imports} == {}
