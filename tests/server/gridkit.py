"""Helpers for the write/sync/durability tests: a server on an ephemeral port, wire builders."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from rawclient import RawClient

import support.servers
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.server.app import TopGunServer


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def serving(storage: str = "memory://", **cfg: Any) -> AbstractAsyncContextManager[TopGunServer]:
    """A running server on picows without periodic GC (no-auth unless a JWT secret is given)."""
    cfg.setdefault("transport", "picows")
    cfg.setdefault("gc_interval", 0.0)
    return support.servers.serving(storage=storage, **cfg)


def ws_url(server: TopGunServer) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def connect(server: TopGunServer, token: str | None = None) -> RawClient:
    """An authenticated raw client (no-auth: AUTH answered; JWT: AUTH_REQUIRED first)."""
    c = await RawClient.open(ws_url(server))
    if server.auth_mode != "none":
        assert (await c.recv())["type"] == "AUTH_REQUIRED"
    await c.send({"type": "AUTH", "token": token or "no-auth"})
    ack = await c.recv()
    assert ack["type"] == "AUTH_ACK", ack
    return c


def ts(millis: int | float, counter: int = 0, node: str = "client-a") -> dict[str, Any]:
    """A wire timestamp; millis is sent as float64 like the TS client does."""
    return {"millis": float(millis), "counter": counter, "nodeId": node}


def put(
    op_id: str,
    map_name: str,
    key: str,
    value: Any,
    millis: int,
    counter: int = 0,
    node: str = "client-a",
    **extra: Any,
) -> dict[str, Any]:
    t = ts(millis, counter, node)
    op = {
        "id": op_id,
        "mapName": map_name,
        "key": key,
        "opType": "PUT",
        "record": {"value": value, "timestamp": t},
        "timestamp": t,
        "synced": False,
    }
    op.update(extra)
    return op


def remove(
    op_id: str, map_name: str, key: str, millis: int, counter: int = 0, node: str = "client-a"
) -> dict[str, Any]:
    t = ts(millis, counter, node)
    return {
        "id": op_id,
        "mapName": map_name,
        "key": key,
        "opType": "REMOVE",
        "record": {"value": None, "timestamp": t},
        "timestamp": t,
        "synced": False,
    }


def or_add(
    op_id: str, map_name: str, key: str, value: Any, millis: int, counter: int = 0, node: str = "client-a"
) -> dict[str, Any]:
    t = ts(millis, counter, node)
    tag = f"{int(millis)}:{counter}:{node}"
    return {
        "id": op_id,
        "mapName": map_name,
        "key": key,
        "opType": "OR_ADD",
        "orRecord": {"value": value, "timestamp": t, "tag": tag},
        "timestamp": t,
        "synced": False,
    }


def or_remove(op_id: str, map_name: str, key: str, tag: str, millis: int) -> dict[str, Any]:
    return {
        "id": op_id,
        "mapName": map_name,
        "key": key,
        "opType": "OR_REMOVE",
        "orTag": tag,
        "timestamp": ts(millis, 0, "client-a"),
        "synced": False,
    }


def batch(*ops: dict[str, Any], **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"ops": list(ops)}
    payload.update(extra)
    return {"type": "OP_BATCH", "payload": payload}


def wire_ts(d: dict[str, Any]) -> Timestamp:
    return Timestamp(int(d["millis"]), int(d["counter"]), d["nodeId"])


def wire_lww(d: dict[str, Any]) -> LWWRecord:
    ttl = d.get("ttlMs")
    return LWWRecord(d["value"], wire_ts(d["timestamp"]), None if ttl is None else int(ttl))


def wire_or(d: dict[str, Any]) -> ORMapRecord:
    ttl = d.get("ttlMs")
    return ORMapRecord(d["value"], wire_ts(d["timestamp"]), d["tag"], None if ttl is None else int(ttl))


def or_to_wire(r: ORMapRecord) -> dict[str, Any]:
    t = r.timestamp
    return {
        "value": r.value,
        "timestamp": {"millis": t.millis, "counter": t.counter, "nodeId": t.node_id},
        "tag": r.tag,
    }


async def recv_until(c: RawClient, type_name: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every frame up to and including the first of ``type_name``."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await c.recv(max(0.01, deadline - time.monotonic()))
        out.append(msg)
        if msg["type"] == type_name:
            return out


def expected_level(storage_kind: str) -> str:
    """PERSISTED on durable storage, APPLIED on memory:// (§7 decision 5)."""
    return "APPLIED" if storage_kind == "memory" else "PERSISTED"
