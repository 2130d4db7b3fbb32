"""``topgun bench``: the load harness (scenarios against ``topgun serve`` with Redis/PostgreSQL baselines).

Run ``topgun bench --help`` or ``python -m topgun.bench --help``. The
package's parts: :mod:`~topgun.bench.cli` (command line), :mod:`~topgun.bench.suite`
(scenarios), :mod:`~topgun.bench.worker` (the load-generator process),
:mod:`~topgun.bench.frames` (pre-encoded frames), :mod:`~topgun.bench.baselines`,
:mod:`~topgun.bench.histogram`, :mod:`~topgun.bench.report`.
"""

from __future__ import annotations

from topgun.bench.cli import main

__all__ = ["main"]
