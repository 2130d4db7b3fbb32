"""Build script: compiles the optional Cython speedups.

The pure-Python modules are complete on their own, so a missing compiler or a
failed compile falls back to them with a clear message, unless
``TOPGUN_BUILD_EXTENSION=yes`` asks for a hard failure (wheels must never ship
pure by accident). ``TOPGUN_BUILD_EXTENSION=no`` skips the compile.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODE = os.environ.get("TOPGUN_BUILD_EXTENSION", "auto").strip().lower()
REQUIRED = MODE in {"1", "yes", "true", "required"}
SKIP = MODE in {"0", "no", "false", "skip"}


def _say(msg: str) -> None:
    sys.stderr.write(f"topgun build: {msg}\n")


def _extensions() -> list[Extension]:
    if SKIP or sys.implementation.name != "cpython":
        _say("skipping the compiled speedups; the pure-Python modules will be used")
        return []
    sources = sorted(glob.glob("src/topgun/_speedups/*.pyx"))
    if not sources:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRED:
            raise
        _say("Cython is not installed; building pure Python only")
        return []
    exts = [
        Extension(
            "topgun._speedups." + os.path.splitext(os.path.basename(src))[0],
            [src],
            extra_compile_args=["-O3"] if sys.platform != "win32" else [],
        )
        for src in sources
    ]
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    )


class OptionalBuildExt(build_ext):
    """build_ext that degrades to pure Python unless the extension is required."""

    def run(self) -> None:
        self._failed: list[str] = []
        try:
            super().run()
        except Exception as exc:
            if REQUIRED:
                raise
            _say(f"compiling the speedups failed ({exc}); using pure Python")
            return
        built = [e.name for e in self.extensions if e.name not in self._failed]
        if built:
            _say("compiled speedups built: " + ", ".join(built))
        if self._failed:
            _say("pure Python used for: " + ", ".join(self._failed))

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRED:
                raise
            self._failed.append(ext.name)
            _say(f"compiling {ext.name} failed ({exc}); that module stays pure Python")


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
