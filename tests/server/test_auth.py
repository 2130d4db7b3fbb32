"""JWT validation, device identity and server configuration (no sockets)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from rawclient import SECRET, make_token

from topgun.errors import AuthError, ConfigError
from topgun.server.auth import DeviceRegistry, JwtAuthenticator, Principal, make_authenticator
from topgun.server.config import (
    AuthMode,
    ServerConfig,
    TransportKind,
    is_loopback_host,
    load_config,
)

# ----------------------------------------------------------------------------------------- JWT


def test_hs256_valid_token_gives_principal_with_roles() -> None:
    auth = JwtAuthenticator(secret=SECRET)
    p = auth.authenticate(make_token(sub="alice", roles=["admin", 7, "ops"]))
    assert p == Principal("alice", ("admin", "ops"))
    assert p.claims["sub"] == "alice" and isinstance(p.claims["exp"], int)


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (make_token(exp_in=-120), "expired"),
        (make_token(sub=None), "sub"),
        (make_token(exp_in=None), "exp"),
        (make_token("another-secret-" + "x" * 40), "Signature"),
        ("", "missing"),
    ],
)
def test_hs256_rejections(token: str, why: str) -> None:
    with pytest.raises(AuthError, match=why):
        JwtAuthenticator(secret=SECRET).authenticate(token)


def test_non_string_sub_is_rejected() -> None:
    token = jwt.encode({"sub": 42, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        JwtAuthenticator(secret=SECRET).authenticate(token)


def test_leeway_is_configurable() -> None:
    token = make_token(exp_in=-30)
    assert JwtAuthenticator(secret=SECRET, leeway=60).authenticate(token).user_id == "alice"
    with pytest.raises(AuthError):
        JwtAuthenticator(secret=SECRET, leeway=0).authenticate(token)


def test_issuer_and_audience_checked_only_when_configured() -> None:
    token = make_token(iss="topgun-test", aud="grid")
    assert JwtAuthenticator(secret=SECRET).authenticate(token).user_id == "alice"
    strict = JwtAuthenticator(secret=SECRET, issuer="topgun-test", audience="grid")
    assert strict.authenticate(token).user_id == "alice"
    with pytest.raises(AuthError):
        JwtAuthenticator(secret=SECRET, issuer="someone-else").authenticate(token)
    with pytest.raises(AuthError):
        JwtAuthenticator(secret=SECRET, audience="other").authenticate(token)
    with pytest.raises(AuthError):
        strict.authenticate(make_token())  # iss/aud missing while required


def _rsa_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv, pub


def test_rs256_accepts_own_key_and_refuses_hs256_and_other_keys() -> None:
    priv, pub = _rsa_pair()
    other_priv, _ = _rsa_pair()
    auth = JwtAuthenticator(public_key=pub)
    assert auth.mode is AuthMode.RS256
    assert auth.authenticate(make_token(priv.decode(), algorithm="RS256", sub="rs")).user_id == "rs"
    with pytest.raises(AuthError):
        auth.authenticate(make_token(other_priv.decode(), algorithm="RS256"))
    with pytest.raises(AuthError):
        auth.authenticate(make_token(SECRET))  # HS256 token to an RS256 server


def test_make_authenticator_reads_pem_file(tmp_path: Path) -> None:
    _, pub = _rsa_pair()
    (tmp_path / "k.pem").write_bytes(pub)
    auth = make_authenticator(ServerConfig(jwt_public_key=str(tmp_path / "k.pem")))
    assert auth is not None and auth.mode is AuthMode.RS256
    assert make_authenticator(ServerConfig()) is None
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError):
        make_authenticator(ServerConfig(jwt_public_key=str(tmp_path / "bad.pem")))


# ----------------------------------------------------------------------------------- devices


def test_device_registry_present_or_mint() -> None:
    reg = DeviceRegistry()
    first = reg.bind(None)
    assert first.token is not None
    device_id, secret = first.token.split(".")
    assert device_id == first.device_id and len(secret) == 64
    again = reg.bind(first.token)
    assert again.device_id == first.device_id and again.token is None
    assert reg.active_connections(device_id) == 2
    reg.release(device_id)
    reg.release(device_id)
    assert reg.active_connections(device_id) == 0
    for bad in ("", "nodot", f"{device_id}.", f"{device_id}.{'0' * 64}", f"unknown.{secret}", "a.b.c"):
        minted = reg.bind(bad)
        assert minted.device_id != device_id and minted.token is not None
    # only hashes are stored
    assert all(secret.encode() not in h and len(h) == 32 for h in reg._hashes.values())


# ----------------------------------------------------------------------------------- config


def test_defaults_match_the_spec() -> None:
    cfg = ServerConfig()
    assert (cfg.host, cfg.port, cfg.storage) == ("127.0.0.1", 8080, "sqlite:///topgun.db")
    assert cfg.auth_timeout == 10.0 and cfg.idle_timeout == 60.0 and cfg.jwt_leeway == 60.0
    assert cfg.max_message_size == 2 * 1024 * 1024
    assert cfg.auth_mode is AuthMode.NONE and cfg.storage_kind == "sqlite"


def test_env_file_and_override_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "topgun.toml"
    toml.write_text('[server]\nport = 9000\nhost = "127.0.0.2"\nidle_timeout = 5\ncustom_key = "kept"\n')
    env = {"TOPGUN_PORT": "9100", "TOPGUN_JWT_SECRET": "s3cret", "TOPGUN_TRANSPORT": "websockets"}
    cfg = load_config(config_file=str(toml), env=env, overrides={"port": 9200, "host": None})
    assert cfg.port == 9200  # override > env > file
    assert cfg.host == "127.0.0.2"  # file, since the override is None
    assert cfg.idle_timeout == 5.0 and isinstance(cfg.idle_timeout, float)
    assert cfg.jwt_secret == "s3cret" and cfg.auth_mode is AuthMode.HS256
    assert cfg.transport is TransportKind.WEBSOCKETS
    assert cfg.extra == {"custom_key": "kept"}
    env_only = load_config(env={"TOPGUN_CONFIG": str(toml), "TOPGUN_NO_AUTH": "yes", "TOPGUN_PORT": "0"})
    assert env_only.no_auth is True and env_only.port == 0 and env_only.host == "127.0.0.2"


def test_json_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"port": 1234, "storage": "memory://"}))
    cfg = load_config(config_file=str(path), env={})
    assert cfg.port == 1234 and cfg.storage_kind == "memory"


@pytest.mark.parametrize(
    "env",
    [
        {"TOPGUN_PORT": "eighty"},
        {"TOPGUN_PORT": "70000"},
        {"TOPGUN_NO_AUTH": "maybe"},
        {"TOPGUN_TRANSPORT": "carrier-pigeon"},
        {"TOPGUN_MAX_MESSAGE_SIZE": "0"},
        {"TOPGUN_IDLE_TIMEOUT": "-1"},
        {"TOPGUN_JWT_PUBLIC_KEY": "/nonexistent/key.pem"},
        {"TOPGUN_JWT_SECRET": "s", "TOPGUN_NO_AUTH": "1"},
        {"TOPGUN_STORAGE": "nonsense"},
        {"TOPGUN_CONFIG": "/nonexistent/topgun.toml"},
    ],
)
def test_invalid_settings_raise_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(env=env)


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError):
        load_config(env={}, overrides={"prot": 1})
    with pytest.raises(ConfigError):
        ServerConfig().replace(prot=1)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("", False), ("10.1.2.3", False), ("192.168.0.1", False)],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_secure_default() -> None:
    ServerConfig(host="127.0.0.1").check_secure_default()
    with pytest.raises(ConfigError, match="--no-auth"):
        ServerConfig(host="0.0.0.0").check_secure_default()
    ServerConfig(host="0.0.0.0", no_auth=True).check_secure_default()
    ServerConfig(host="0.0.0.0", jwt_secret="s").check_secure_default()


def test_device_identities_survive_export_and_load() -> None:
    minted: list[tuple[str, str]] = []
    reg = DeviceRegistry(on_mint=lambda device_id, digest: minted.append((device_id, digest)))
    binding = reg.bind(None)
    assert binding.token is not None
    assert minted == [(binding.device_id, reg.export()[binding.device_id])]
    restarted = DeviceRegistry()
    assert restarted.load({**reg.export(), "bad": "zz", "a.b": "00" * 32}) == 1
    again = restarted.bind(binding.token)
    assert again.device_id == binding.device_id and again.token is None
