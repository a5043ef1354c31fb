"""ftpalg/core is sans-I/O: no module in it may import an I/O library."""

from __future__ import annotations

import ast
from pathlib import Path

import ftpalg.core

FORBIDDEN = {
    "asyncio",
    "socket",
    "selectors",
    "os",
    "subprocess",
    "pyroute2",
    "structlog",
    "uvloop",
    "threading",
    "select",
    "ssl",
    "signal",
    "time",
    "logging",
    "io",
    "shutil",
    "pathlib",
}


def imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_io() -> None:
    files = sorted(Path(ftpalg.core.__file__).parent.glob("*.py"))
    assert len(files) >= 8
    offenders = {
        f.name: sorted(imported_modules(ast.parse(f.read_text())) & FORBIDDEN) for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_checker_catches_an_io_import() -> None:
    assert imported_modules(ast.parse("import os\nfrom asyncio import sleep")) == {"os", "asyncio"}
