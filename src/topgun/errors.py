"""The exception tree of topgun.

Every error that topgun raises on purpose derives from :class:`TopGunError`,
so applications can catch the whole family in one place::

    TopGunError
    ├── ClockError
    │   └── ClockDriftError            a remote timestamp is too far ahead (strict HLC)
    ├── ProtocolError                  a frame or message could not be decoded/validated (.code, .field)
    │   ├── FrameTooLargeError         the frame exceeds the configured size limit (close 1009)
    │   ├── UnknownMessageTypeError    ``type`` names no message kind we know
    │   └── UnsupportedMessageTypeError a known extended kind we do not implement (ERROR 501)
    ├── StorageError                   a storage backend failed or is misconfigured
    ├── AuthError                      authentication failed (bad/expired token, missing ``sub``)
    ├── ConfigError                    invalid server or client configuration
    └── ClientError                    raised by the Python client SDK
        ├── NotConnectedError          the operation needs a live connection
        ├── BackpressureError          the op log reached its cap; the write was not accepted
        ├── FlushTimeoutError          pending ops were not acknowledged in time
        ├── OpRejectedError            the server refused an op (.op_id, .code, .reason)
        ├── LockError
        │   └── LockTimeout            the lock was not granted before the timeout
        └── ClientClosedError          the client was closed

Error codes are the protocol's integer codes (see :class:`topgun.protocol.ErrorCode`).
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BackpressureError",
    "ClientClosedError",
    "ClientError",
    "ClockDriftError",
    "ClockError",
    "ConfigError",
    "FlushTimeoutError",
    "FrameTooLargeError",
    "LockError",
    "LockTimeout",
    "NotConnectedError",
    "OpRejectedError",
    "ProtocolError",
    "StorageError",
    "TopGunError",
    "UnknownMessageTypeError",
    "UnsupportedMessageTypeError",
]


class TopGunError(Exception):
    """Root of every error raised by topgun."""


class ClockError(TopGunError):
    """A hybrid logical clock refused a timestamp."""


class ClockDriftError(ClockError):
    """A remote timestamp is further ahead of the wall clock than the drift limit allows."""

    def __init__(self, remote_millis: int, wall_millis: int, max_drift_ms: int) -> None:
        self.remote_millis = remote_millis
        self.wall_millis = wall_millis
        self.max_drift_ms = max_drift_ms
        super().__init__(
            f"clock drift: remote millis {remote_millis} is {remote_millis - wall_millis} ms ahead "
            f"of the wall clock (limit {max_drift_ms} ms)"
        )


class ProtocolError(TopGunError):
    """A frame or message violates the wire protocol.

    ``code`` is the protocol error code (400 unless said otherwise) and ``field``
    names the offending field (a dotted path such as ``payload.ops[3].record``)
    when one is known.
    """

    def __init__(self, message: str, *, code: int = 400, field: str | None = None) -> None:
        self.code = code
        self.field = field
        super().__init__(message)


class FrameTooLargeError(ProtocolError):
    """The frame is larger than the configured limit."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes", code=413)


class UnknownMessageTypeError(ProtocolError):
    """The message ``type`` is not a kind this implementation knows at all."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        super().__init__(f"unknown message type: {type_name}", code=400, field="type")


class UnsupportedMessageTypeError(ProtocolError):
    """The message is a known extended kind that this implementation does not serve."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        super().__init__(f"not implemented: {type_name}", code=501, field="type")


class StorageError(TopGunError):
    """A storage backend failed, or its URL or schema is not usable."""


class AuthError(TopGunError):
    """Authentication failed."""


class ConfigError(TopGunError):
    """Invalid configuration."""


class ClientError(TopGunError):
    """Base class of errors raised by the Python client SDK."""


class NotConnectedError(ClientError):
    """The operation needs a live, authenticated connection and there is none."""


class BackpressureError(ClientError):
    """The local op log is at its cap; the write was not applied."""


class FlushTimeoutError(ClientError):
    """Pending ops were not acknowledged by the server before the timeout."""


class OpRejectedError(ClientError):
    """The server refused an op."""

    def __init__(self, op_id: str, code: int, reason: str) -> None:
        self.op_id = op_id
        self.code = code
        self.reason = reason
        super().__init__(f"op {op_id} rejected ({code}): {reason}")


class LockError(ClientError):
    """A distributed lock operation failed."""


class LockTimeout(LockError):
    """The lock was not granted before the timeout passed."""


class ClientClosedError(ClientError):
    """The client has been closed."""
