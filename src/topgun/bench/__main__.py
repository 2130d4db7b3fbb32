"""``python -m topgun.bench``: the same as ``topgun bench``."""

import sys

from topgun.bench.cli import main

sys.exit(main())
