"""topgun: an offline-first, in-memory data grid.

Clients keep local CRDT replicas and sync with a ``topgun serve`` server over
WebSockets; see the README for the two commands that get you started.
"""

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import TopGunError

__version__ = "0.1.0"

__all__ = ["LWWRecord", "ORMapRecord", "Timestamp", "TopGunError", "__version__"]
