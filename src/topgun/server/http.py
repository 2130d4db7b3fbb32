"""Plain HTTP endpoints served on the WebSocket port: ``/health``, ``/ready``, ``/metrics``.

The routes are synchronous and transport-neutral; each transport adapter asks
:meth:`HttpRoutes.route` before it upgrades a request. ``/ready`` reports the
last result of the server's periodic storage probe, so answering never waits
on the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from topgun.server.metrics import CONTENT_TYPE, ServerMetrics

__all__ = ["WEBSOCKET_PATHS", "HttpResponse", "HttpRoutes", "split_path"]

#: Paths that carry the protocol (PROTOCOL §1.1: ``/ws`` and ``/`` behave the same).
WEBSOCKET_PATHS = frozenset({"/", "/ws"})

TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class HttpResponse:
    """A complete plain-HTTP answer."""

    status: int
    body: bytes
    content_type: str = TEXT

    @property
    def reason(self) -> str:
        """The standard reason phrase of ``status``."""
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return ""


def split_path(target: str) -> str:
    """The path of a request target, without query string or fragment."""
    for sep in ("?", "#"):
        target = target.split(sep, 1)[0]
    return target or "/"


class HttpRoutes:
    """Routes a request path to a plain response, or to the WebSocket upgrade (``None``)."""

    def __init__(self, metrics: ServerMetrics, ready: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._ready = ready

    def route(self, method: str, target: str) -> HttpResponse | None:
        """``None`` for a WebSocket path (the transport upgrades), otherwise the response to send."""
        path = split_path(target)
        if path in WEBSOCKET_PATHS:
            return None
        if method not in {"GET", "HEAD"}:
            return HttpResponse(405, b"method not allowed\n")
        if path == "/health":
            return HttpResponse(200, b"ok\n")
        if path == "/ready":
            if self._ready():
                return HttpResponse(200, b"ready\n")
            return HttpResponse(503, b"storage unreachable\n")
        if path == "/metrics":
            return HttpResponse(200, self._metrics.render().encode("utf-8"), CONTENT_TYPE)
        return HttpResponse(404, b"not found\n")
