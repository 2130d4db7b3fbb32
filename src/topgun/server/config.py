"""Server configuration: one dataclass, filled from defaults, a config file, the environment and flags.

Precedence, lowest first: built-in defaults, the config file (``--config`` /
``TOPGUN_CONFIG``, TOML or JSON), the environment (``TOPGUN_<FIELD>``, e.g.
``TOPGUN_PORT``, ``TOPGUN_JWT_SECRET``), command-line flags, and finally
keyword arguments given to :class:`topgun.server.TopGunServer` in code.

Durations are float seconds (what asyncio uses); sizes and counts are ints.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from topgun.errors import ConfigError

__all__ = [
    "DEFAULT_STORAGE_URL",
    "ENV_PREFIX",
    "AuthMode",
    "ServerConfig",
    "TransportKind",
    "is_loopback_host",
    "load_config",
]

ENV_PREFIX = "TOPGUN_"
DEFAULT_STORAGE_URL = "sqlite:///topgun.db"


class TransportKind(str, enum.Enum):
    """Which WebSocket library serves the connections."""

    PICOWS = "picows"
    WEBSOCKETS = "websockets"


class AuthMode(str, enum.Enum):
    """How sessions authenticate, as printed in the start line (``auth=<mode>``)."""

    NONE = "none"
    HS256 = "hs256"
    RS256 = "rs256"


@dataclass
class ServerConfig:
    """Everything the server can be told. Field names are also the config-file keys and,
    upper-cased with the ``TOPGUN_`` prefix, the environment variables."""

    host: str = "127.0.0.1"
    #: 0 binds an ephemeral port (read it back from ``TopGunServer.port``).
    port: int = 8080
    storage: str = DEFAULT_STORAGE_URL

    # -- authentication ------------------------------------------------------------------
    #: HS256 shared secret.
    jwt_secret: str | None = None
    #: Path of a PEM public key file (RS256).
    jwt_public_key: str | None = None
    #: Checked only when set.
    jwt_issuer: str | None = None
    #: Checked only when set.
    jwt_audience: str | None = None
    jwt_leeway: float = 60.0
    #: Allow running without authentication on a non-loopback address.
    no_auth: bool = False
    #: Seconds a JWT-mode connection may stay unauthenticated before it is closed.
    auth_timeout: float = 10.0
    #: Seconds without a PING after which an open connection is closed (0 disables).
    idle_timeout: float = 60.0
    #: Issue and honour device tokens (``DEVICE_HELLO`` / ``AUTH.deviceToken``).
    device_identity: bool = True

    # -- limits ----------------------------------------------------------------------------
    #: Largest inbound message in bytes; larger ones close the connection with 1009.
    max_message_size: int = 2 * 1024 * 1024
    #: Outbound bytes queued for one connection before it is dropped as a slow consumer.
    send_queue_max_bytes: int = 16 * 1024 * 1024
    #: Outbound frames queued for one connection before it is dropped as a slow consumer.
    send_queue_max_frames: int = 50_000
    #: Inbound messages waiting for in-order processing before the connection is dropped.
    recv_queue_max_frames: int = 10_000
    #: Inbound bytes waiting for in-order processing before the connection is dropped.
    recv_queue_max_bytes: int = 32 * 1024 * 1024

    # -- runtime ---------------------------------------------------------------------------
    transport: TransportKind = TransportKind.PICOWS
    #: Install uvloop's event loop policy when uvloop is importable (CLI only).
    uvloop: bool = True
    #: Seconds ``stop()`` waits for in-flight work before closing connections forcibly.
    drain_timeout: float = 10.0
    #: Seconds between storage reachability probes that feed ``/ready``.
    ready_probe_interval: float = 1.0
    log_level: str = "INFO"

    # -- data grid -------------------------------------------------------------------------
    #: Seconds tombstones are kept before GC may prune them (PROTOCOL §5.10); default 30 days.
    tombstone_retention: float = 30 * 24 * 3600.0
    #: Seconds between tombstone GC passes (0 disables the periodic pass).
    gc_interval: float = 3600.0
    #: Level an OP_ACK waits for when the client names none: PERSISTED (after the storage commit)
    #: or APPLIED (at once). On ``memory://`` storage acks are APPLIED at once anyway.
    write_concern: str = "PERSISTED"
    #: How far (ms) a client timestamp may run ahead of the server's wall clock (else 422).
    max_drift_ms: int = 60_000
    #: Stable server node id (lowercase letters, digits, ``-``); empty = generated once, kept in storage.
    node_id: str = ""
    #: Per-map permissions: ``[{map: glob, read: [roles], write: [roles]}, …]``, first match wins
    #: (a JSON string is accepted, e.g. from the environment); empty = everyone may do everything.
    map_acl: Any = field(default_factory=list)
    #: Extra keys from the config file that no field names, kept for plug-ins.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------
    @property
    def auth_mode(self) -> AuthMode:
        """The authentication mode this configuration selects."""
        if self.jwt_public_key:
            return AuthMode.RS256
        if self.jwt_secret:
            return AuthMode.HS256
        return AuthMode.NONE

    @property
    def storage_kind(self) -> str:
        """The storage URL's scheme, as printed in the start line (``sqlite``, ``postgres``, ``memory``)."""
        scheme = self.storage.split(":", 1)[0].lower()
        if scheme in {"postgresql", "postgres"} or scheme.startswith("postgresql+"):
            return "postgres"
        return scheme

    def validate(self) -> None:
        """Normalise field types and refuse inconsistent settings with :class:`ConfigError`."""
        try:
            self.transport = TransportKind(self.transport)
        except ValueError:
            raise ConfigError(
                f"transport must be one of {[k.value for k in TransportKind]}, got {self.transport!r}"
            ) from None
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an integer in 0..65535, got {self.port!r}")
        for name in ("max_message_size", "send_queue_max_bytes", "send_queue_max_frames",
                     "recv_queue_max_frames", "recv_queue_max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("auth_timeout", "idle_timeout", "jwt_leeway", "drain_timeout", "ready_probe_interval"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative number of seconds, got {value!r}")
            setattr(self, name, float(value))
        if self.auth_timeout <= 0:
            raise ConfigError("auth_timeout must be positive")
        if self.jwt_secret and self.jwt_public_key:
            raise ConfigError("configure either jwt_secret (HS256) or jwt_public_key (RS256), not both")
        if self.no_auth and (self.jwt_secret or self.jwt_public_key):
            raise ConfigError("no_auth conflicts with a configured JWT key; drop one of them")
        if self.jwt_public_key and not Path(self.jwt_public_key).is_file():
            raise ConfigError(f"jwt_public_key file not found: {self.jwt_public_key}")
        self._validate_grid()
        if not self.storage or ":" not in self.storage:
            raise ConfigError(f"storage must be a URL such as {DEFAULT_STORAGE_URL!r}, got {self.storage!r}")

    def _validate_grid(self) -> None:
        for name in ("tombstone_retention", "gc_interval"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative number of seconds, got {value!r}")
            setattr(self, name, float(value))
        drift = self.max_drift_ms
        if not isinstance(drift, int) or isinstance(drift, bool) or drift < 0:
            raise ConfigError(f"max_drift_ms must be a non-negative integer, got {self.max_drift_ms!r}")
        wc = str(self.write_concern).upper()
        if wc not in {"FIRE_AND_FORGET", "MEMORY", "APPLIED", "REPLICATED", "PERSISTED"}:
            raise ConfigError(f"write_concern must be a WriteConcern such as PERSISTED, got {wc!r}")
        self.write_concern = wc
        if self.node_id and not all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in self.node_id):
            raise ConfigError(f"node_id may use only lowercase letters, digits and '-', got {self.node_id!r}")
        if isinstance(self.map_acl, str):
            try:
                self.map_acl = json.loads(self.map_acl) if self.map_acl.strip() else []
            except ValueError as exc:
                raise ConfigError(f"map_acl is not valid JSON: {exc}") from None
        if not isinstance(self.map_acl, (list, dict)):
            raise ConfigError("map_acl must be a list of {map, read, write} rules")

    def check_secure_default(self) -> None:
        """Refuse to serve without authentication on a non-loopback address unless ``no_auth`` says so."""
        if self.auth_mode is AuthMode.NONE and not self.no_auth and not is_loopback_host(self.host):
            raise ConfigError(
                f"refusing to listen on non-loopback address {self.host!r} without authentication: "
                "configure --jwt-secret or --jwt-public-key, or pass --no-auth explicitly"
            )

    def replace(self, **changes: Any) -> ServerConfig:
        """A validated copy with ``changes`` applied (unknown keys raise :class:`ConfigError`)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"unknown server config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


def is_loopback_host(host: str) -> bool:
    """True when ``host`` names only loopback addresses (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host in {"", "0.0.0.0", "::"}:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(name: str, raw: Any, annotation: Any) -> Any:
    """Turn a string (environment) or loosely typed file value into the field's type."""
    ann = str(annotation)
    if isinstance(raw, str):
        text = raw.strip()
        if ann == "bool":
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ConfigError(f"{name}: expected a boolean, got {raw!r}")
        if ann == "int":
            try:
                return int(text)
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
        if ann == "float":
            try:
                return float(text)
            except ValueError:
                raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
        if ann == "str | None" and text == "":
            return None
        return text
    if ann == "float" and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    return raw


def _read_file(path: str) -> dict[str, Any]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        if p.suffix.lower() == ".json":
            loaded = json.loads(data)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    raise ConfigError("TOML config files need Python 3.11+ or the 'tomli' package") from None
            loaded = tomllib.loads(data.decode("utf-8"))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a table/object at top level")
    # A [server] table is accepted as well as top-level keys.
    server = loaded.get("server")
    if isinstance(server, dict):
        merged = {k: v for k, v in loaded.items() if k != "server"}
        merged.update(server)
        loaded = merged
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def load_config(
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: ServerConfig | None = None,
) -> ServerConfig:
    """Build a :class:`ServerConfig` from ``base`` (or defaults), a file, the environment and overrides.

    ``env`` defaults to ``os.environ``; ``overrides`` hold flags/keyword arguments and
    skip keys whose value is ``None``. The config file is ``config_file``, else
    ``overrides["config"]``, else ``TOPGUN_CONFIG``.
    """
    environ = os.environ if env is None else env
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    types = {f.name: f.type for f in fields(ServerConfig) if f.name != "extra"}
    values: dict[str, Any] = (
        {f.name: getattr(base, f.name) for f in fields(ServerConfig)} if base is not None else {}
    )
    extra: dict[str, Any] = dict(values.get("extra") or {})

    path = config_file or over.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG") or None
    over.pop("config", None)
    if path:
        for key, raw in _read_file(str(path)).items():
            if key in types:
                values[key] = _coerce(key, raw, types[key])
            else:
                extra[key] = raw
    for name, ann in types.items():
        raw_env = environ.get(ENV_PREFIX + name.upper())
        if raw_env is not None:
            values[name] = _coerce(ENV_PREFIX + name.upper(), raw_env, ann)
    for key, raw in over.items():
        if key not in types:
            raise ConfigError(f"unknown server config field: {key}")
        values[key] = _coerce(key, raw, types[key])
    values["extra"] = extra
    try:
        return ServerConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
