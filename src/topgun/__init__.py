"""topgun: an offline-first, in-memory data grid.

Clients keep local CRDT replicas and sync with a ``topgun serve`` server over
WebSockets; see the README for the two commands that get you started.
"""

from topgun.core.predicates import P
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import TopGunError

__version__ = "0.1.0"

__all__ = ["LWWRecord", "ORMapRecord", "P", "Timestamp", "TopGunClient", "TopGunError", "__version__"]


def __getattr__(name: str) -> object:
    # The client SDK is imported lazily so that ``import topgun`` stays light for the server.
    if name == "TopGunClient":
        from topgun.client import TopGunClient

        return TopGunClient
    raise AttributeError(f"module 'topgun' has no attribute {name!r}")
