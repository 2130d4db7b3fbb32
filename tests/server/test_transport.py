"""Transport adapters and the HTTP side of the port, on both transports: paths, /health,
/ready, /metrics, fragment reassembly, shutdown drain order."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from rawclient import TRANSPORTS, RawClient, http_get, pack

from topgun.protocol.messages import MessageType, TopicMessage
from topgun.server.app import TopGunServer
from topgun.server.interfaces import RequestContext

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def serving(transport: str, **cfg: Any) -> AsyncIterator[TopGunServer]:
    cfg.setdefault("storage", "memory://")
    server = TopGunServer(port=0, transport=transport, **cfg)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.parametrize("path", ["/ws", "/", "/ws?token=abc&x=1", "/?v=2"])
async def test_protocol_on_ws_and_root(transport: str, path: str) -> None:
    async with serving(transport) as server:
        c = await RawClient.open(f"ws://127.0.0.1:{server.port}{path}")
        assert (await c.ping(42))["timestamp"] == 42
        await c.close()


async def test_health_ready_metrics_and_404(transport: str) -> None:
    async with serving(transport) as server:
        status, headers, body = await http_get(server.port, "/health")
        assert status == 200 and body == b"ok\n"
        status, _, body = await http_get(server.port, "/ready")
        assert status == 200 and body == b"ready\n"
        status, _, _ = await http_get(server.port, "/nope")
        assert status == 404
        c = await RawClient.open(f"ws://127.0.0.1:{server.port}/ws")
        for i in range(3):
            await c.ping(i)
        server.metrics.ops.inc("PUT", amount=5)
        server.metrics.rejected_ops.inc("403")
        server.metrics.storage_commit_seconds.observe(0.003)
        server.metrics.add_map_size_collector(lambda: [("todos", 12), ('we"ird', 1)])
        status, headers, body = await http_get(server.port, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        text = body.decode()
        assert "# TYPE topgun_connections gauge" in text
        assert re.search(r"^topgun_connections 1$", text, re.M)
        assert re.search(r'^topgun_messages_received_total\{type="PING"\} 3$', text, re.M)
        assert re.search(r'^topgun_ops_total\{type="PUT"\} 5$', text, re.M)
        assert re.search(r'^topgun_ops_rejected_total\{code="403"\} 1$', text, re.M)
        assert re.search(r'^topgun_storage_commit_seconds_bucket\{le="0.005"\} 1$', text, re.M)
        assert re.search(r'^topgun_storage_commit_seconds_bucket\{le="0.001"\} 0$', text, re.M)
        assert re.search(r'^topgun_storage_commit_seconds_bucket\{le="\+Inf"\} 1$', text, re.M)
        assert re.search(r"^topgun_storage_commit_seconds_count 1$", text, re.M)
        assert re.search(r'^topgun_map_size\{map="todos"\} 12$', text, re.M)
        assert 'topgun_map_size{map="we\\"ird"} 1' in text
        await c.close()
        assert (await http_get(server.port, "/health"))[0] == 200


async def test_ready_turns_503_when_storage_is_unreachable(transport: str, tmp_path: Path) -> None:
    async with serving(
        transport, storage=f"sqlite:///{tmp_path}/ready.db", ready_probe_interval=0.05
    ) as server:
        assert (await http_get(server.port, "/ready"))[0] == 200
        await server.storage.close()  # the database goes away underneath the server
        for _ in range(100):
            if not server.ready:
                break
            await asyncio.sleep(0.02)
        status, _, body = await http_get(server.port, "/ready")
        assert status == 503 and b"unreachable" in body
        assert (await http_get(server.port, "/health"))[0] == 200  # liveness is unaffected


async def test_fragmented_binary_message_is_reassembled(transport: str) -> None:
    async with serving(transport) as server:
        c = await RawClient.open(f"ws://127.0.0.1:{server.port}/ws")
        frame = pack({"type": "PING", "timestamp": 77, "pad": "y" * 5000})
        parts = [frame[i : i + 1000] for i in range(0, len(frame), 1000)]
        await c.ws.send(parts)
        assert (await c.recv())["timestamp"] == 77
        await c.close()


async def test_stop_drains_runs_shutdown_hook_then_closes_1001(transport: str) -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def slow(ctx: RequestContext, msg: Any) -> None:
        order.append("handler-start")
        await release.wait()
        order.append("handler-done")
        ctx.send(TopicMessage(topic="done", data=1, timestamp=0))

    server = TopGunServer(port=0, transport=transport, storage="memory://")
    server.processors.register(MessageType.TOPIC_SUB, slow)
    server.on_shutdown(lambda s: order.append(f"shutdown-hook sessions={len(s.sessions)}"))
    await server.start()
    c = await RawClient.open(f"ws://127.0.0.1:{server.port}/ws")
    await c.send({"type": "TOPIC_SUB", "payload": {"topic": "x"}})
    while "handler-start" not in order:
        await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(server.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()  # in-flight work holds the shutdown
    # new connections are refused once draining started
    with pytest.raises((OSError, asyncio.TimeoutError)):
        await asyncio.wait_for(RawClient.open(f"ws://127.0.0.1:{server.port}/ws"), 1)
    release.set()
    done = await c.recv_type("TOPIC_MESSAGE")
    assert done["payload"]["topic"] == "done"
    code, reason = await c.wait_closed()
    assert code == 1001 and reason == "server shutting down"
    await asyncio.wait_for(stopping, 10)
    assert order == ["handler-start", "handler-done", "shutdown-hook sessions=1"]
    await server.stop()  # idempotent


async def test_start_failure_releases_storage(transport: str) -> None:
    async with serving(transport) as first:
        second = TopGunServer(port=first.port, transport=transport, storage="memory://")
        with pytest.raises(OSError):
            await second.start()
        assert not await second.storage.ping()


async def test_context_manager_and_properties(transport: str) -> None:
    async with TopGunServer(port=0, transport=transport, storage="memory://", jwt_secret="k" * 40) as s:
        assert s.port > 0 and s.transport_name == transport
        assert s.start_line == f"topgun listening on ws://127.0.0.1:{s.port}/ws storage=memory auth=hs256"
    assert not s.ready
