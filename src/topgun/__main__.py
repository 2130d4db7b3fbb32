"""``python -m topgun`` runs the ``topgun`` command line."""

from __future__ import annotations

import sys

from topgun.cli import main

sys.exit(main())
