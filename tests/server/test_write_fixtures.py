"""The protocol fixtures' own bytes (as a TS client or the reference produced them) through the
write and sync handlers: float64 millis, 16-bit map headers, fixture-only fields."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gridkit import connect, serving

from topgun.core.records import LWWRecord, Timestamp

pytestmark = pytest.mark.timeout(60)

FIXTURES = Path(
    os.environ.get(
        "TOPGUN_PROTOCOL_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "protocol" / "fixtures"
    )
)


def fixture(name: str) -> bytes:
    path = FIXTURES / f"{name}.msgpack"
    if not path.is_file():
        pytest.skip(f"protocol fixtures not found at {FIXTURES}")
    return path.read_bytes()


async def test_fixture_writes_and_sync_requests(storage_kind: str, storage_url: str) -> None:
    async with serving(storage_url) as server:
        c = await connect(server)
        await c.send_raw(fixture("OP_BATCH"))  # writeConcern MEMORY: served as APPLIED
        ack = await c.recv()
        assert ack["type"] == "OP_ACK"
        assert ack["payload"]["lastId"] == "op-2" and ack["payload"]["achievedLevel"] == "APPLIED"
        await c.send_raw(fixture("CLIENT_OP"))  # no level: the server default
        ack = await c.recv()
        assert ack["payload"]["lastId"] == "op-1"
        assert ack["payload"]["achievedLevel"] == ("APPLIED" if storage_kind == "memory" else "PERSISTED")
        lww = server.core.grid.lww("users")  # type: ignore[union-attr]
        assert lww is not None
        # CLIENT_OP's record (same timestamp as OP_BATCH's first op) lost the tie: the first stays
        assert lww.get_record("user-1") == LWWRecord("Alice", Timestamp(1700000000000, 1, "node-1"))
        assert lww.get("user-2") == "Bob"
        await c.send_raw(fixture("SYNC_INIT"))  # carries rootHash/bucketHashes, ignored
        root = await c.recv()
        assert root["type"] == "SYNC_RESP_ROOT" and root["payload"]["rootHash"] == lww.root_hash
        await c.send_raw(fixture("MERKLE_REQ_BUCKET"))  # path "0/1/2" is not a real path
        err = await c.recv()
        assert err["type"] == "ERROR" and err["payload"]["code"] == 400
        await c.send_raw(fixture("ORMAP_SYNC_INIT"))
        root = await c.recv()
        assert root["type"] == "ORMAP_SYNC_RESP_ROOT" and root["payload"]["rootHash"] == 0
        await c.send_raw(fixture("OP_ACK"))  # a server-to-client kind: ignored
        await c.expect_silence(0.3)
