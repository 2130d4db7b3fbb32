"""Which modules have compiled twins, and whether this run demands them."""

from __future__ import annotations

import os

# name -> (compiled module, pure module)
TWIN_MODULES: dict[str, tuple[str, str]] = {
    "hashing": ("topgun._speedups._hashing", "topgun.core._hashing_py"),
    "hlc": ("topgun._speedups._hlc", "topgun.core._hlc_py"),
    "lww": ("topgun._speedups._lww", "topgun.core._lww_py"),
    "merkle": ("topgun._speedups._merkle", "topgun.core._merkle_py"),
    "codec": ("topgun._speedups._codec", "topgun.protocol._codec_py"),
    "match": ("topgun._speedups._match", "topgun.server.query._match_py"),
    "writepath": ("topgun._speedups._writepath", "topgun.server._writepath_py"),
    "sessionpath": ("topgun._speedups._sessionpath", "topgun.server._sessionpath_py"),
    "outbox": ("topgun._speedups._outbox", "topgun.server.transport._outbox_py"),
}


def require_extensions() -> bool:
    """True when the run demands the compiled twins (``TOPGUN_REQUIRE_EXTENSIONS=1``)."""
    return os.environ.get("TOPGUN_REQUIRE_EXTENSIONS", "").strip().lower() in {"1", "yes", "true"}
