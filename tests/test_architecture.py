"""Import directions of ARCHITECTURE.md and banned constructs (STYLE.md), checked on the AST."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPS = ("portal", "providers", "accounts", "pushproxy")


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts)


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(package: str, allowed: Callable[[str], bool]) -> list[str]:
    found = []
    for path in modules(package):
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in APPS and top != package and not allowed(name):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_portal_imports_no_app() -> None:
    assert violations("portal", lambda name: False) == []


def test_providers_touches_accounts_only_through_services() -> None:
    def allowed(name: str) -> bool:
        return name.split(".")[0] == "portal" or name.startswith("accounts.services")

    assert violations("providers", allowed) == []


@pytest.mark.parametrize("package", ["accounts", "pushproxy"])
def test_accounts_and_pushproxy_import_only_providers(package: str) -> None:
    assert violations(package, lambda name: name.split(".")[0] in {"providers", "portal"}) == []


def test_no_naive_datetimes() -> None:
    # datetime.now() without tz and utcnow() give naive datetimes; use timezone.now().
    found = []
    for package in APPS:
        for path in modules(package):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in {"now", "utcnow", "today"}
                    and isinstance(node.func.value, ast.Name | ast.Attribute)
                    and getattr(node.func.value, "id", getattr(node.func.value, "attr", ""))
                    in {"datetime", "date"}
                    and not node.args
                    and not node.keywords
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_every_module_opens_with_a_docstring() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for package in APPS
        for path in modules(package)
        if path.stat().st_size and ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert missing == []
