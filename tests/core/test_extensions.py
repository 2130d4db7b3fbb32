"""The compiled twins are built and chosen by their dispatchers.

With ``TOPGUN_REQUIRE_EXTENSIONS=1`` (CI, wheels) a missing or unused compiled
twin is a failure; otherwise it is a skip. ``TOPGUN_NO_EXTENSIONS=1`` wins and
skips the check.
"""

from __future__ import annotations

import importlib

import pytest

from support.twins import TWIN_MODULES, require_extensions
from topgun import _ext


def _dispatcher_of(pure: str) -> str:
    # topgun.core._hlc_py -> topgun.core.hlc
    package, _, module = pure.rpartition(".")
    return f"{package}.{module.removeprefix('_').removesuffix('_py')}"


def test_compiled_twins_are_importable_and_dispatched():
    if _ext.NO_EXTENSIONS:
        pytest.skip("TOPGUN_NO_EXTENSIONS is set: the pure-Python twins are used on purpose")
    problems: list[str] = []
    for name, (compiled, pure) in sorted(TWIN_MODULES.items()):
        try:
            importlib.import_module(compiled)
        except ImportError as exc:
            problems.append(f"{name}: {compiled} is not importable ({exc})")
            continue
        dispatcher = _dispatcher_of(pure)
        try:
            importlib.import_module(dispatcher)
        except ImportError as exc:
            problems.append(f"{name}: dispatcher {dispatcher} is not importable ({exc})")
            continue
        if _ext.loaded_extensions().get(compiled) is not True:
            problems.append(f"{name}: dispatcher {dispatcher} did not choose {compiled}")
    if problems:
        if require_extensions():
            pytest.fail("compiled twins required but missing or unused:\n" + "\n".join(problems))
        pytest.skip("; ".join(problems))
    assert all(_ext.loaded_extensions()[c] for c, _ in TWIN_MODULES.values())
