"""Shared fixtures.

Hot-path tests take the ``twin`` fixture, which runs each test once against
the compiled twins (id ``c``) and once against the pure-Python specification
(id ``py``) in the same process. ``--no-c-extensions`` (or
``TOPGUN_NO_EXTENSIONS=1``) drops the ``c`` runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from support.twins import TWIN_MODULES, require_extensions
from topgun import _ext

__all__ = ["TWIN_MODULES", "Twin", "require_extensions"]

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="run hot-path tests against the pure-Python twins only",
    )


def _c_disabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--no-c-extensions")) or _ext.NO_EXTENSIONS


class Twin:
    """Attribute access to one side's modules: ``twin.hlc``, ``twin.lww``, ``twin.merkle``, …"""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.compiled = kind == "c"

    def __getattr__(self, name: str) -> ModuleType:
        try:
            compiled, pure = TWIN_MODULES[name]
        except KeyError:
            raise AttributeError(name) from None
        if self.compiled:
            try:
                mod = importlib.import_module(compiled)
            except ImportError:
                pytest.skip(f"compiled twin {compiled} is not built")
        else:
            mod = importlib.import_module(pure)
        setattr(self, name, mod)
        return mod

    def __repr__(self) -> str:
        return f"Twin({self.kind})"


@pytest.fixture(params=["c", "py"])
def twin(request: pytest.FixtureRequest) -> Twin:
    if request.param == "c":
        if _c_disabled(request.config):
            pytest.skip("compiled twins disabled (--no-c-extensions / TOPGUN_NO_EXTENSIONS)")
    return Twin(request.param)


@pytest.fixture
def pure() -> Twin:
    return Twin("py")


@pytest.fixture
def compiled(request: pytest.FixtureRequest) -> Twin:
    if _c_disabled(request.config):
        pytest.skip("compiled twins disabled")
    return Twin("c")
