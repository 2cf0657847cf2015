"""Fixtures of the providers tests: our clientConfig validator (specs/autoconfig.md)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


def _load_validator() -> ModuleType:
    # The tests folder is not a package (pytest's importlib mode), so load it by path.
    path = Path(__file__).with_name("clientconfig_validator.py")
    spec = importlib.util.spec_from_file_location("clientconfig_validator", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def validate_clientconfig() -> Callable[[bytes], list[str]]:
    """Problems our validator finds in a clientConfig document (empty: valid)."""
    validate: Callable[[bytes], list[str]] = _load_validator().validate
    return validate
