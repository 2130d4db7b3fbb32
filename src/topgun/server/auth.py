"""Authentication: JWT validation (HS256 / RS256) and device identity (present-or-mint).

Only :class:`JwtAuthenticator` touches PyJWT; sessions see a :class:`Principal`
or an :class:`~topgun.errors.AuthError`. Failure details go to the
``topgun.auth`` log; clients only ever learn "Authentication failed".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt

from topgun.errors import AuthError, ConfigError
from topgun.server.config import AuthMode, ServerConfig

__all__ = [
    "Authenticator",
    "DeviceBinding",
    "DeviceRegistry",
    "JwtAuthenticator",
    "Principal",
    "make_authenticator",
]

log = logging.getLogger("topgun.auth")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the JWT ``sub``, its ``roles`` claim and all claims."""

    user_id: str
    roles: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class Authenticator(Protocol):
    """Turns the ``AUTH.token`` of a client into a :class:`Principal` or raises :class:`AuthError`."""

    mode: AuthMode

    def authenticate(self, token: str) -> Principal:
        """Validate ``token``; raise :class:`AuthError` (with the reason) when it is not acceptable."""
        ...


class JwtAuthenticator:
    """JWT validation: HS256 with a shared secret, or RS256 with a PEM public key.

    ``exp`` and ``sub`` are required (``sub`` a non-empty string); ``iss``/``aud``
    are checked only when configured; ``leeway`` seconds of clock skew are allowed.
    Each key is only ever used with its own algorithm, so an RS256 public key can
    never be abused as an HS256 secret.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_key: str | bytes | None = None,
        leeway: float = 60.0,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        if (secret is None) == (public_key is None):
            raise ConfigError("JwtAuthenticator needs exactly one of secret or public_key")
        self._key: Any
        if secret is not None:
            self.mode = AuthMode.HS256
            self._key = secret
            self._algorithms = ["HS256"]
        else:
            self.mode = AuthMode.RS256
            pem = public_key.encode() if isinstance(public_key, str) else public_key
            try:
                from cryptography.hazmat.primitives.serialization import load_pem_public_key

                self._key = load_pem_public_key(pem)  # type: ignore[arg-type]
            except Exception as exc:
                raise ConfigError(f"cannot load the RS256 public key: {exc}") from None
            self._algorithms = ["RS256"]
        self.leeway = float(leeway)
        self.issuer = issuer
        self.audience = audience

    def authenticate(self, token: str) -> Principal:
        """Validate ``token`` and return its principal."""
        if not isinstance(token, str) or not token:
            raise AuthError("missing token")
        options: dict[str, Any] = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                leeway=self.leeway,
                issuer=self.issuer,
                audience=self.audience,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError("token 'sub' must be a non-empty string")
        raw_roles = claims.get("roles", ())
        if isinstance(raw_roles, str):
            roles: tuple[str, ...] = (raw_roles,)
        elif isinstance(raw_roles, (list, tuple)):
            roles = tuple(r for r in raw_roles if isinstance(r, str))
        else:
            roles = ()
        return Principal(user_id=sub, roles=roles, claims=claims)


def make_authenticator(config: ServerConfig) -> JwtAuthenticator | None:
    """The authenticator ``config`` asks for, or ``None`` in no-auth mode."""
    if config.auth_mode is AuthMode.HS256:
        return JwtAuthenticator(
            secret=config.jwt_secret,
            leeway=config.jwt_leeway,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
        )
    if config.auth_mode is AuthMode.RS256:
        assert config.jwt_public_key is not None
        try:
            pem = Path(config.jwt_public_key).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read jwt_public_key {config.jwt_public_key}: {exc}") from None
        return JwtAuthenticator(
            public_key=pem,
            leeway=config.jwt_leeway,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
        )
    return None


@dataclass(frozen=True)
class DeviceBinding:
    """Result of present-or-mint: the device id and, when one was issued, the new token."""

    device_id: str
    token: str | None = None


class DeviceRegistry:
    """Device identities, present-or-mint (PROTOCOL §4.1).

    A token is ``<deviceId>.<hex secret>``. Only a SHA-256 of the secret is kept,
    so a memory dump does not leak usable credentials. A valid presented token
    re-binds its device id and nothing new is issued; anything else mints a new
    id and token. Binding never fails.
    """

    #: Suggested key prefix when persisting identities in the storage meta table.
    META_PREFIX = "device:"

    def __init__(self, on_mint: Callable[[str, str], None] | None = None) -> None:
        self._hashes: dict[str, bytes] = {}
        self._active: dict[str, int] = {}
        #: Called with ``(device_id, hex digest)`` for every minted identity (e.g. to persist it).
        self.on_mint = on_mint

    def load(self, digests: Mapping[str, str]) -> int:
        """Restore identities from ``{device_id: hex SHA-256 of the secret}``; returns how many."""
        n = 0
        for device_id, digest in digests.items():
            try:
                raw = bytes.fromhex(digest)
            except ValueError:
                continue
            if len(raw) == 32 and "." not in device_id:
                self._hashes[device_id] = raw
                n += 1
        return n

    def export(self) -> dict[str, str]:
        """``{device_id: hex digest}`` of every identity (what :meth:`load` accepts)."""
        return {device_id: h.hex() for device_id, h in self._hashes.items()}

    def __len__(self) -> int:
        return len(self._hashes)

    @staticmethod
    def _digest(secret: str) -> bytes:
        return hashlib.sha256(secret.encode("utf-8")).digest()

    def verify(self, token: str | None) -> str | None:
        """The device id ``token`` proves, or ``None`` when it is missing, unknown or wrong."""
        if not isinstance(token, str) or token.count(".") != 1:
            return None
        device_id, secret = token.split(".", 1)
        expected = self._hashes.get(device_id)
        if expected is None or not secret:
            return None
        return device_id if hmac.compare_digest(expected, self._digest(secret)) else None

    def mint(self) -> DeviceBinding:
        """Issue a fresh device id and token."""
        device_id = str(uuid.uuid4())
        secret = secrets.token_hex(32)
        digest = self._digest(secret)
        self._hashes[device_id] = digest
        if self.on_mint is not None:
            try:
                self.on_mint(device_id, digest.hex())
            except Exception:
                log.exception("device identity hook failed")
        return DeviceBinding(device_id, f"{device_id}.{secret}")

    def bind(self, token: str | None) -> DeviceBinding:
        """Present-or-mint: re-bind a valid ``token`` (no new token) or mint a new identity."""
        device_id = self.verify(token)
        binding = DeviceBinding(device_id) if device_id is not None else self.mint()
        self._active[binding.device_id] = self._active.get(binding.device_id, 0) + 1
        if device_id is None and token:
            log.debug("device token not recognised; minted device %s", binding.device_id)
        return binding

    def release(self, device_id: str) -> None:
        """A connection bound to ``device_id`` ended (its identity stays valid for later sessions)."""
        n = self._active.get(device_id, 0) - 1
        if n > 0:
            self._active[device_id] = n
        else:
            self._active.pop(device_id, None)

    def active_connections(self, device_id: str) -> int:
        """How many open connections are currently bound to ``device_id``."""
        return self._active.get(device_id, 0)
